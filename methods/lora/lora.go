package lora

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"unsafe"

	"github.com/qtune/qtune/kernels"
	"github.com/qtune/qtune/model"
	"github.com/qtune/qtune/quant"
)

// Layer is one adapted linear layer.
type Layer struct {
	Target  string // GGUF base tensor name, e.g. blk.0.attn_q.weight
	In, Out int
	R       int
	Scale   float32   // alpha/R (or alpha/√R)
	A, B    []float32 // (R, In), (Out, R)
	GA, GB  []float32 // gradients, same shapes
	Dropout float32   // probability of zeroing an input element of the A path

	pool    *kernels.Pool
	seed    uint64    // dropout seed of the current step
	id      uint64    // distinguishes layers' masks
	scratch []float32 // UseScratch's buffer; nil: allocate
}

// hPool holds Forward's (M, R) products between calls, so that forward
// passes (a zeroth-order step is nothing else) make no garbage.
var hPool sync.Pool

var _ model.Adapter = (*Layer)(nil)

// f32Matrix views a float32 slice as an F32 kernels.Matrix.
func f32Matrix(v []float32, rows, cols int) kernels.Matrix {
	var b []byte
	if len(v) > 0 {
		b = unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), 4*len(v))
	}
	return kernels.Matrix{Type: quant.F32, Rows: rows, Cols: cols, Data: b}
}

// Bytes is the memory the layer holds: its factors and their gradients.
func (l *Layer) Bytes() int64 { return 4 * int64(len(l.A)+len(l.B)+len(l.GA)+len(l.GB)) }

// ScratchFloats is the most scratch one Forward or Backward of M rows
// takes: the (M, R) products, and with dropout the masked input and the
// input gradient through the mask.
func (l *Layer) ScratchFloats(M int) int {
	n := 2 * M * l.R
	if l.Dropout > 0 {
		n += 2 * M * l.In
	}
	return n
}

// UseScratch makes the calls that follow take their temporary buffers
// from buf (the model's step workspace, shared by all adapters: calls do
// not overlap); nil makes them allocate their own.
func (l *Layer) UseScratch(buf []float32) { l.scratch = buf }

// take returns n zeroed floats of the scratch after *off, or new ones when
// there is no scratch or it is too small.
func (l *Layer) take(off *int, n int) []float32 {
	if *off+n > len(l.scratch) {
		return make([]float32, n)
	}
	b := l.scratch[*off : *off+n]
	*off += n
	clear(b)
	return b
}

// dropped returns x with the step's dropout applied (x itself when off),
// in n floats taken at *off.
func (l *Layer) dropped(x []float32, M int, off *int) []float32 {
	if l.Dropout <= 0 {
		return x[:M*l.In]
	}
	out := l.take(off, M*l.In)
	l.drop(out, x)
	return out
}

// drop sets out to x·keep where the step's mask keeps an element and to 0
// where it drops it (out may be x).
func (l *Layer) drop(out, x []float32) {
	keep := 1 / (1 - l.Dropout)
	r := rand.New(rand.NewPCG(l.seed, l.id))
	th := uint32(float64(l.Dropout) * math.MaxUint32)
	for i := range out {
		if r.Uint32() >= th {
			out[i] = x[i] * keep
		} else {
			out[i] = 0
		}
	}
}

// Forward adds s·(x·Aᵀ)·Bᵀ to y.
func (l *Layer) Forward(y, x []float32, M int) {
	off := 0
	xd := l.dropped(x, M, &off)
	var h []float32
	if off+M*l.R <= len(l.scratch) {
		h = l.take(&off, M*l.R)
	} else {
		hp, _ := hPool.Get().(*[]float32)
		if hp == nil || cap(*hp) < M*l.R {
			b := make([]float32, M*l.R)
			hp = &b
		}
		defer hPool.Put(hp)
		h = (*hp)[:M*l.R]
	}
	kernels.MatMul(l.pool, h, xd, M, f32Matrix(l.A, l.R, l.In))
	for i := range h {
		h[i] *= l.Scale
	}
	kernels.GemmNT(l.pool, y[:M*l.Out], h, l.B, M, l.Out, l.R, true) // y += (s·h)·Bᵀ
}

