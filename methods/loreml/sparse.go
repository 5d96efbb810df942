package loreml

import (
	"fmt"
	"unsafe"

	"github.com/qtune/qtune/budget"
	"github.com/qtune/qtune/kernels"
	"github.com/qtune/qtune/model"
	"github.com/qtune/qtune/quant"
)

// Sparse is a trainable sparse delta Δ (Out, In) in CSR form: row i holds the
// entries Col[RowPtr[i]:RowPtr[i+1]] with values Val at the same positions.
// Columns are sorted within a row.
type Sparse struct {
	Out, In int
	RowPtr  []int32   // (Out+1)
	Col     []int32   // (k) column of each kept entry
	Val     []float32 // (k) Δ at the kept entries
	Grad    []float32 // (k) dL/dΔ at the kept entries; nil when frozen

	pool *kernels.Pool
}

var _ model.SizedAdapter = (*Sparse)(nil)

// Bytes is the memory the delta holds: indices, values, gradient.
func (s *Sparse) Bytes() int64 {
	return 4 * int64(len(s.RowPtr)+len(s.Col)+len(s.Val)+len(s.Grad))
}

// K is the number of kept entries.
func (s *Sparse) K() int { return len(s.Col) }

// Forward adds x·Δᵀ to y for M rows. Reference loop:
//
//	for m { for i { for p in row i { y[m,i] += Val[p]·x[m,Col[p]] } } }
func (s *Sparse) Forward(y, x []float32, M int) {
	if len(s.Col) == 0 {
		return
	}
	In, Out := s.In, s.Out
	s.pool.Parallel(M, 1, func(lo, hi int) {
		for m := lo; m < hi; m++ {
			xr := x[m*In : (m+1)*In]
			yr := y[m*Out : (m+1)*Out]
			for i := range yr {
				var acc float32
				for p := s.RowPtr[i]; p < s.RowPtr[i+1]; p++ {
					acc += s.Val[p] * xr[s.Col[p]]
				}
				yr[i] += acc
			}
		}
	})
}

// Backward accumulates the sampled gradient Grad[p] += Σ_m dy[m,i]·x[m,j]
// for each kept (i, j) (SDDMM, never a dense dW) and dx += dy·Δ. Split over
// rows i for the gradient (disjoint entries) and over rows m for dx; sums run
// in a fixed order, so results do not depend on the number of workers.
func (s *Sparse) Backward(dx, dy, x []float32, M int) {
	if len(s.Col) == 0 {
		return
	}
	In, Out := s.In, s.Out
	if s.Grad != nil {
		s.pool.Parallel(Out, 1, func(lo, hi int) {
			for m := 0; m < M; m++ {
				xr := x[m*In : (m+1)*In]
				dyr := dy[m*Out : (m+1)*Out]
				for i := lo; i < hi; i++ {
					g := dyr[i]
					if g == 0 {
						continue
					}
					for p := s.RowPtr[i]; p < s.RowPtr[i+1]; p++ {
						s.Grad[p] += g * xr[s.Col[p]]
					}
				}
			}
		})
	}
	if dx == nil {
		return
	}
	s.pool.Parallel(M, 1, func(lo, hi int) {
		for m := lo; m < hi; m++ {
			dxr := dx[m*In : (m+1)*In]
			dyr := dy[m*Out : (m+1)*Out]
			for i, g := range dyr {
				if g == 0 {
					continue
				}
				for p := s.RowPtr[i]; p < s.RowPtr[i+1]; p++ {
					dxr[s.Col[p]] += g * s.Val[p]
				}
			}
		}
	})
}

// AddTo adds Δ to w, the dense (Out, In) matrix in the model's row order.
func (s *Sparse) AddTo(w []float32) {
	for i := 0; i < s.Out; i++ {
		for p := s.RowPtr[i]; p < s.RowPtr[i+1]; p++ {
			w[i*s.In+int(s.Col[p])] += s.Val[p]
		}
	}
}

// Indices returns the flat row-major indices i·In + j of the kept entries,
// ascending.
func (s *Sparse) Indices() []int32 {
	idx := make([]int32, len(s.Col))
	for i := 0; i < s.Out; i++ {
		for p := s.RowPtr[i]; p < s.RowPtr[i+1]; p++ {
			idx[p] = int32(i*s.In) + s.Col[p]
		}
	}
	return idx
}

// newSparse builds the CSR form of the ascending flat indices idx of an
// (out, in) matrix, with vals as the values (copied; zeros when nil), in
// one allocation from alloc (nil: the Go heap).
func newSparse(out, in int, idx []int32, vals []float32, pool *kernels.Pool, alloc model.Alloc) (*Sparse, error) {
	p, err := alloc.Parts(budget.Trainable, out+1, len(idx), len(idx))
	if err != nil {
		return nil, fmt.Errorf("sparse delta of %d entries: %w", len(idx), err)
	}
	s := &Sparse{Out: out, In: in, RowPtr: model.Int32s(p[0]), Col: model.Int32s(p[1]), Val: p[2], pool: pool}
	for p, f := range idx {
		i := int(f) / in
		s.Col[p] = f - int32(i*in)
		s.RowPtr[i+1]++
	}
	for i := 0; i < out; i++ {
		s.RowPtr[i+1] += s.RowPtr[i]
	}
	copy(s.Val, vals)
	return s, nil
}

