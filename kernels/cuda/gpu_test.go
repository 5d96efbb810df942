package cuda

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/qtune/qtune/kernels"
	"github.com/qtune/qtune/nn"
	"github.com/qtune/qtune/optim"
	"github.com/qtune/qtune/quant"
)

// The GPU tests: every kernel against the CPU function it mirrors, on the
// same inputs, with the bound stated at each. Without a GPU they skip
// (QTUNE_REQUIRE_GPU=1 turns the skip into a failure: the device check
// sets it).

func runCmd(name string, args ...string) ([]byte, error) {
	return exec.Command(name, args...).CombinedOutput()
}

var (
	gpuOnce sync.Once
	gpuDev  *Device
	gpuErr  error
)

// GPUForTest is gpu for the external tests (package cuda_test).
func GPUForTest(t testing.TB) *Device { return gpu(t) }

func gpu(t testing.TB) *Device {
	t.Helper()
	gpuOnce.Do(func() {
		gpuDev, gpuErr = Open(0, Options{CacheDir: os.Getenv("QTUNE_TEST_CUDA_CACHE")})
		if gpuErr == nil {
			gpuErr = gpuDev.Compile()
		}
	})
	if gpuErr != nil {
		if os.Getenv("QTUNE_REQUIRE_GPU") == "1" || !errors.Is(gpuErr, ErrNoCUDA) {
			t.Fatalf("GPU: %v", gpuErr)
		}
		t.Skipf("no GPU: %v", gpuErr)
	}
	return gpuDev
}

// TestGPUInfo logs what was found: the GPU, the libraries and their
// versions, and how long the first compile of the kernels took.
func TestGPUInfo(t *testing.T) {
	start := time.Now()
	d := gpu(t)
	t.Logf("%s; kernels ready in %s (from cache: %v)", d, time.Since(start).Round(time.Millisecond), d.FromCache())
	v, path, err := d.BLASVersion()
	must(t, err)
	nv, _ := loadNVRTC()
	t.Logf("driver %s; cuBLAS %d (%s); NVRTC %d.%d (%s)", drv.path, v, path, nv.major, nv.minor, nv.path)
	free, total, err := d.MemInfo()
	must(t, err)
	t.Logf("memory: %.1f GiB free of %.1f GiB; context and others: %.0f MiB", float64(free)/(1<<30), float64(total)/(1<<30), float64(d.ContextBytes())/(1<<20))
}

func up(t testing.TB, d *Device, x []float32) *Buffer {
	t.Helper()
	b, err := d.Alloc(int64(4 * max(len(x), 1)))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.WriteF32(0, x); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Free() })
	return b
}

func zeros(t testing.TB, d *Device, n int) *Buffer { return up(t, d, make([]float32, n)) }

func down(t testing.TB, b *Buffer, n int) []float32 {
	t.Helper()
	out := make([]float32, n)
	if err := b.ReadF32(out, 0); err != nil {
		t.Fatal(err)
	}
	return out
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func randn(r *rand.Rand, n int, s float64) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(r.NormFloat64() * s)
	}
	return x
}

// near checks |got−want| ≤ tol·max|want| element-wise.
func near(t testing.TB, what string, got, want []float32, tol float64) {
	t.Helper()
	scale := 0.0
	for _, w := range want {
		scale = math.Max(scale, math.Abs(float64(w)))
	}
	worst, at := 0.0, -1
	for i := range want {
		if d := math.Abs(float64(got[i]) - float64(want[i])); d > worst || math.IsNaN(d) {
			worst, at = d, i
		}
	}
	if worst > tol*scale || at >= 0 && math.IsNaN(worst) {
		t.Errorf("%s: element %d = %g, want %g (|diff| %.3g > %.1g·max|want| %.3g)", what, at, got[at], want[at], worst, tol, scale)
	}
}

var weightTypes = []quant.Type{quant.F32, quant.F16, quant.BF16, quant.Q4_0, quant.Q8_0, quant.Q4_K, quant.Q6_K, quant.NF4}

func quantized(t testing.TB, typ quant.Type, w []float32) []byte {
	t.Helper()
	n, err := quant.Bytes(typ, int64(len(w)))
	must(t, err)
	q := make([]byte, n)
	must(t, quant.Quantize(typ, q, w))
	return q
}

func cpuDequant(t testing.TB, typ quant.Type, q []byte, n, off, cnt int64) []float32 {
	t.Helper()
	y := make([]float32, cnt)
	must(t, quant.DequantizeRange(typ, y, q, n, off))
	return y
}

