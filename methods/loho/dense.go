package loho

import (
	"fmt"

	"github.com/qtune/qtune/budget"
	"github.com/qtune/qtune/kernels"
	"github.com/qtune/qtune/model"
)

// DenseFile is the file name of a saved set of zeroth-order dense deltas
// (an F32 safetensors file, one (Out, In) tensor "T.zo_delta" per matrix).
const DenseFile = "zo_delta.safetensors"

// Dense is the zeroth-order part of intra-layer LoHO on one frozen linear
// layer y = x·Wᵀ: a dense float32 delta D (Out, In) kept beside the
// quantized base, whose trainable entries are the complement ¬M of the
// first-order mask (methods.md §3.2: FO on M, ZO on ¬M). D is zero at M and
// stays zero there: MeZO's z is cleared at M (ZeroMasked) before it touches
// D. As an adapter it adds
//
//	y (M, Out) += x (M, In) · Dᵀ
//	dx (M, In) += dy (M, Out) · D      (no gradient for D: it is ZO-trained)
//
// W_eff = W + S + D, with S the first-order Sparse at M. D costs 4 bytes per
// entry of the matrix: the price of a writable W on a quantized base (the
// codes cannot move by ±εz).
type Dense struct {
	Target  string
	In, Out int
	Val     []float32 // (Out*In) row-major; zero at the mask's entries

	key   uint64  // mask key (MaskKey) and ratio: the first-order entries
	ratio float64 // ≤ 0 when unknown (a delta read from a file)
	pool  *kernels.Pool
}

var _ model.Adapter = (*Dense)(nil)

// NewDense returns the zero delta of an (out, in) matrix whose first-order
// mask is InMask(MaskKey(seed, target), ·, ratio). The values come from
// alloc (nil: the Go heap).
func NewDense(target string, out, in int, ratio float64, seed uint64, pool *kernels.Pool, alloc model.Alloc) (*Dense, error) {
	if !(ratio >= 0 && ratio < 1) {
		return nil, fmt.Errorf("loho: %s: first-order share %g leaves no zeroth-order entries", target, ratio)
	}
	if out <= 0 || in <= 0 || int64(out)*int64(in) >= 1<<31 {
		return nil, fmt.Errorf("loho: %s: %dx%d entries out of range", target, out, in)
	}
	if pool == nil {
		pool = kernels.Default()
	}
	v, err := alloc.Floats(budget.Trainable, out*in)
	if err != nil {
		return nil, fmt.Errorf("loho: %s: dense delta of %dx%d: %w", target, out, in, err)
	}
	return &Dense{Target: target, In: in, Out: out, Val: v, key: MaskKey(seed, target), ratio: ratio, pool: pool}, nil
}

// DenseFrom wraps values read from a file (Out·In of them).
func DenseFrom(target string, out, in int, val []float32, pool *kernels.Pool) (*Dense, error) {
	if out <= 0 || in <= 0 || int64(out)*int64(in) != int64(len(val)) {
		return nil, fmt.Errorf("loho: %s: %d values for a %dx%d delta", target, len(val), out, in)
	}
	if pool == nil {
		pool = kernels.Default()
	}
	return &Dense{Target: target, In: in, Out: out, Val: val, pool: pool}, nil
}

// ZeroMasked clears z at the first-order entries: z[i] stands for entry
// off+i of Val. MeZO calls it on every draw, so the perturbation and the
// update touch ¬M only.
func (d *Dense) ZeroMasked(off int, z []float32) {
	if d.ratio <= 0 {
		return
	}
	for i := range z {
		if InMask(d.key, off+i, d.ratio) {
			z[i] = 0
		}
	}
}

// Mask is the first-order mask the delta's zeroth-order entries
// complement: entry i is in it when InMask(key, i, ratio) (ratio ≤ 0: no
// mask, a delta read from a file).
func (d *Dense) Mask() (key uint64, ratio float64) { return d.key, d.ratio }

// Trainable is the number of zeroth-order entries (those outside the mask).
func (d *Dense) Trainable() int64 {
	if d.ratio <= 0 {
		return int64(len(d.Val))
	}
	var n int64
	for i := range d.Val {
		if !InMask(d.key, i, d.ratio) {
			n++
		}
	}
	return n
}

// Bytes is the dense delta's values.
func (d *Dense) Bytes() int64 { return 4 * int64(len(d.Val)) }

// Forward adds x·Dᵀ to y for M rows.
func (d *Dense) Forward(y, x []float32, M int) {
	kernels.GemmNT(d.pool, y[:M*d.Out], x[:M*d.In], d.Val, M, d.Out, d.In, true)
}

// Backward adds dy·D to dx (D has no gradient).
func (d *Dense) Backward(dx, dy, x []float32, M int) {
	if dx == nil {
		return
	}
	kernels.GemmNN(d.pool, dx[:M*d.In], dy[:M*d.Out], d.Val, M, d.In, d.Out)
}
