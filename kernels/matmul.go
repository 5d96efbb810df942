package kernels

import (
	"fmt"
	"unsafe"

	"github.com/qtune/qtune/quant"
)

// Matrix is a frozen weight matrix as stored in a model file: Rows rows of
// Cols elements of Type; Data holds the complete tensor (for NF4, including
// its side table).
type Matrix struct {
	Type       quant.Type
	Rows, Cols int
	Data       []byte
}

// Check verifies the data size against type and shape.
func (w Matrix) Check() error {
	want, err := quant.Bytes(w.Type, int64(w.Rows)*int64(w.Cols))
	if err != nil {
		return fmt.Errorf("kernels: %w", err)
	}
	if int64(len(w.Data)) != want {
		return fmt.Errorf("kernels: %s matrix %dx%d has %d bytes, want %d", w.Type, w.Rows, w.Cols, len(w.Data), want)
	}
	return nil
}

// F32View reinterprets little-endian float32 bytes as a []float32 without
// copying. It returns nil when b is not 4-byte aligned or not a whole number
// of floats; callers then decode instead.
func F32View(b []byte) []float32 {
	if len(b) == 0 || len(b)%4 != 0 || uintptr(unsafe.Pointer(&b[0]))%4 != 0 {
		return nil
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(&b[0])), len(b)/4)
}

// Row decodes row r of w into dst (len Cols).
func (w Matrix) Row(dst []float32, r int) {
	if w.Type == quant.F32 {
		if v := F32View(w.Data); v != nil {
			copy(dst, v[r*w.Cols:(r+1)*w.Cols])
			return
		}
	}
	n := int64(w.Rows) * int64(w.Cols)
	if err := quant.DequantizeRange(w.Type, dst[:w.Cols], w.Data, n, int64(r)*int64(w.Cols)); err != nil {
		panic(err) // shapes were checked when the model was loaded
	}
}

// tileRows is how many weight rows are dequantized together and reused
// against every activation row.
const tileRows = 4

// MatMul computes Y = X·Wᵀ for X (M, K) and W (N, K) stored quantized,
// writing Y (M, N). Reference loop:
//
//	for m := 0; m < M; m++ {
//		for n := 0; n < N; n++ {
//			var s float32
//			for k := 0; k < K; k++ { s += x[m*K+k] * w[n][k] }
//			y[m*N+n] = s
//		}
//	}
//
// For M ≤ matVecRows it streams W once (matVec: memory-bound generation);
// above, it runs the packed GEMM with W decoded into packed panels one
// kcBlock-deep block at a time, each once. Without assembly it is
// matMulGeneric. Results differ from matMulGeneric by rounding only (FMA and
// summation order); they are bit-identical for any number of workers.
func MatMul(p *Pool, y, x []float32, M int, w Matrix) {
	N, K := w.Rows, w.Cols
	if len(x) < M*K || len(y) < M*N {
		panic(fmt.Sprintf("kernels: MatMul: x %d y %d for M=%d N=%d K=%d", len(x), len(y), M, N, K))
	}
	if kern.fn == nil {
		matMulGeneric(p, y, x, M, w)
		return
	}
	if M <= matVecRows {
		matVec(p, y, x, M, w)
		return
	}
	if w.Type == quant.F32 {
		if wf := F32View(w.Data); wf != nil {
			gemm(p, kern, y, N, M, N, K, operandA{a: x, rs: K, cs: 1}, operandB{f: wf, rs: 1, cs: K}, false)
			return
		}
	}
	gemmW(p, kern, y, N, M, N, K, operandA{a: x, rs: K, cs: 1}, operandB{wT: true}, &w, false)
}

// MatMulT computes dX += dY·W for dY (M, N) and W (N, K), reading the
// quantized rows of W directly (no transposed copy, no whole dequantized
// copy). Reference loop:
//
//	for m { for k { for n { dx[m*K+k] += dy[m*N+n] * w[n][k] } } }
//
// Fast path: the packed GEMM with B = W, whose rows are decoded once, in
// kcBlock-row blocks, into the packed block all workers share (each worker
// then takes ranges of dX rows). Without assembly it is matMulTGeneric.
func MatMulT(p *Pool, dx, dy []float32, M int, w Matrix) {
	N, K := w.Rows, w.Cols
	if len(dx) < M*K || len(dy) < M*N {
		panic(fmt.Sprintf("kernels: MatMulT: dx %d dy %d for M=%d N=%d K=%d", len(dx), len(dy), M, N, K))
	}
	if kern.fn == nil {
		matMulTGeneric(p, dx, dy, M, w)
		return
	}
	if w.Type == quant.F32 {
		if wf := F32View(w.Data); wf != nil {
			gemm(p, kern, dx, K, M, K, N, operandA{a: dy, rs: N, cs: 1}, operandB{f: wf, rs: K, cs: 1}, true)
			return
		}
	}
	gemmW(p, kern, dx, K, M, K, N, operandA{a: dy, rs: N, cs: 1}, operandB{}, &w, true)
}

// matMulGeneric is MatMul's reference. Reference loop:
//
//	for m := 0; m < M; m++ {
//		for n := 0; n < N; n++ {
//			var s float32
//			for k := 0; k < K; k++ { s += x[m*K+k] * w[n][k] }
//			y[m*N+n] = s
//		}
//	}
//
// W is dequantized tileRows rows at a time into a worker-local scratch; F32
// weights are read in place.
func matMulGeneric(p *Pool, y, x []float32, M int, w Matrix) {
	N, K := w.Rows, w.Cols
	var wf []float32
	if w.Type == quant.F32 {
		wf = F32View(w.Data)
	}
	p.Parallel(N, tileRows, func(lo, hi int) {
		var sp []float32
		if wf == nil {
			sp = scratch.get(tileRows * K)
			defer scratch.put(sp)
		}
		for n0 := lo; n0 < hi; n0 += tileRows {
			nt := min(tileRows, hi-n0)
			var tile []float32
			if wf != nil {
				tile = wf[n0*K : (n0+nt)*K]
			} else {
				tile = sp[:nt*K]
				for i := 0; i < nt; i++ {
					decodeRow(&w, tile[i*K:(i+1)*K], n0+i, 0)
				}
			}
			for m := 0; m < M; m++ {
				xr := x[m*K : (m+1)*K]
				yr := y[m*N+n0 : m*N+n0+nt]
				for i := 0; i < nt; i++ {
					yr[i] = Dot(xr, tile[i*K:(i+1)*K])
				}
			}
		}
	})
}

// matMulTGeneric is MatMulT's reference. Reference loop:
//
//	for m { for k { for n { dx[m*K+k] += dy[m*N+n] * w[n][k] } } }
//
// Work is split over the K columns' owners is not possible without
// re-decoding rows, so it is split over M: each worker decodes each row of W
// once per call and owns a disjoint set of dX rows.
func matMulTGeneric(p *Pool, dx, dy []float32, M int, w Matrix) {
	N, K := w.Rows, w.Cols
	var wf []float32
	if w.Type == quant.F32 {
		wf = F32View(w.Data)
	}
	p.Parallel(M, 1, func(lo, hi int) {
		var row []float32
		var sp []float32
		if wf == nil {
			sp = scratch.get(K)
			defer scratch.put(sp)
		}
		for n := 0; n < N; n++ {
			if wf != nil {
				row = wf[n*K : (n+1)*K]
			} else {
				row = sp[:K]
				decodeRow(&w, row, n, 0)
			}
			for m := lo; m < hi; m++ {
				if a := dy[m*N+n]; a != 0 {
					Axpy(dx[m*K:(m+1)*K], a, row)
				}
			}
		}
	})
}