// Decoding on the device is bit-identical to quant.DequantizeRange, whole
// and for a range of rows; to bfloat16 it is that value rounded.
func TestGPUDequantizeBitIdentical(t *testing.T) {
	d := gpu(t)
	r := rand.New(rand.NewPCG(1, 2))
	const rows, cols = 96, 512 // NF4 groups of 256 blocks: 96·512/64 = 768 blocks, three groups
	for _, typ := range weightTypes {
		w := randn(r, rows*cols, 0.05)
		w[7] = 0
		q := quantized(t, typ, w)
		m, err := d.UploadMatrix(typ, rows, cols, q)
		must(t, err)
		n := int64(rows * cols)
		// whole blocks (the block-wise types a thread per piece of a
		// block); for the 32- and 64-element blocks a range of whole blocks
		// that is not of 256 elements
		ranges := [][2]int64{{0, n}, {17 * cols, 40 * cols}}
		if typ != quant.Q4_K && typ != quant.Q6_K {
			ranges = append(ranges, [2]int64{17*cols + 64, 960})
		}
		for _, rg := range ranges {
			out := zeros(t, d, int(rg[1]))
			must(t, d.Dequantize(out, m, rg[0], rg[1], F32))
			got := down(t, out, int(rg[1]))
			want := cpuDequant(t, typ, q, n, rg[0], rg[1])
			for i := range want {
				if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
					t.Fatalf("%s [%d+%d]: element %d = %g, CPU %g", typ, rg[0], rg[1], i, got[i], want[i])
				}
			}
			bf := zeros(t, d, int(rg[1]))
			must(t, d.Dequantize(bf, m, rg[0], rg[1], BF16))
			raw := make([]byte, 2*rg[1])
			must(t, bf.Read(raw, 0))
			for i := range want {
				if h := uint16(raw[2*i]) | uint16(raw[2*i+1])<<8; h != quant.F32ToBF16(want[i]) {
					t.Fatalf("%s to bf16: element %d = %#04x, want %#04x", typ, i, h, quant.F32ToBF16(want[i]))
				}
			}
		}
		m.Free()
	}
}

// refMatMul is y = x·Wᵀ in float64 from the decoded weight, with the bound
// (K+2)·2⁻²⁴·Σ|x·w| per element.
func refMatMul(x, w []float32, M, N, K int) (y, bound []float64) {
	y, bound = make([]float64, M*N), make([]float64, M*N)
	for m := 0; m < M; m++ {
		for n := 0; n < N; n++ {
			var s, a float64
			for k := 0; k < K; k++ {
				p := float64(x[m*K+k]) * float64(w[n*K+k])
				s += p
				a += math.Abs(p)
			}
			y[m*N+n], bound[m*N+n] = s, a
		}
	}
	return
}

func within(t testing.TB, what string, got []float32, want, abs []float64, rel float64) {
	t.Helper()
	for i := range want {
		if d := math.Abs(float64(got[i]) - want[i]); !(d <= rel*abs[i]+1e-30) {
			t.Fatalf("%s: element %d = %g, want %g: |diff| %.3g > %.3g·Σ|xw| = %.3g", what, i, got[i], want[i], d, rel, rel*abs[i])
		}
	}
}

