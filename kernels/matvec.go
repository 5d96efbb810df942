package kernels

import "github.com/qtune/qtune/quant"

// matVecRows is the largest M that MatMul treats as matrix-vector work
// (generation): each W row is streamed from memory once and used against
// M ≤ 4 rows of X, which are small enough to stay in L1.
const matVecRows = 4

// q8ChunkRows is how many weight rows the integer matrix-vector path runs
// against every activation row before moving on (M > 1 reuses them from
// cache).
const q8ChunkRows = 32

// matVec is MatMul for M ≤ matVecRows. Reference loop (the same as
// MatMul's):
//
//	for n { for m { y[m*N+n] = Σₖ x[m*K+k]·w[n][k] } }
//
// Workers own disjoint ranges of W rows. For Q8_0, Q4_0, NF4, Q4_K and
// Q6_K at AVX2 and above, the M rows of X are quantized once to int8
// blocks (newQ8Acts) and the assembly kernels loop over the worker's rows
// with integer dots (q8Act.rowsDot; error bound in doc.go). Otherwise a row
// is read straight from its blocks by a fused assembly dot (fusedRowDot:
// F16, BF16 with AVX-512), read in place (F32), or decoded once into a row
// buffer and dotted with each X row (dotF32Fast).
func matVec(p *Pool, y, x []float32, M int, w Matrix) {
	N, K := w.Rows, w.Cols
	if K == 0 {
		clear(y[:M*N])
		return
	}
	if acts := newQ8Acts(&w, x, M); acts != nil {
		p.Parallel(N, 16, func(lo, hi int) {
			// Rows in chunks that stay in L1/L2 while the M activation
			// rows use them.
			chunk := q8ChunkRows
			if M == 1 {
				chunk = hi - lo
			}
			for c0 := lo; c0 < hi; c0 += chunk {
				c1 := min(hi, c0+chunk)
				for m, a := range acts {
					a.rowsDot(&w, y[m*N+c0:m*N+c1], c0, c1)
				}
			}
		})
		putQ8Acts(acts)
		return
	}
	var wf []float32
	if w.Type == quant.F32 {
		wf = F32View(w.Data)
	}
	p.Parallel(N, 8, func(lo, hi int) {
		var sp []float32
		defer func() {
			if sp != nil {
				scratch.put(sp)
			}
		}()
		for n := lo; n < hi; n++ {
			if wf != nil {
				row := wf[n*K : (n+1)*K]
				for m := 0; m < M; m++ {
					y[m*N+n] = dotF32Fast(x[m*K:(m+1)*K], row)
				}
				continue
			}
			if s, ok := fusedRowDot(&w, n, x[:K]); ok {
				y[n] = s
				for m := 1; m < M; m++ {
					y[m*N+n], _ = fusedRowDot(&w, n, x[m*K:(m+1)*K])
				}
				continue
			}
			if sp == nil {
				sp = scratch.get(K)
			}
			row := sp[:K]
			decodeRow(&w, row, n, 0)
			for m := 0; m < M; m++ {
				y[m*N+n] = dotF32Fast(x[m*K:(m+1)*K], row)
			}
		}
	})
}

// q8Block is the activation block size of the integer matrix-vector path
// for weights of type t (matvec_q8.go), 0 when t has none.
func q8Block(t quant.Type) int {
	switch t {
	case quant.Q8_0, quant.Q4_0, quant.Q4_K, quant.Q6_K, quant.Q5_K, quant.Q3_K, quant.Q2_K,
		quant.IQ4_XS, quant.IQ4_NL, quant.Q4_1, quant.Q5_0, quant.Q5_1:
		return 32
	case quant.NF4:
		return 64
	}
	return 0
}