// LowRank is a frozen term y += Scale·x·(U·V)ᵀ: the warm start γ·U·V.
type LowRank struct {
	Out, In, R int
	Scale      float32   // γ
	U          []float32 // (Out, R)
	V          []float32 // (R, In)

	pool    *kernels.Pool
	scratch []float32 // UseScratch's buffer; nil: allocate
}

var _ model.ScratchAdapter = (*LowRank)(nil)

// ScratchFloats is the most scratch one Forward or Backward of M rows
// takes: one (M, R) product.
func (l *LowRank) ScratchFloats(M int) int { return M * l.R }

// UseScratch makes the calls that follow take their (M, R) product from
// buf (shared by all adapters); nil makes them allocate it.
func (l *LowRank) UseScratch(buf []float32) { l.scratch = buf }

// product returns n zeroed floats: the scratch's first, or new ones.
func (l *LowRank) product(n int) []float32 {
	if n > len(l.scratch) {
		return make([]float32, n)
	}
	clear(l.scratch[:n])
	return l.scratch[:n]
}

// Forward adds Scale·(x·Vᵀ)·Uᵀ to y.
func (l *LowRank) Forward(y, x []float32, M int) {
	h := l.product(M * l.R)
	kernels.MatMul(l.pool, h, x, M, f32Matrix(l.V, l.R, l.In))
	for i := range h {
		h[i] *= l.Scale
	}
	kernels.GemmNT(l.pool, y[:M*l.Out], h, l.U, M, l.Out, l.R, true) // y += (s·h)·Uᵀ
}

// Backward adds dx += Scale·(dy·U)·V; the term is frozen, so there are no
// parameter gradients.
func (l *LowRank) Backward(dx, dy, x []float32, M int) {
	if dx == nil {
		return
	}
	dh := l.product(M * l.R)
	kernels.MatMulT(l.pool, dh, dy, M, f32Matrix(l.U, l.Out, l.R))
	for i := range dh {
		dh[i] *= l.Scale
	}
	kernels.MatMulT(l.pool, dx, dh, M, f32Matrix(l.V, l.R, l.In))
}

// AddTo adds Scale·U·V to w (Out, In), one row at a time.
func (l *LowRank) AddTo(w []float32) {
	for o := 0; o < l.Out; o++ {
		row := w[o*l.In : (o+1)*l.In]
		for r := 0; r < l.R; r++ {
			if u := l.U[o*l.R+r]; u != 0 {
				kernels.Axpy(row, l.Scale*u, l.V[r*l.In:(r+1)*l.In])
			}
		}
	}
}

// Matrix is the stage-2 update of one frozen linear layer:
// y += x·(γ·U·V + Δ)ᵀ.
type Matrix struct {
	Target  string // GGUF base tensor name, e.g. blk.0.attn_q.weight
	Out, In int
	Warm    *LowRank // nil without a warm start (γ = 0)
	Delta   *Sparse
}

var _ model.ScratchAdapter = (*Matrix)(nil)

// Bytes is the warm start's factors and the delta.
func (a *Matrix) Bytes() int64 {
	n := a.Delta.Bytes()
	if a.Warm != nil {
		n += 4 * int64(len(a.Warm.U)+len(a.Warm.V))
	}
	return n
}

// ScratchFloats is the warm start's (the sparse delta takes none).
func (a *Matrix) ScratchFloats(M int) int {
	if a.Warm == nil {
		return 0
	}
	return a.Warm.ScratchFloats(M)
}

// UseScratch gives buf to the warm start.
func (a *Matrix) UseScratch(buf []float32) {
	if a.Warm != nil {
		a.Warm.UseScratch(buf)
	}
}

// Forward adds the warm start and the sparse delta.
func (a *Matrix) Forward(y, x []float32, M int) {
	if a.Warm != nil {
		a.Warm.Forward(y, x, M)
	}
	a.Delta.Forward(y, x, M)
}

// Backward accumulates Δ's sampled gradient and both terms' dx.
func (a *Matrix) Backward(dx, dy, x []float32, M int) {
	if a.Warm != nil {
		a.Warm.Backward(dx, dy, x, M)
	}
	a.Delta.Backward(dx, dy, x, M)
}

// AddTo adds γ·U·V + Δ to w (Out, In) in the model's row order.
func (a *Matrix) AddTo(w []float32) {
	if a.Warm != nil {
		a.Warm.AddTo(w)
	}
	a.Delta.AddTo(w)
}

// f32Matrix views a float32 slice as an F32 kernels.Matrix.
func f32Matrix(v []float32, rows, cols int) kernels.Matrix {
	var b []byte
	if len(v) > 0 {
		b = unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), 4*len(v))
	}
	return kernels.Matrix{Type: quant.F32, Rows: rows, Cols: cols, Data: b}
}