// Generation's matrix-vector product and the batched decode+GEMM, against
// the exact product of the decoded weight: FP32 within any float32
// summation's bound, BF16 within the bound of rounding both operands to
// 8 bits (2·2⁻⁹ per product) plus that.
func TestGPUMatMulMatchesExact(t *testing.T) {
	d := gpu(t)
	r := rand.New(rand.NewPCG(3, 4))
	const N, K = 200, 768
	for _, typ := range weightTypes {
		w := randn(r, N*K, 0.05)
		q := quantized(t, typ, w)
		wd := cpuDequant(t, typ, q, N*K, 0, N*K)
		m, err := d.UploadMatrix(typ, N, K, q)
		must(t, err)
		f32 := float64(K+2) * math.Ldexp(1, -24)
		for _, M := range []int{1, 3, 4} {
			x := randn(r, M*K, 1)
			y := zeros(t, d, M*N)
			must(t, d.MatVec(y, up(t, d, x), M, m))
			want, abs := refMatMul(x, wd, M, N, K)
			within(t, fmt.Sprintf("%s MatVec M=%d", typ, M), down(t, y, M*N), want, abs, f32)
		}
		if typ == quant.NF4 { // rows that are not whole blocks (of 64) take the per-element kernel
			const K2 = 96
			q2 := quantized(t, typ, w[:N*K2])
			m2, err := d.UploadMatrix(typ, N, K2, q2)
			must(t, err)
			x := randn(r, 2*K2, 1)
			y := zeros(t, d, 2*N)
			must(t, d.MatVec(y, up(t, d, x), 2, m2))
			want, abs := refMatMul(x, cpuDequant(t, typ, q2, N*K2, 0, N*K2), 2, N, K2)
			within(t, "NF4 MatVec of 96-column rows", down(t, y, 2*N), want, abs, float64(K2+2)*math.Ldexp(1, -24))
		}
		const M = 37
		x := randn(r, M*K, 1)
		want, abs := refMatMul(x, wd, M, N, K)
		for _, p := range []Precision{F32, BF16} {
			ws, err := d.Alloc(MatMulWorkspace(M, m, p))
			must(t, err)
			y := zeros(t, d, M*N)
			xb := up(t, d, x)
			must(t, d.MatMul(y, xb, M, m, ws, p))
			rel := f32
			if p == BF16 {
				rel = 2*math.Ldexp(1, -9)*1.01 + f32
			}
			within(t, fmt.Sprintf("%s MatMul %s", typ, p), down(t, y, M*N), want, abs, rel)

			// dX += dY·W against the exact product, starting from dX0.
			dy := randn(r, M*N, 1)
			dx0 := randn(r, M*K, 1)
			dx := up(t, d, dx0)
			must(t, d.MatMulT(dx, up(t, d, dy), M, m, ws, p))
			wantT, absT := make([]float64, M*K), make([]float64, M*K)
			for i := 0; i < M; i++ {
				for k := 0; k < K; k++ {
					s, a := float64(dx0[i*K+k]), math.Abs(float64(dx0[i*K+k]))
					for n := 0; n < N; n++ {
						p := float64(dy[i*N+n]) * float64(wd[n*K+k])
						s += p
						a += math.Abs(p)
					}
					wantT[i*K+k], absT[i*K+k] = s, a
				}
			}
			within(t, fmt.Sprintf("%s MatMulT %s", typ, p), down(t, dx, M*K), wantT, absT, rel)
			ws.Free()
		}
		m.Free()
	}
}

// The three GEMM layouts equal kernels.Gemm* within twice the float32 bound
// (both sides are within it of the exact sum).
func TestGPUGemmLayouts(t *testing.T) {
	d := gpu(t)
	r := rand.New(rand.NewPCG(5, 6))
	M, N, K := 67, 129, 300
	a, b, c0 := randn(r, M*K, 1), randn(r, N*K, 1), randn(r, M*N, 1)
	p := kernels.NewPool(1)
	tol := 2 * float64(K+2) * math.Ldexp(1, -24) * 4 // relative to max|C|, generous for Σ|ab| ≈ √K·|C|… checked below
	check := func(name string, got, want []float32) {
		t.Helper()
		near(t, name, got, want, tol*math.Sqrt(float64(K)))
	}
	// NT, overwrite and accumulate
	for _, acc := range []bool{false, true} {
		want := append([]float32(nil), c0...)
		kernels.GemmNT(p, want, a, b, M, N, K, acc)
		cb := up(t, d, c0)
		must(t, d.GemmNT(cb, up(t, d, a), up(t, d, b), M, N, K, acc, F32))
		check(fmt.Sprintf("GemmNT acc=%v", acc), down(t, cb, M*N), want)
	}
	// NN: C (M×N) += A (M×K)·B (K×N)
	bNN := randn(r, K*N, 1)
	want := append([]float32(nil), c0...)
	kernels.GemmNN(p, want, a, bNN, M, N, K)
	cb := up(t, d, c0)
	must(t, d.GemmNN(cb, up(t, d, a), up(t, d, bNN), M, N, K, F32))
	check("GemmNN", down(t, cb, M*N), want)
	// TN: C (M×N) += Aᵀ·B, A (K×M), B (K×N)
	aTN := randn(r, K*M, 1)
	want = append([]float32(nil), c0...)
	kernels.GemmTN(p, want, aTN, bNN, M, N, K)
	cb = up(t, d, c0)
	must(t, d.GemmTN(cb, up(t, d, aTN), up(t, d, bNN), M, N, K, F32))
	check("GemmTN", down(t, cb, M*N), want)
}