// Backward accumulates dB += s·dyᵀh, dA += dhᵀx with dh = s·dy·B, and
// dx += dh·A (through the dropout mask).
func (l *Layer) Backward(dx, dy, x []float32, M int) {
	off := 0
	xd := l.dropped(x, M, &off)
	h := l.take(&off, M*l.R)
	kernels.MatMul(l.pool, h, xd, M, f32Matrix(l.A, l.R, l.In))
	s := l.Scale
	// dB (Out, R) += dyᵀ (Out, M) · (s·h) (M, R), one parallel GEMM.
	for i := range h {
		h[i] *= s
	}
	kernels.GemmTN(l.pool, l.GB, dy[:M*l.Out], h, l.Out, l.R, M)
	// dh (M, R) = s · dy · B
	dh := l.take(&off, M*l.R)
	kernels.MatMulT(l.pool, dh, dy, M, f32Matrix(l.B, l.Out, l.R))
	for i := range dh {
		dh[i] *= s
	}
	// dA (R, In) += dhᵀ (R, M) · xd (M, In)
	kernels.GemmTN(l.pool, l.GA, dh, xd[:M*l.In], l.R, l.In, M)
	if dx == nil {
		return
	}
	if l.Dropout <= 0 {
		kernels.MatMulT(l.pool, dx, dh, M, f32Matrix(l.A, l.R, l.In))
		return
	}
	t := l.take(&off, M*l.In)
	kernels.MatMulT(l.pool, t, dh, M, f32Matrix(l.A, l.R, l.In))
	l.drop(t, t) // through the mask: the same draws as xd's
	kernels.Axpy(dx[:M*l.In], 1, t)
}

// Config chooses where adapters go and how they start.
type Config struct {
	Rank    int
	Alpha   float64
	Dropout float64
	RSLoRA  bool
	Targets []model.Module // default: all seven linear layers
	// Layers adapts only the last Layers blocks (MLX-LM's --num-layers);
	// 0 or less means every block.
	Layers int
	Seed   uint64
	// Alloc, when set, gives the memory of the adapters' values (one call)
	// and of their gradients (a second call), n zeroed floats each, for
	// instance slabs of the model's accountant; nil takes the Go heap.
	Alloc func(n int, grads bool) ([]float32, error)
	// NoGrads leaves GA and GB nil: a zeroth-order method never computes
	// gradients (Backward must not be called).
	NoGrads bool
}

// ParseTargets reads a comma-separated list of module names (q,k,v,o,gate,
// up,down; "all" for every one; HF names like q_proj are accepted too, and
// Phi-3's fused qkv_proj and gate_up_proj stand for their parts).
func ParseTargets(s string) ([]model.Module, error) {
	if s == "" || s == "all" {
		return []model.Module{model.ModQ, model.ModK, model.ModV, model.ModO, model.ModGate, model.ModUp, model.ModDown}, nil
	}
	var out []model.Module
	seen := map[model.Module]bool{}
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSuffix(strings.TrimSpace(f), "_proj")
		// Phi-3's fused modules name their parts.
		switch f {
		case "qkv":
			f = "q,k,v"
		case "gate_up":
			f = "gate,up"
		}
		if strings.Contains(f, ",") {
			sub, err := ParseTargets(f)
			if err != nil {
				return nil, err
			}
			for _, m := range sub {
				if !seen[m] {
					out = append(out, m)
					seen[m] = true
				}
			}
			continue
		}
		found := false
		for i, n := range model.ModuleNames {
			if n == f {
				if !seen[model.Module(i)] {
					out = append(out, model.Module(i))
					seen[model.Module(i)] = true
				}
				found = true
			}
		}
		if !found {
			return nil, fmt.Errorf("lora: unknown target module %q (q, k, v, o, gate, up, down; qkv, gate_up; or their _proj names)", f)
		}
	}
	return out, nil
}

// Set is the adapters of a model.
type Set struct {
	Config Config
	Layers []*Layer          // in (layer, module) order
	ByPos  model.Adapters    // for model.StepOptions
	ByName map[string]*Layer // by target tensor name
	// grads is every layer's GA and GB in one allocation (with up to 15
	// floats of zero padding after each), nil without gradients; byBlock
	// is each model block's part of it (nil for a block without adapters).
	grads   []float32
	byBlock [][]float32
}

// Grads returns every gradient in one slice (each layer's GA and GB, in
// order, zero padding between them; BlockGrads are its pieces by model
// block); nil when the set has no gradients.
func (s *Set) Grads() []float32 { return s.grads }

// BlockGrads is the part of Grads that holds model block l's gradients (one
// contiguous piece: a data-parallel step sums it as soon as the backward
// pass is done with the block); nil when block l has no adapters or the set
// no gradients.
func (s *Set) BlockGrads(l int) []float32 {
	if l < 0 || l >= len(s.byBlock) {
		return nil
	}
	return s.byBlock[l]
}

