package mezo

import (
	"fmt"

	"github.com/qtune/qtune/budget"
	"github.com/qtune/qtune/kernels"
	"github.com/qtune/qtune/model"
	"github.com/qtune/qtune/quant"
)

// Scales is the QZO extension (methods.md §5) as a model.Adapter: every
// quantization block of a frozen matrix W gets a multiplier (1 + R[b]), the
// codes untouched. For the symmetric formats (Q8_0, Q4_0, IQ4_NL, NF4) that
// is exactly a new block scale d' = d·(1 + R[b]); for formats with a block
// minimum (Q4_1, Q4_K, …) d and the minimum are scaled together. The
// adapter adds the difference to the frozen layer's output:
//
//	y (M, Out) += x (M, In) · ΔWᵀ,  ΔW[o, j] = R[b(o, j)] · W[o, j]
//
// where b(o, j) = (o·In + j) / Block indexes the file's blocks (blocks may
// cross rows where a format allows it). Each call decodes W's rows once more,
// so a forward through the adapted layers costs about twice the frozen one;
// R holds one float per block (1/32 or 1/64 of the weights).
type Scales struct {
	Target string
	W      kernels.Matrix // (Out, In) the frozen quantized weight
	Block  int            // elements per quantization block
	R      []float32      // (⌈Out·In/Block⌉) relative scale change, starts at 0
	GR     []float32      // gradient of R (nil: not computed)

	pool *kernels.Pool
}

var _ model.Adapter = (*Scales)(nil)

// NewScales returns the zero-initialised scale adapter of w, which must be
// a quantized matrix. The multipliers come from alloc (nil: the Go heap).
func NewScales(target string, w kernels.Matrix, pool *kernels.Pool, alloc model.Alloc) (*Scales, error) {
	in, err := quant.Lookup(w.Type)
	if err != nil {
		return nil, fmt.Errorf("mezo: %s: %w", target, err)
	}
	if !in.Quantized {
		return nil, fmt.Errorf("mezo: %s is %s, not a quantized type: it has no block scales", target, w.Type)
	}
	if pool == nil {
		pool = kernels.Default()
	}
	n := w.Rows * w.Cols
	r, err := alloc.Floats(budget.Trainable, (n+in.BlockSize-1)/in.BlockSize)
	if err != nil {
		return nil, fmt.Errorf("mezo: %s: block scales: %w", target, err)
	}
	return &Scales{Target: target, W: w, Block: in.BlockSize, R: r, pool: pool}, nil
}

// deltaRow writes row o of ΔW into d (len In), or reports true without
// writing when every multiplier of the row is 0.
func (s *Scales) deltaRow(d []float32, o int) bool {
	In := s.W.Cols
	b0 := o * In / s.Block
	b1 := ((o+1)*In - 1) / s.Block
	zero := true
	for _, r := range s.R[b0 : b1+1] {
		if r != 0 {
			zero = false
			break
		}
	}
	if zero {
		return true
	}
	s.W.Row(d, o)
	base := o * In
	for j := 0; j < In; {
		b := (base + j) / s.Block
		end := min(In, (b+1)*s.Block-base)
		r := s.R[b]
		for ; j < end; j++ {
			d[j] *= r
		}
	}
	return false
}

// Bytes is the scale changes and their gradient.
func (s *Scales) Bytes() int64 { return 4 * int64(len(s.R)+len(s.GR)) }

// Forward adds x·ΔWᵀ to y for M rows, one output row of ΔW at a time.
func (s *Scales) Forward(y, x []float32, M int) {
	In, Out := s.W.Cols, s.W.Rows
	s.pool.Parallel(Out, 4, func(lo, hi int) {
		d := make([]float32, In)
		for o := lo; o < hi; o++ {
			if s.deltaRow(d, o) {
				continue
			}
			for m := 0; m < M; m++ {
				y[m*Out+o] += kernels.Dot(x[m*In:(m+1)*In], d)
			}
		}
	})
}

// Backward adds dy·ΔW to dx and, when GR is set, accumulates
// GR[b] += Σ_m dy[m, o]·Σ_{j∈b} x[m, j]·W[o, j]. It runs on one goroutine
// (MeZO never calls it; it exists for gradient checks and first-order use).
func (s *Scales) Backward(dx, dy, x []float32, M int) {
	In, Out := s.W.Cols, s.W.Rows
	w := make([]float32, In)
	d := make([]float32, In)
	for o := 0; o < Out; o++ {
		if s.GR != nil {
			s.W.Row(w, o)
			base := o * In
			for m := 0; m < M; m++ {
				g := dy[m*Out+o]
				if g == 0 {
					continue
				}
				xr := x[m*In : (m+1)*In]
				for j := 0; j < In; {
					b := (base + j) / s.Block
					end := min(In, (b+1)*s.Block-base)
					s.GR[b] += g * kernels.Dot(xr[j:end], w[j:end])
					j = end
				}
			}
		}
		if dx == nil || s.deltaRow(d, o) {
			continue
		}
		for m := 0; m < M; m++ {
			if g := dy[m*Out+o]; g != 0 {
				kernels.Axpy(dx[m*In:(m+1)*In], g, d)
			}
		}
	}
}

// NewScaleSet attaches a Scales adapter to every quantized module of the
// last layers blocks (≤ 0: all) and returns them in (block, module) order
// with the model.Adapters to pass to LossGrad. Float matrices are skipped.
// The multipliers come from alloc (nil: the Go heap).
func NewScaleSet(m *model.Model, layers int, alloc model.Alloc) ([]*Scales, model.Adapters, error) {
	c := m.Config
	first := 0
	if layers > 0 && layers < c.Layers {
		first = c.Layers - layers
	}
	ad := make(model.Adapters, c.Layers)
	var ss []*Scales
	for l := first; l < c.Layers; l++ {
		for mod := model.Module(0); mod < model.NumModules; mod++ {
			w := m.Layers[l].Matrix(mod)
			if in, err := quant.Lookup(w.Type); err != nil || !in.Quantized {
				continue
			}
			s, err := NewScales(model.TensorName(l, mod), *w, m.Pool(), alloc)
			if err != nil {
				return nil, nil, err
			}
			ss = append(ss, s)
			ad[l][mod] = s
		}
	}
	if len(ss) == 0 {
		return nil, nil, fmt.Errorf("mezo: the model has no quantized block matrices: scales need a quantized base (quantize it first)")
	}
	return ss, ad, nil
}