func TestGPUNormRopeSwiGLU(t *testing.T) {
	d := gpu(t)
	r := rand.New(rand.NewPCG(7, 8))
	const rows, n = 33, 384
	const eps = 1e-5
	x, w, dy := randn(r, rows*n, 1.3), randn(r, n, 1), randn(r, rows*n, 1)
	want := make([]float32, rows*n)
	for i := 0; i < rows; i++ {
		kernels.RMSNorm(want[i*n:(i+1)*n], x[i*n:(i+1)*n], w, eps)
	}
	xb, wb, dyb := up(t, d, x), up(t, d, w), up(t, d, dy)
	out := zeros(t, d, rows*n)
	must(t, d.RMSNorm(out, xb, wb, rows, n, eps))
	near(t, "RMSNorm", down(t, out, rows*n), want, 2e-6)

	dx0 := randn(r, rows*n, 1)
	wantDx, wantDw := append([]float32(nil), dx0...), make([]float32, n)
	for i := 0; i < rows; i++ {
		kernels.RMSNormBackward(wantDx[i*n:(i+1)*n], wantDw, dy[i*n:(i+1)*n], x[i*n:(i+1)*n], w, eps)
	}
	dx, dw := up(t, d, dx0), zeros(t, d, n)
	must(t, d.RMSNormBackward(dx, dw, dyb, xb, wb, rows, n, eps))
	near(t, "RMSNormBackward dx", down(t, dx, rows*n), wantDx, 1e-5)
	near(t, "RMSNormBackward dw", down(t, dw, n), wantDw, 1e-5)
	must(t, d.RMSNormBackward(dx, nil, dyb, xb, wb, rows, n, eps)) // no weight gradient

	// RoPE, both pair layouts, partial rotation (half < D/2), and back.
	const T, heads, D, half = 11, 4, 64, 24
	for _, neox := range []bool{false, true} {
		v := randn(r, T*heads*D, 1)
		cs, sn := make([]float32, T*half), make([]float32, T*half)
		freq := make([]float64, half)
		for j := range freq {
			freq[j] = math.Pow(10000, -2*float64(j)/float64(2*half))
		}
		for p := 0; p < T; p++ {
			kernels.RopeTable(cs[p*half:(p+1)*half], sn[p*half:(p+1)*half], freq, float64(p))
		}
		want := append([]float32(nil), v...)
		for p := 0; p < T; p++ {
			for h := 0; h < heads; h++ {
				kernels.Rope(want[(p*heads+h)*D:(p*heads+h+1)*D], cs[p*half:(p+1)*half], sn[p*half:(p+1)*half], neox)
			}
		}
		vb, cb, sb := up(t, d, v), up(t, d, cs), up(t, d, sn)
		must(t, d.Rope(vb, cb, sb, T, heads, D, half, neox, false))
		near(t, fmt.Sprintf("Rope neox=%v", neox), down(t, vb, len(v)), want, 1e-6)
		must(t, d.Rope(vb, cb, sb, T, heads, D, half, neox, true))
		near(t, fmt.Sprintf("RopeBack neox=%v", neox), down(t, vb, len(v)), v, 2e-6)
	}

	// SwiGLU forward and backward.
	const m = 5000
	g, u, dyy := randn(r, m, 2), randn(r, m, 1), randn(r, m, 1)
	wantOut := make([]float32, m)
	kernels.SwiGLU(wantOut, g, u)
	gb, ub := up(t, d, g), up(t, d, u)
	ob := zeros(t, d, m)
	must(t, d.SwiGLU(ob, gb, ub, m))
	near(t, "SwiGLU", down(t, ob, m), wantOut, 1e-6)
	dg0, du0 := randn(r, m, 1), randn(r, m, 1)
	wantDg, wantDu := append([]float32(nil), dg0...), append([]float32(nil), du0...)
	kernels.SwiGLUBackward(wantDg, wantDu, dyy, g, u)
	dgb, dub := up(t, d, dg0), up(t, d, du0)
	must(t, d.SwiGLUBackward(dgb, dub, up(t, d, dyy), gb, ub, m))
	near(t, "SwiGLUBackward dg", down(t, dgb, m), wantDg, 1e-6)
	near(t, "SwiGLUBackward du", down(t, dub, m), wantDu, 1e-6)
}

