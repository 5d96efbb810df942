package loho

import (
	"fmt"
	"hash/fnv"

	"github.com/qtune/qtune/budget"
	"github.com/qtune/qtune/kernels"
	"github.com/qtune/qtune/model"
)

// Sparse is a trainable sparse delta S on one frozen linear layer y = x·Wᵀ:
// values only at the entries of a seeded random mask, stored row-compressed
// (CSR). As an adapter it adds
//
//	y (M, Out) += x (M, In) · Sᵀ
//
// and its backward is the sampled dense-dense product (SDDMM)
//
//	Grad[k] += Σ_m dy[m, o]·x[m, Cols[k]]   for the entries k of row o
//	dx (M, In) += dy (M, Out) · S
//
// so no (Out, In) gradient is ever formed: memory is per stored entry.
type Sparse struct {
	Target  string
	In, Out int
	RowPtr  []int32   // (Out+1) entries of row o are RowPtr[o]:RowPtr[o+1]
	Cols    []int32   // (nnz) column of each entry, ascending within a row
	Val     []float32 // (nnz) the delta's values (start at 0)
	Grad    []float32 // (nnz) their gradient; nil: not computed

	pool *kernels.Pool
}

var _ model.SizedAdapter = (*Sparse)(nil)

// Bytes is the memory the delta holds: indices, values, gradient.
func (s *Sparse) Bytes() int64 {
	return 4 * int64(len(s.RowPtr)+len(s.Cols)+len(s.Val)+len(s.Grad))
}

// MaskKey is the mask generator's key for one matrix: the run's mask seed
// mixed with the matrix's name, so masks do not depend on which matrices
// are adapted or in which order.
func MaskKey(seed uint64, target string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(target))
	return mix(seed ^ mix(h.Sum64()))
}

// InMask reports whether entry i (row-major o·In + c) of the matrix with
// key is in a mask that keeps the share ratio of entries.
func InMask(key uint64, i int, ratio float64) bool {
	u := float64(mix(key+uint64(i)*gamma)>>11) * (1.0 / (1 << 53))
	return u < ratio
}

const gamma = 0x9e3779b97f4a7c15

func mix(z uint64) uint64 {
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}

// NewSparse builds the zero delta of an (out, in) matrix on the entries
// InMask(MaskKey(seed, target), ·, ratio) selects (about ratio·out·in).
// grad allocates the gradient. The indices, values and gradient are one
// allocation from alloc (nil: the Go heap).
func NewSparse(target string, out, in int, ratio float64, seed uint64, grad bool, pool *kernels.Pool, alloc model.Alloc) (*Sparse, error) {
	if !(ratio > 0 && ratio <= 1) {
		return nil, fmt.Errorf("loho: mask ratio %g out of (0, 1]", ratio)
	}
	if int64(out)*int64(in) >= 1<<31 {
		return nil, fmt.Errorf("loho: %s: %dx%d entries exceed the int32 index", target, out, in)
	}
	if pool == nil {
		pool = kernels.Default()
	}
	key := MaskKey(seed, target)
	s := &Sparse{Target: target, In: in, Out: out, pool: pool}
	// Two passes, count then fill, so every array is allocated once at its
	// size.
	n := 0
	for i := 0; i < out*in; i++ {
		if InMask(key, i, ratio) {
			n++
		}
	}
	g := 0
	if grad {
		g = n
	}
	p, err := alloc.Parts(budget.Trainable, out+1, n, n, g)
	if err != nil {
		return nil, fmt.Errorf("loho: %s: %d entries: %w", target, n, err)
	}
	s.RowPtr, s.Cols, s.Val = model.Int32s(p[0]), model.Int32s(p[1])[:0], p[2]
	if grad {
		s.Grad = p[3]
	}
	for o := 0; o < out; o++ {
		for c := 0; c < in; c++ {
			if InMask(key, o*in+c, ratio) {
				s.Cols = append(s.Cols, int32(c))
			}
		}
		s.RowPtr[o+1] = int32(len(s.Cols))
	}
	return s, nil
}

