package cuda

import (
	"fmt"
	"sync"
	"unsafe"
)

// blasAPI is the part of libcublas qtune calls (cublasStatus_t 0 = success).
type blasAPI struct {
	path         string
	create       func(h *uintptr) int32
	destroy      func(h uintptr) int32
	setStream    func(h, s uintptr) int32
	getVersion   func(h uintptr, v *int32) int32
	setWorkspace func(h uintptr, p uint64, n uint64) int32
	gemmEx       func(h uintptr, ta, tb int32, m, n, k int32, alpha unsafe.Pointer, a uint64, at int32, lda int32,
		b uint64, bt int32, ldb int32, beta unsafe.Pointer, c uint64, ct int32, ldc int32, compute int32, algo int32) int32
}

var (
	blasOnce sync.Once
	blasLib  *blasAPI
	blasErr  error
)

func loadBLAS() (*blasAPI, error) {
	blasOnce.Do(func() {
		// cuBLAS needs its Lt half; loading it first, globally, lets the
		// loader find it even where cuBLAS's RUNPATH does not lead there.
		open(BLASLt, OSEnv())
		h, path, err := open(BLAS, OSEnv())
		if err != nil {
			blasErr = err
			return
		}
		b := &blasAPI{path: path}
		if err := bind(h, BLAS.Name, map[string]any{
			"cublasCreate_v2": &b.create, "cublasDestroy_v2": &b.destroy, "cublasSetStream_v2": &b.setStream,
			"cublasGetVersion_v2": &b.getVersion, "cublasGemmEx": &b.gemmEx, "cublasSetWorkspace_v2": &b.setWorkspace,
		}); err != nil {
			blasErr = err
			return
		}
		blasLib = b
	})
	return blasLib, blasErr
}

var blasStatus = map[int32]string{
	1: "CUBLAS_STATUS_NOT_INITIALIZED", 3: "CUBLAS_STATUS_ALLOC_FAILED", 7: "CUBLAS_STATUS_INVALID_VALUE",
	8: "CUBLAS_STATUS_ARCH_MISMATCH", 11: "CUBLAS_STATUS_MAPPING_ERROR", 13: "CUBLAS_STATUS_EXECUTION_FAILED",
	14: "CUBLAS_STATUS_INTERNAL_ERROR", 15: "CUBLAS_STATUS_NOT_SUPPORTED", 16: "CUBLAS_STATUS_LICENSE_ERROR",
}

// blasErrOf maps a cublasStatus_t to an *Error.
func blasErrOf(call string, rc int32) error {
	if rc == 0 {
		return nil
	}
	name, ok := blasStatus[rc]
	if !ok {
		name = fmt.Sprintf("CUBLAS_STATUS_%d", rc)
	}
	return &Error{Call: call, Code: rc, Name: name}
}

type blasHandle struct {
	api     *blasAPI
	h       uintptr
	version int
}

func (b *blasHandle) destroy() error { return blasErrOf("cublasDestroy", b.api.destroy(b.h)) }

// WorkspaceBytes is the cuBLAS workspace qtune gives it from the device
// budget: NVIDIA's recommendation for Hopper (32 MiB), less under a small
// budget. cuBLAS then allocates none of its own.
func WorkspaceBytes(maxVRAM int64) int64 {
	if maxVRAM == 0 || maxVRAM >= 1<<30 {
		return 32 << 20
	}
	return 4 << 20
}

// handle makes the device's cuBLAS handle on first use (on its thread).
func (d *Device) handle() (*blasHandle, error) {
	if d.blas != nil {
		return d.blas, nil
	}
	api, err := loadBLAS()
	if err != nil {
		return nil, err
	}
	b := &blasHandle{api: api}
	if err := blasErrOf("cublasCreate", api.create(&b.h)); err != nil {
		return nil, err
	}
	var v int32
	api.getVersion(b.h, &v)
	b.version = int(v)
	if err := blasErrOf("cublasSetStream", api.setStream(b.h, d.stream)); err != nil {
		api.destroy(b.h)
		return nil, err
	}
	d.blas = b
	return b, nil
}

// BLASVersion loads cuBLAS on the device and returns its version
// (CUBLAS_VERSION: 130100 for 13.1.0) and the file it came from.
func (d *Device) BLASVersion() (int, string, error) {
	var v int
	err := d.do(func() error {
		b, err := d.handle()
		if err == nil {
			v = b.version
		}
		return err
	})
	if err != nil {
		return 0, "", err
	}
	return v, blasLib.path, nil
}