// What Qwen's and Gemma's blocks add: GeGLU, a projection's bias, and
// RMSNorm per head in place (q/k norms: rows of D, out = x).
func TestGPUGeGLUBiasHeadNorm(t *testing.T) {
	d := gpu(t)
	r := rand.New(rand.NewPCG(17, 18))
	const m = 5000
	g, u, dy := randn(r, m, 2), randn(r, m, 1), randn(r, m, 1)
	want := make([]float32, m)
	kernels.GeGLU(want, g, u)
	gb, ub := up(t, d, g), up(t, d, u)
	ob := zeros(t, d, m)
	must(t, d.GeGLU(ob, gb, ub, m))
	near(t, "GeGLU", down(t, ob, m), want, 1e-6)
	dg0, du0 := randn(r, m, 1), randn(r, m, 1)
	wantDg, wantDu := append([]float32(nil), dg0...), append([]float32(nil), du0...)
	kernels.GeGLUBackward(wantDg, wantDu, dy, g, u)
	dgb, dub := up(t, d, dg0), up(t, d, du0)
	must(t, d.GeGLUBackward(dgb, dub, up(t, d, dy), gb, ub, m))
	near(t, "GeGLUBackward dg", down(t, dgb, m), wantDg, 1e-6)
	near(t, "GeGLUBackward du", down(t, dub, m), wantDu, 1e-6)

	const rows, n = 7, 96
	y, b := randn(r, rows*n, 1), randn(r, n, 1)
	wantY := append([]float32(nil), y...)
	for i := range wantY {
		wantY[i] += b[i%n]
	}
	yb := up(t, d, y)
	must(t, d.AddRows(yb, up(t, d, b), rows, n))
	near(t, "AddRows", down(t, yb, rows*n), wantY, 0)
	if err := d.AddRows(yb, up(t, d, b), rows+1, n); err == nil {
		t.Error("AddRows past the buffer was accepted")
	}

	const heads, D = 12, 64
	x, w := randn(r, heads*D, 1.5), randn(r, D, 1)
	wantN := make([]float32, heads*D)
	for h := 0; h < heads; h++ {
		kernels.RMSNorm(wantN[h*D:(h+1)*D], x[h*D:(h+1)*D], w, 1e-6)
	}
	xb := up(t, d, x)
	must(t, d.RMSNorm(xb, xb, up(t, d, w), heads, D, 1e-6))
	near(t, "RMSNorm per head, in place", down(t, xb, heads*D), wantN, 2e-6)
}

func TestGPUCrossEntropy(t *testing.T) {
	d := gpu(t)
	r := rand.New(rand.NewPCG(9, 10))
	const rows, V = 9, 32000
	logits := randn(r, rows*V, 3)
	targets := make([]int32, rows)
	for i := range targets {
		targets[i] = int32(r.IntN(V))
	}
	targets[4] = -1 // a row without a target
	const scale = 1.0 / 8
	wantLoss := make([]float32, rows)
	wantD := make([]float32, rows*V)
	for i := 0; i < rows; i++ {
		if targets[i] >= 0 {
			wantLoss[i] = kernels.CrossEntropy(wantD[i*V:(i+1)*V], logits[i*V:(i+1)*V], int(targets[i]), scale)
		}
	}
	tb, err := d.Alloc(4 * rows)
	must(t, err)
	defer tb.Free()
	raw := make([]byte, 4*rows)
	for i, v := range targets {
		u := uint32(v)
		raw[4*i], raw[4*i+1], raw[4*i+2], raw[4*i+3] = byte(u), byte(u>>8), byte(u>>16), byte(u>>24)
	}
	must(t, tb.Write(0, raw))
	loss, dl := zeros(t, d, rows), zeros(t, d, rows*V)
	must(t, d.CrossEntropy(dl, loss, up(t, d, logits), tb, rows, V, scale))
	near(t, "CrossEntropy loss", down(t, loss, rows), wantLoss, 1e-5)
	near(t, "CrossEntropy dlogits", down(t, dl, rows*V), wantD, 1e-5)
	must(t, d.CrossEntropy(nil, loss, up(t, d, logits), tb, rows, V, scale))
	near(t, "CrossEntropy loss only", down(t, loss, rows), wantLoss, 1e-5)
}