// New creates adapters for m: A ~ U(−1/√in, 1/√in) (PEFT's default Kaiming
// uniform with a = √5), B = 0, so training starts from the base model.
func New(m *model.Model, c Config) (*Set, error) {
	if c.Rank <= 0 || c.Rank > 4096 {
		return nil, fmt.Errorf("lora: rank %d out of range", c.Rank)
	}
	if !(c.Alpha > 0) {
		return nil, fmt.Errorf("lora: alpha %g must be positive", c.Alpha)
	}
	if c.Dropout < 0 || c.Dropout >= 1 {
		return nil, fmt.Errorf("lora: dropout %g out of [0, 1)", c.Dropout)
	}
	if len(c.Targets) == 0 {
		c.Targets, _ = ParseTargets("all")
	}
	scale := c.Alpha / float64(c.Rank)
	if c.RSLoRA {
		scale = c.Alpha / math.Sqrt(float64(c.Rank))
	}
	nl := m.Config.Layers
	first := 0
	if c.Layers > 0 && c.Layers < nl {
		first = nl - c.Layers
	}
	s := &Set{Config: c, ByPos: make(model.Adapters, nl), ByName: map[string]*Layer{}}
	// Every A and B, then every gradient, in one buffer each, 64-byte
	// aligned pieces.
	n := 0
	for li := first; li < nl; li++ {
		for _, mod := range c.Targets {
			w := m.Layers[li].Matrix(mod)
			n += (c.Rank*w.Cols+15)&^15 + (w.Rows*c.Rank+15)&^15
		}
	}
	alloc := c.Alloc
	if alloc == nil {
		alloc = func(n int, _ bool) ([]float32, error) { return make([]float32, n), nil }
	}
	vals, err := alloc(n, false)
	if err != nil {
		return nil, fmt.Errorf("lora: adapters of %d values: %w", n, err)
	}
	var grads []float32
	if !c.NoGrads {
		if grads, err = alloc(n, true); err != nil {
			return nil, fmt.Errorf("lora: gradients of %d values: %w", n, err)
		}
	}
	s.grads = grads
	piece := func(k int) (v, g []float32) {
		v = vals[:k:k]
		if grads != nil {
			g = grads[:k:k]
		}
		k = min((k+15)&^15, len(vals))
		vals = vals[k:]
		if grads != nil {
			grads = grads[k:]
		}
		return v, g
	}
	r := rand.New(rand.NewPCG(c.Seed, 0x10a))
	if grads != nil {
		s.byBlock = make([][]float32, nl)
	}
	for li := first; li < nl; li++ {
		rest := grads
		for _, mod := range c.Targets {
			w := m.Layers[li].Matrix(mod)
			l := &Layer{Target: model.TensorName(li, mod), In: w.Cols, Out: w.Rows, R: c.Rank, Scale: float32(scale),
				Dropout: float32(c.Dropout), pool: m.Pool(), id: uint64(li)*16 + uint64(mod)}
			l.A, l.GA = piece(l.R * l.In)
			l.B, l.GB = piece(l.Out * l.R)
			bound := 1 / math.Sqrt(float64(l.In))
			for i := range l.A {
				l.A[i] = float32((2*r.Float64() - 1) * bound)
			}
			s.Layers = append(s.Layers, l)
			s.ByPos[li][mod] = l
			s.ByName[l.Target] = l
		}
		if rest != nil {
			s.byBlock[li] = rest[: len(rest)-len(grads) : len(rest)-len(grads)]
		}
	}
	return s, nil
}

// DropoutStream is the seed and stream id of the layer's dropout mask this
// step: element i of the (M, In) input is kept when the i-th Uint32 of
// rand.New(rand.NewPCG(seed, id)) is at least Dropout·(2³²−1) (what a
// device regenerates: model.GPULoRA.SetDropout).
func (l *Layer) DropoutStream() (seed, id uint64) { return l.seed, l.id }

// SetStep sets the dropout seed of the coming step.
func (s *Set) SetStep(step int) {
	for _, l := range s.Layers {
		l.seed = s.Config.Seed ^ uint64(step)*0x9e3779b97f4a7c15
	}
}

// Params returns the number of trainable parameters.
func (s *Set) Params() int64 {
	var n int64
	for _, l := range s.Layers {
		n += int64(len(l.A) + len(l.B))
	}
	return n
}

// AddDelta adds s·B·A to w, the layer's base weight as float32 (Out, In)
// in the model's row order: the merge of export --merge.
func (l *Layer) AddDelta(w []float32) {
	for o := 0; o < l.Out; o++ {
		row := w[o*l.In : (o+1)*l.In]
		for r := 0; r < l.R; r++ {
			if b := l.B[o*l.R+r]; b != 0 {
				kernels.Axpy(row, l.Scale*b, l.A[r*l.In:(r+1)*l.In])
			}
		}
	}
}

// Merge returns the model.Delta that folds the set into the base weights.
func (s *Set) Merge() model.Delta {
	return func(name string, f []float32) bool {
		l, ok := s.ByName[name]
		if !ok {
			return false
		}
		l.AddDelta(f)
		return true
	}
}