// setupWorkspace gives cuBLAS its workspace from the budget, once.
func (d *Device) setupWorkspace() error {
	d.mu.Lock()
	have := d.workspace != nil
	d.mu.Unlock()
	if have {
		return nil
	}
	if err := d.do(func() error { _, err := d.handle(); return err }); err != nil {
		return err
	}
	ws, err := d.Alloc(WorkspaceBytes(d.max))
	if err != nil {
		return fmt.Errorf("cuda: the cuBLAS workspace: %w", err)
	}
	err = d.do(func() error {
		return blasErrOf("cublasSetWorkspace", d.blas.api.setWorkspace(d.blas.h, ws.ptr, uint64(ws.Bytes)))
	})
	if err != nil {
		ws.Free()
		return err
	}
	d.mu.Lock()
	d.workspace = ws
	d.mu.Unlock()
	return nil
}

// Precision is the element type of a GEMM's A and B operands; C and the
// accumulation are float32 either way.
type Precision int

const (
	F32  Precision = iota // FP32 in, FP32 accumulate (no TF32)
	BF16                  // bfloat16 in (tensor cores), FP32 accumulate
	F16                   // float16 in (tensor cores), FP32 accumulate
)

func (p Precision) String() string { return [...]string{"f32", "bf16", "f16"}[p] }

func (p Precision) cudaType() int32 { return [...]int32{0, 14, 2}[p] } // CUDA_R_32F, CUDA_R_16BF, CUDA_R_16F
func (p Precision) size() int64     { return [...]int64{4, 2, 2}[p] }

const (
	opN           = 0
	opT           = 1
	computeF32    = 68 // CUBLAS_COMPUTE_32F
	gemmDefault   = -1 // CUBLAS_GEMM_DEFAULT
	cudaR32F      = 0
	maxBLASExtent = 1<<31 - 1
)

// gemmCM is cuBLAS's column-major C (m×n) = alpha·op(A)·op(B) + beta·C.
func (d *Device) gemmCM(ta, tb int32, m, n, k int, a *Buffer, lda int, b *Buffer, ldb int, c *Buffer, ldc int, beta float32, p Precision) error {
	if err := d.setupWorkspace(); err != nil {
		return err
	}
	return d.do(func() error {
		h := d.blas
		ab := (*[2]float32)(unsafe.Pointer(&d.arena[1024]))
		ab[0], ab[1] = 1, beta
		t := p.cudaType()
		return blasErrOf("cublasGemmEx", h.api.gemmEx(h.h, ta, tb, int32(m), int32(n), int32(k),
			unsafe.Pointer(&ab[0]), a.ptr, t, int32(lda), b.ptr, t, int32(ldb),
			unsafe.Pointer(&ab[1]), c.ptr, cudaR32F, int32(ldc), computeF32, gemmDefault))
	})
}

func checkGemm(op string, c, a, b *Buffer, M, N, K int, la, lb int64, p Precision) error {
	if M <= 0 || N <= 0 || K <= 0 || M > maxBLASExtent || N > maxBLASExtent || K > maxBLASExtent {
		return fmt.Errorf("cuda: %s: M=%d N=%d K=%d", op, M, N, K)
	}
	if c.Bytes < 4*int64(M)*int64(N) || a.Bytes < p.size()*la || b.Bytes < p.size()*lb {
		return fmt.Errorf("cuda: %s: buffers of %d, %d, %d bytes for M=%d N=%d K=%d (%s)", op, c.Bytes, a.Bytes, b.Bytes, M, N, K, p)
	}
	return nil
}

// GemmNT computes C (M×N) = A (M×K)·Bᵀ for B (N×K), row-major, or C +=
// when accumulate: kernels.GemmNT on the device (the forward Y = X·Wᵀ).
func (d *Device) GemmNT(c, a, b *Buffer, M, N, K int, accumulate bool, p Precision) error {
	if err := checkGemm("GemmNT", c, a, b, M, N, K, int64(M)*int64(K), int64(N)*int64(K), p); err != nil {
		return err
	}
	beta := float32(0)
	if accumulate {
		beta = 1
	}
	// Row-major C is column-major Cᵀ = B·Aᵀ.
	return d.gemmCM(opT, opN, N, M, K, b, K, a, K, c, N, beta, p)
}

// GemmNN computes C (M×N) += A (M×K)·B (K×N), row-major (the input
// gradient dX += dY·W).
func (d *Device) GemmNN(c, a, b *Buffer, M, N, K int, p Precision) error {
	if err := checkGemm("GemmNN", c, a, b, M, N, K, int64(M)*int64(K), int64(K)*int64(N), p); err != nil {
		return err
	}
	return d.gemmCM(opN, opN, N, M, K, b, N, a, K, c, N, 1, p)
}

// GemmTN computes C (M×N) += Aᵀ·B for A (K×M) and B (K×N), row-major (the
// weight gradient dW += dYᵀ·X).
func (d *Device) GemmTN(c, a, b *Buffer, M, N, K int, p Precision) error {
	if err := checkGemm("GemmTN", c, a, b, M, N, K, int64(K)*int64(M), int64(K)*int64(N), p); err != nil {
		return err
	}
	return d.gemmCM(opN, opT, N, M, K, b, N, a, M, c, N, 1, p)
}