// The tiled attention against the CPU's, per sequence: every instance
// (head sizes 64, 128 with 32- and 16-row tiles, 256; sizes below them),
// windows, grouped heads, lengths that end inside a tile, several
// sequences a launch; then the cached form (the last Tq queries over the
// whole sequence) against the full forward's rows, and decoding's form
// with the keys split 2, 3 and 7 ways.
func TestGPUAttention(t *testing.T) {
	d := gpu(t)
	r := rand.New(rand.NewPCG(11, 12))
	for _, c := range []struct {
		B, T, H, Hkv, D, W int
		short              bool // a GPU whose blocks get 48 KiB of shared memory
	}{
		{2, 37, 4, 2, 64, 0, false}, {1, 50, 6, 6, 32, 9, false}, {1, 300, 8, 1, 128, 0, false}, {2, 70, 4, 4, 128, 0, true},
		{3, 33, 2, 1, 80, 0, false}, {1, 260, 4, 4, 256, 140, false}, {2, 5, 2, 2, 256, 2, false}, {1, 1, 2, 1, 16, 0, false},
	} {
		name := fmt.Sprintf("B=%d T=%d H=%d Hkv=%d D=%d W=%d", c.B, c.T, c.H, c.Hkv, c.D, c.W)
		if c.short {
			name += " (48 KiB of shared memory)"
			saved := d.maxSharedPerBloc
			d.maxSharedPerBloc = 48 << 10
			defer func() { d.maxSharedPerBloc = saved }()
			if k, _, _, err := d.attnKernel("attn_fwd", c.D); err != nil || k != "attn_fwd_128_16" {
				t.Fatalf("%s: attention kernel %q (%v), want attn_fwd_128_16", name, k, err)
			}
		}
		nq, nk := c.T*c.H*c.D, c.T*c.Hkv*c.D
		q, k, v := randn(r, c.B*nq, 1), randn(r, c.B*nk, 1), randn(r, c.B*nk, 1)
		out, lse := make([]float32, c.B*nq), make([]float32, c.B*c.H*c.T)
		dout := randn(r, len(out), 1)
		dq, dk, dv := randn(r, len(q), 1), randn(r, len(k), 1), randn(r, len(v), 1)
		wq, wk, wv := append([]float32(nil), dq...), append([]float32(nil), dk...), append([]float32(nil), dv...)
		for b := 0; b < c.B; b++ {
			sq, sk, sl := q[b*nq:(b+1)*nq], k[b*nk:(b+1)*nk], lse[b*c.H*c.T:(b+1)*c.H*c.T]
			kernels.AttentionSeqWindow(out[b*nq:(b+1)*nq], sl, sq, sk, v[b*nk:(b+1)*nk], c.T, c.H, c.Hkv, c.D, c.W, make([]float32, c.T))
			kernels.AttentionSeqBackwardWindow(wq[b*nq:(b+1)*nq], wk[b*nk:(b+1)*nk], wv[b*nk:(b+1)*nk], dout[b*nq:(b+1)*nq],
				sq, sk, v[b*nk:(b+1)*nk], sl, c.T, c.H, c.Hkv, c.D, c.W, make([]float32, 2*c.T))
		}
		qb, kb, vb := up(t, d, q), up(t, d, k), up(t, d, v)
		ob, lb := zeros(t, d, len(out)), zeros(t, d, len(lse))
		must(t, d.Attention(ob, lb, qb, kb, vb, c.B, c.T, c.H, c.Hkv, c.D, c.W))
		near(t, name+" out", down(t, ob, len(out)), out, 1e-5)
		near(t, name+" lse", down(t, lb, len(lse)), lse, 1e-5)

		dqb, dkb, dvb := up(t, d, dq), up(t, d, dk), up(t, d, dv)
		must(t, d.AttentionBackward(dqb, dkb, dvb, up(t, d, dout), qb, kb, vb, ob, lb, zeros(t, d, len(lse)), c.B, c.T, c.H, c.Hkv, c.D, c.W))
		near(t, name+" dq", down(t, dqb, len(q)), wq, 1e-5)
		near(t, name+" dk", down(t, dkb, len(k)), wk, 1e-5)
		near(t, name+" dv", down(t, dvb, len(v)), wv, 1e-5)

		// The cache holds sequence 0 (and 3 rows more, unused); its last
		// Tq positions are the queries.
		kc, vc := up(t, d, append(k[:nk:nk], randn(r, 3*c.Hkv*c.D, 1)...)), up(t, d, append(v[:nk:nk], randn(r, 3*c.Hkv*c.D, 1)...))
		for _, tq := range []int{1, min(3, c.T), c.T} {
			row := (c.T - tq) * c.H * c.D
			oc, lc := zeros(t, d, tq*c.H*c.D), zeros(t, d, c.H*tq)
			must(t, d.AttentionCached(oc, lc, up(t, d, q[row:nq]), kc, vc, tq, c.T, c.H, c.Hkv, c.D, c.W))
			wl := make([]float32, 0, c.H*tq)
			for h := 0; h < c.H; h++ {
				wl = append(wl, lse[h*c.T+c.T-tq:(h+1)*c.T]...)
			}
			near(t, fmt.Sprintf("%s cached %d out", name, tq), down(t, oc, tq*c.H*c.D), out[row:nq], 1e-5)
			near(t, fmt.Sprintf("%s cached %d lse", name, tq), down(t, lc, c.H*tq), wl, 1e-5)
			if tq != 1 {
				continue
			}
			// Decoding with the keys split across blocks (some splits
			// empty where there are fewer keys than splits).
			for _, S := range []int{2, 3, 7} {
				part := zeros(t, d, DecodePartFloats(c.H, c.D, S))
				must(t, d.attentionDecode(oc, lc, up(t, d, q[row:nq]), kc, vc, part, c.T, c.H, c.Hkv, c.D, c.W, S))
				near(t, fmt.Sprintf("%s decoding in %d splits: out", name, S), down(t, oc, c.H*c.D), out[row:nq], 1e-5)
				near(t, fmt.Sprintf("%s decoding in %d splits: lse", name, S), down(t, lc, c.H), wl, 1e-5)
			}
		}
		if c.short {
			d.maxSharedPerBloc = 0 // the deferred restore runs at the end; the next cases take the GPU's own
		}
	}
	o, l, l2, x := zeros(t, d, 64), zeros(t, d, 4), zeros(t, d, 2), zeros(t, d, 64)
	for _, bad := range []error{
		d.Attention(o, l, x, x, x, 1, 2, 2, 1, 512, 0),                        // head size over 256 (and buffers too small)
		d.Attention(o, l, x, x, x, 1, 2, 3, 2, 16, 0),                         // heads not a multiple of kv heads
		d.Attention(o, l, x, x, x, 2, 4, 2, 1, 16, 0),                         // buffers too small for the shape
		d.AttentionCached(o, l, x, x, x, 3, 2, 1, 1, 16, 0),                   // more queries than cached positions
		d.AttentionBackward(o, x, x, x, x, x, x, x, l, l2, 1, 4, 1, 1, 16, 0), // delta too small
	} {
		if bad == nil {
			t.Error("an attention call outside its buffers or shapes was taken")
		}
	}
}