// FromEntries builds a delta from flat row-major indices (ascending) and
// values, as stored in a file.
func FromEntries(target string, out, in int, idx []int32, val []float32, pool *kernels.Pool) (*Sparse, error) {
	if len(idx) != len(val) {
		return nil, fmt.Errorf("loho: %s: %d indices for %d values", target, len(idx), len(val))
	}
	if pool == nil {
		pool = kernels.Default()
	}
	s := &Sparse{Target: target, In: in, Out: out, RowPtr: make([]int32, out+1), Cols: make([]int32, len(idx)),
		Val: append([]float32(nil), val...), pool: pool}
	prev := int64(-1)
	for k, i := range idx {
		if int64(i) <= prev || int64(i) >= int64(out)*int64(in) {
			return nil, fmt.Errorf("loho: %s: index %d at %d out of order or outside %dx%d", target, i, k, out, in)
		}
		prev = int64(i)
		o := int(i) / in
		s.Cols[k] = int32(int(i) % in)
		s.RowPtr[o+1]++
	}
	for o := 0; o < out; o++ {
		s.RowPtr[o+1] += s.RowPtr[o]
	}
	return s, nil
}

// Entries returns the flat row-major index of every stored value.
func (s *Sparse) Entries() []int32 {
	idx := make([]int32, len(s.Cols))
	for o := 0; o < s.Out; o++ {
		for k := s.RowPtr[o]; k < s.RowPtr[o+1]; k++ {
			idx[k] = int32(o*s.In) + s.Cols[k]
		}
	}
	return idx
}

// Nnz is the number of stored entries.
func (s *Sparse) Nnz() int { return len(s.Val) }

// Forward adds x·Sᵀ to y for M rows (parallel over rows of x).
func (s *Sparse) Forward(y, x []float32, M int) {
	In, Out := s.In, s.Out
	s.pool.Parallel(M, 1, func(lo, hi int) {
		for m := lo; m < hi; m++ {
			xr := x[m*In : (m+1)*In]
			yr := y[m*Out : (m+1)*Out]
			for o := 0; o < Out; o++ {
				var acc float32
				for k := s.RowPtr[o]; k < s.RowPtr[o+1]; k++ {
					acc += s.Val[k] * xr[s.Cols[k]]
				}
				yr[o] += acc
			}
		}
	})
}

// Backward accumulates the sampled gradient Grad (when set) and dx += dy·S.
// It allocates nothing of the matrix's size.
func (s *Sparse) Backward(dx, dy, x []float32, M int) {
	In, Out := s.In, s.Out
	if s.Grad != nil {
		s.pool.Parallel(Out, 1, func(lo, hi int) {
			for o := lo; o < hi; o++ {
				k0, k1 := s.RowPtr[o], s.RowPtr[o+1]
				if k0 == k1 {
					continue
				}
				g, cols := s.Grad[k0:k1], s.Cols[k0:k1]
				for m := 0; m < M; m++ {
					a := dy[m*Out+o]
					if a == 0 {
						continue
					}
					xr := x[m*In : (m+1)*In]
					for j, c := range cols {
						g[j] += a * xr[c]
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
			for o, a := range dyr {
				if a == 0 {
					continue
				}
				for k := s.RowPtr[o]; k < s.RowPtr[o+1]; k++ {
					dxr[s.Cols[k]] += a * s.Val[k]
				}
			}
		}
	})
}

// AddTo adds S to w, the layer's weight as float32 (Out, In): the merge.
func (s *Sparse) AddTo(w []float32) {
	for o := 0; o < s.Out; o++ {
		for k := s.RowPtr[o]; k < s.RowPtr[o+1]; k++ {
			w[o*s.In+int(s.Cols[k])] += s.Val[k]
		}
	}
}

// Stack applies several adapters to one layer: outputs and gradients add.
type Stack []model.Adapter

// Bytes is what the adapters that say so hold.
func (st Stack) Bytes() int64 {
	var n int64
	for _, a := range st {
		if sa, ok := a.(model.SizedAdapter); ok {
			n += sa.Bytes()
		}
	}
	return n
}

// ScratchFloats is the most scratch any of the adapters takes.
func (st Stack) ScratchFloats(M int) int {
	n := 0
	for _, a := range st {
		if sa, ok := a.(model.ScratchAdapter); ok {
			n = max(n, sa.ScratchFloats(M))
		}
	}
	return n
}

// UseScratch gives buf to every adapter that takes scratch (their calls
// do not overlap).
func (st Stack) UseScratch(buf []float32) {
	for _, a := range st {
		if sa, ok := a.(model.ScratchAdapter); ok {
			sa.UseScratch(buf)
		}
	}
}

// Forward runs every adapter's Forward.
func (st Stack) Forward(y, x []float32, M int) {
	for _, a := range st {
		a.Forward(y, x, M)
	}
}

// Backward runs every adapter's Backward.
func (st Stack) Backward(dx, dy, x []float32, M int) {
	for _, a := range st {
		a.Backward(dx, dy, x, M)
	}
}