// The rotation tables made on the device are nn.Rope.Row's, within a
// float's last place (double sincos on both sides): a linear position
// scale, LongRoPE's factors and attention factor, positions past 1000.
func TestGPURopeTable(t *testing.T) {
	d := gpu(t)
	factors := []float32{1, 1.5, 2, 4, 8, 16}
	r := nn.NewRopeScaled(24, 10000, true, factors, 0.5, 1.19)
	const p0, T = 1000, 37
	half := len(r.Freq)
	want, wsin := make([]float32, T*half), make([]float32, T*half)
	for p := 0; p < T; p++ {
		r.Row(want[p*half:(p+1)*half], wsin[p*half:(p+1)*half], p0+p)
	}
	fb, err := d.Alloc(8 * int64(half))
	must(t, err)
	defer fb.Free()
	must(t, fb.Write(0, unsafe.Slice((*byte)(unsafe.Pointer(&r.Freq[0])), 8*half)))
	cb, sb := zeros(t, d, T*half), zeros(t, d, T*half)
	must(t, d.RopeTable(cb, sb, fb, half, p0, T, r.Scale, float32(r.Mscale)))
	near(t, "rope cos", down(t, cb, T*half), want, 1e-7)
	near(t, "rope sin", down(t, sb, T*half), wsin, 1e-7)
	if r.Scale == 1 || r.Mscale == 1 {
		t.Fatalf("the rope has scale %g and attention factor %g: the test no longer tests them", r.Scale, r.Mscale)
	}
}

func TestGPUAdamW(t *testing.T) {
	d := gpu(t)
	r := rand.New(rand.NewPCG(13, 14))
	const n = 10007
	w, g := randn(r, n, 0.1), randn(r, n, 0.01)
	opt := optim.NewAdamW(0.9, 0.999, 1e-8, 0.01)
	wb, gb, mb, vb := up(t, d, w), up(t, d, g), zeros(t, d, n), zeros(t, d, n)
	cpu := append([]float32(nil), w...)
	const lr = 1e-3
	for step := 1; step <= 3; step++ {
		must(t, opt.Step([]*optim.Param{{Name: "w", W: cpu, G: g, Decay: true}}, lr))
		st := float64(step)
		must(t, d.AdamW(wb, gb, mb, vb, n, 0.9, 0.999, 1e-8, lr/(1-math.Pow(0.9, st)), math.Sqrt(1-math.Pow(0.999, st)), 1-lr*0.01))
	}
	near(t, "AdamW w", down(t, wb, n), cpu, 1e-6)
}

// The budget: allocations past MaxVRAM are refused, the process's count
// follows them, and the driver's own count moves by about as much.
func TestGPUMemoryBudget(t *testing.T) {
	base := gpu(t)
	_ = base
	d, err := Open(0, Options{MaxVRAM: 64 << 20})
	must(t, err)
	defer d.Close()
	free0, _, err := d.MemInfo()
	must(t, err)
	a, err := d.Alloc(40 << 20)
	must(t, err)
	if _, err := d.Alloc(30 << 20); !errors.Is(err, ErrVRAM) {
		t.Fatalf("40 + 30 MiB under a 64 MiB cap: %v", err)
	}
	free1, _, err := d.MemInfo()
	must(t, err)
	if d.Used() != 40<<20 || d.Peak() != 40<<20 {
		t.Errorf("used %d peak %d after one 40 MiB buffer", d.Used(), d.Peak())
	}
	grew := free0 - free1
	t.Logf("driver: 40 MiB allocated, free fell by %.2f MiB; context and others at open: %.1f MiB", float64(grew)/(1<<20), float64(d.ContextBytes())/(1<<20))
	if grew < 40<<20 || grew > 42<<20 {
		t.Errorf("the driver's free memory fell by %d bytes for a 40 MiB buffer", grew)
	}
	must(t, a.Free())
	if d.Used() != 0 || d.Peak() != 40<<20 {
		t.Errorf("after Free: used %d peak %d", d.Used(), d.Peak())
	}
	// cuBLAS's workspace comes out of the same budget.
	x := up(t, d, make([]float32, 64*64))
	must(t, d.GemmNT(x, x, x, 64, 64, 64, false, F32))
	if d.Used() < WorkspaceBytes(64<<20) {
		t.Errorf("used %d after a GEMM: the cuBLAS workspace is not counted", d.Used())
	}
}

// A second device on the same cache folder loads the kernels from it.
func TestGPUKernelCacheReused(t *testing.T) {
	gpu(t)
	dir := t.TempDir()
	d1, err := Open(0, Options{CacheDir: dir})
	must(t, err)
	must(t, d1.Compile())
	if d1.FromCache() {
		t.Error("an empty cache folder gave the kernels")
	}
	d1.Close()
	d2, err := Open(0, Options{CacheDir: dir})
	must(t, err)
	defer d2.Close()
	must(t, d2.Compile())
	if !d2.FromCache() {
		t.Error("the second device compiled again instead of reading the cache")
	}
	t.Logf("%s", d2)
}

func TestGPUBadCalls(t *testing.T) {
	d := gpu(t)
	b, err := d.Alloc(1024)
	must(t, err)
	if err := b.Write(1000, make([]byte, 100)); err == nil {
		t.Error("a write past the buffer's end was accepted")
	}
	must(t, b.Free())
	if err := b.Write(0, []byte{1}); err == nil {
		t.Error("a write to a freed buffer was accepted")
	}
	if _, err := d.Alloc(-5); err == nil {
		t.Error("a negative allocation was accepted")
	}
	if _, err := d.UploadMatrix(quant.Q5_K, 1, 256, make([]byte, 176)); err == nil {
		t.Error("Q5_K weights were accepted")
	}
	if _, err := d.UploadMatrix(quant.Q4_0, 2, 64, make([]byte, 10)); err == nil {
		t.Error("a short Q4_0 matrix was accepted")
	}
	// A GPU allocation far past the card's memory is the driver's error,
	// named, wrapping ErrVRAM.
	if _, err := d.Alloc(d.TotalMem * 4); !errors.Is(err, ErrVRAM) {
		t.Errorf("allocating 4× the GPU: %v", err)
	}
}
