package loreml

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"

	"github.com/qtune/qtune/budget"
	"github.com/qtune/qtune/model"
)

// Stage2WeightDecay is the AdamW weight decay of the sparse fine-tuning
// stage in the paper's scripts (methods.md §4.2 step 5).
const Stage2WeightDecay = 0.1

// Config chooses the adapted matrices and the two stages' shapes.
type Config struct {
	Rank    int     // R of the stage-1 scores
	Alpha   float64 // stage-1 scale α/R
	Dropout float64 // stage-1 dropout on the score path (0 in the paper)
	Targets []model.Module
	// Layers adapts only the last Layers blocks; 0 or less means every block.
	Layers    int
	Seed      uint64
	KeepRatio float64 // share of each matrix kept trainable in stage 2, (0, 1]
	WarmStart float64 // γ of the warm start γ·U·V, ≥ 0
	// Alloc gives stage 2's memory: each delta's indices and values (with
	// its gradient once AllocGrads is called), the warm start's copies, the
	// norms' gradients. Nil takes the Go heap.
	Alloc model.Alloc `json:"-"`
}

// check validates c and fills the default targets.
func (c *Config) check() error {
	switch {
	case c.Rank <= 0 || c.Rank > 4096:
		return fmt.Errorf("loreml: rank %d out of range", c.Rank)
	case !(c.Alpha > 0):
		return fmt.Errorf("loreml: alpha %g must be positive", c.Alpha)
	case !(c.KeepRatio > 0 && c.KeepRatio <= 1):
		return fmt.Errorf("loreml: keep ratio %g out of (0, 1]", c.KeepRatio)
	case !(c.WarmStart >= 0) || math.IsInf(c.WarmStart, 0):
		return fmt.Errorf("loreml: warm start γ = %g must be finite and ≥ 0", c.WarmStart)
	}
	if len(c.Targets) == 0 {
		c.Targets = []model.Module{model.ModQ, model.ModK, model.ModV, model.ModO, model.ModGate, model.ModUp, model.ModDown}
	}
	return nil
}

// firstLayer is the lowest adapted block.
func (c *Config) firstLayer(nl int) int {
	if c.Layers > 0 && c.Layers < nl {
		return nl - c.Layers
	}
	return 0
}

// Score is the stage-1 factors of one matrix: S = U·V (trained with the
// scale α/R, read without it). In training they are a LoRA layer's B (U) and
// A (V) (train/loreml.go builds them with methods/lora; this package does not
// import it: methods do not import each other).
type Score struct {
	Target  string // GGUF base tensor name
	Out, In int
	R       int
	U       []float32 // (Out, R)
	V       []float32 // (R, In)
}

// InitScores sets the initial factors (methods.md §4.1, the opposite of
// LoRA's initialisation): U Kaiming-uniform with a = √5 over fan-in R, i.e.
// U(−1/√R, 1/√R), and V zero, so S starts at zero and training starts from
// the base model. The draws depend on seed and the order of scores only.
func InitScores(seed uint64, scores []Score) {
	r := rand.New(rand.NewPCG(seed, 0x10e3))
	for _, s := range scores {
		bound := 1 / math.Sqrt(float64(s.R))
		clear(s.V)
		for i := range s.U {
			s.U[i] = float32((2*r.Float64() - 1) * bound)
		}
	}
}

// NewScores allocates and initialises the factors of every matrix c adapts
// in m, in (layer, module) order.
func NewScores(m *model.Model, c Config) ([]Score, error) {
	if err := c.check(); err != nil {
		return nil, err
	}
	var sc []Score
	for l := c.firstLayer(m.Config.Layers); l < m.Config.Layers; l++ {
		for _, mod := range c.Targets {
			w := m.Layers[l].Matrix(mod)
			sc = append(sc, Score{Target: model.TensorName(l, mod), Out: w.Rows, In: w.Cols, R: c.Rank,
				U: make([]float32, w.Rows*c.Rank), V: make([]float32, c.Rank*w.Cols)})
		}
	}
	InitScores(c.Seed, sc)
	return sc, nil
}

// Norm is one trainable RMSNorm weight. W aliases the model's own slice, so
// training it changes the model.
type Norm struct {
	Name string    // GGUF name, e.g. blk.0.attn_norm.weight
	W    []float32 // (C) the model's weight
	G    []float32 // (C) gradient; nil until AllocGrads
}

// Set is the stage-2 state: a Matrix adapter per adapted linear layer and
// the trainable norms.
type Set struct {
	Config   Config
	Matrices []*Matrix          // in (layer, module) order
	ByPos    model.Adapters     // for model.StepOptions and model.Model.Adapters
	ByName   map[string]*Matrix // by target tensor name
	Norms    []Norm
}

// Part is the stage-2 content of one matrix, as Build forms it or a file or
// checkpoint holds it.
type Part struct {
	Target  string
	Indices []int32   // (k) ascending flat row-major indices into (Out, In), model row order
	Values  []float32 // (k) Δ at Indices
	Rank    int       // R of the warm start; 0: none
	U, V    []float32 // (Out, R), (R, In) warm start factors; the term is Config.WarmStart·U·V
}

// locate finds the layer and module of a GGUF tensor name.
func locate(m *model.Model, target string) (int, model.Module, bool) {
	for l := 0; l < m.Config.Layers; l++ {
		for k := model.Module(0); k < model.NumModules; k++ {
			if model.TensorName(l, k) == target {
				return l, k, true
			}
		}
	}
	return 0, 0, false
}

// normSlot returns the model's slice for a norm tensor name.
func normSlot(m *model.Model, name string) []float32 {
	if name == "output_norm.weight" {
		return m.OutNorm
	}
	for l := range m.Layers {
		switch name {
		case fmt.Sprintf("blk.%d.attn_norm.weight", l):
			return m.Layers[l].AttnNorm
		case fmt.Sprintf("blk.%d.ffn_norm.weight", l):
			return m.Layers[l].FFNNorm
		}
	}
	return nil
}

// NormNames lists the norms stage 2 trains: those of the adapted blocks and
// the final norm.
func NormNames(m *model.Model, c Config) []string {
	var ns []string
	for l := c.firstLayer(m.Config.Layers); l < m.Config.Layers; l++ {
		ns = append(ns, fmt.Sprintf("blk.%d.attn_norm.weight", l), fmt.Sprintf("blk.%d.ffn_norm.weight", l))
	}
	return append(ns, "output_norm.weight")
}

// NewSet assembles a stage-2 set for m from its parts. norms maps norm
// tensor names to values that are copied into the model's norms, which
// become the set's (nil: the norms of NormNames, as the model has them now). Every part is checked against the
// model's shapes.
func NewSet(m *model.Model, c Config, parts []Part, norms map[string][]float32) (*Set, error) {
	s := &Set{Config: c, ByPos: make(model.Adapters, m.Config.Layers), ByName: map[string]*Matrix{}}
	for _, p := range parts {
		li, mod, ok := locate(m, p.Target)
		if !ok {
			return nil, fmt.Errorf("loreml: delta targets %q, which this model does not have", p.Target)
		}
		if s.ByName[p.Target] != nil {
			return nil, fmt.Errorf("loreml: %s appears twice", p.Target)
		}
		w := m.Layers[li].Matrix(mod)
		out, in := w.Rows, w.Cols
		if p.Values != nil && len(p.Values) != len(p.Indices) {
			return nil, fmt.Errorf("loreml: %s: %d indices but %d values", p.Target, len(p.Indices), len(p.Values))
		}
		for i, f := range p.Indices {
			if f < 0 || int64(f) >= int64(out)*int64(in) || (i > 0 && f <= p.Indices[i-1]) {
				return nil, fmt.Errorf("loreml: %s: index %d at %d is out of range or not ascending (matrix (%d, %d))", p.Target, f, i, out, in)
			}
		}
		if p.Rank > 0 && (len(p.U) != out*p.Rank || len(p.V) != p.Rank*in) {
			return nil, fmt.Errorf("loreml: %s: warm start of rank %d has %d and %d values for a (%d, %d) matrix", p.Target, p.Rank, len(p.U), len(p.V), out, in)
		}
		d, err := newSparse(out, in, p.Indices, p.Values, m.Pool(), c.Alloc)
		if err != nil {
			return nil, fmt.Errorf("loreml: %s: %w", p.Target, err)
		}
		a := &Matrix{Target: p.Target, Out: out, In: in, Delta: d}
		if p.Rank > 0 {
			uv, err := c.Alloc.Parts(budget.Trainable, len(p.U), len(p.V))
			if err != nil {
				return nil, fmt.Errorf("loreml: %s: warm start: %w", p.Target, err)
			}
			copy(uv[0], p.U)
			copy(uv[1], p.V)
			a.Warm = &LowRank{Out: out, In: in, R: p.Rank, Scale: float32(c.WarmStart), U: uv[0], V: uv[1], pool: m.Pool()}
		}
		s.Matrices = append(s.Matrices, a)
		s.ByPos[li][mod] = a
		s.ByName[p.Target] = a
	}
	if norms == nil {
		for _, n := range NormNames(m, c) {
			s.Norms = append(s.Norms, Norm{Name: n, W: normSlot(m, n)})
		}
		return s, nil
	}
	names := make([]string, 0, len(norms))
	for n := range norms {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		w := normSlot(m, n)
		if w == nil {
			return nil, fmt.Errorf("loreml: norm %q is not in this model", n)
		}
		if len(norms[n]) != len(w) {
			return nil, fmt.Errorf("loreml: norm %s has %d values, the model's %d", n, len(norms[n]), len(w))
		}
		s.Norms = append(s.Norms, Norm{Name: n, W: w})
	}
	for _, n := range s.Norms {
		copy(n.W, norms[n.Name])
	}
	return s, nil
}

// Build is the transition to stage 2: for each score it reads S = U·V
// (without α/R), keeps the top k = ⌊Out·In·KeepRatio⌋ of |S| as the mask of
// a zero sparse delta, and, when WarmStart > 0, keeps γ·U·V (copied) as a
// frozen term. The scores are not modified.
func Build(m *model.Model, c Config, scores []Score) (*Set, error) {
	if err := c.check(); err != nil {
		return nil, err
	}
	if len(scores) == 0 {
		return nil, errors.New("loreml: no stage-1 scores")
	}
	parts := make([]Part, 0, len(scores))
	for _, l := range scores {
		if len(l.U) != l.Out*l.R || len(l.V) != l.R*l.In {
			return nil, fmt.Errorf("loreml: scores of %s have %d and %d values for (%d, %d) rank %d", l.Target, len(l.U), len(l.V), l.Out, l.In, l.R)
		}
		idx := TopK(m.Pool(), l.U, l.V, l.Out, l.In, l.R, KeptEntries(l.Out, l.In, c.KeepRatio))
		p := Part{Target: l.Target, Indices: idx} // values: zero
		if c.WarmStart > 0 {
			p.Rank, p.U, p.V = l.R, l.U, l.V
		}
		parts = append(parts, p)
	}
	return NewSet(m, c, parts, nil)
}

// AllocGrads gives every kept entry and norm a zero gradient buffer (for
// training; a set applied for inference has none), all from one allocation
// of Config.Alloc.
func (s *Set) AllocGrads() error {
	var lens []int
	for _, a := range s.Matrices {
		if a.Delta.Grad == nil {
			lens = append(lens, a.Delta.K())
		}
	}
	for _, n := range s.Norms {
		if n.G == nil {
			lens = append(lens, len(n.W))
		}
	}
	if len(lens) == 0 {
		return nil
	}
	g, err := s.Config.Alloc.Parts(budget.Gradients, lens...)
	if err != nil {
		return fmt.Errorf("loreml: gradients: %w", err)
	}
	for _, a := range s.Matrices {
		if a.Delta.Grad == nil {
			a.Delta.Grad, g = g[0], g[1:]
		}
	}
	for i := range s.Norms {
		if s.Norms[i].G == nil {
			s.Norms[i].G, g = g[0], g[1:]
		}
	}
	return nil
}

// NormGrads maps each norm name to its gradient, the form
// model.StepOptions.WeightGrads takes.
func (s *Set) NormGrads() map[string][]float32 {
	g := make(map[string][]float32, len(s.Norms))
	for _, n := range s.Norms {
		if n.G != nil {
			g[n.Name] = n.G
		}
	}
	return g
}

// Kept is the number of kept (trainable) delta entries over all matrices.
func (s *Set) Kept() int64 {
	var k int64
	for _, a := range s.Matrices {
		k += int64(a.Delta.K())
	}
	return k
}

// NormValues is the number of trainable norm values.
func (s *Set) NormValues() int64 {
	var n int64
	for _, x := range s.Norms {
		n += int64(len(x.W))
	}
	return n
}

// Merge returns the model.Delta that folds the set into the base: γ·U·V + Δ
// added to each adapted matrix, the trained norms written over the file's.
func (s *Set) Merge() model.Delta {
	norms := map[string][]float32{}
	for _, n := range s.Norms {
		norms[n.Name] = n.W
	}
	return func(name string, f []float32) bool {
		if a, ok := s.ByName[name]; ok {
			a.AddTo(f)
			return true
		}
		if w, ok := norms[name]; ok && len(w) == len(f) {
			copy(f, w)
			return true
		}
		return false
	}
}

// Estimate is what the two stages keep, known before training.
type Estimate struct {
	Matrices    int   // adapted linear layers
	Weights     int64 // their entries
	ScoreParams int64 // stage 1: R·(Out+In) per matrix
	Kept        int64 // stage 2: Σ ⌊Out·In·keep⌋
	RowPtrs     int64 // stage 2: Σ (Out+1) CSR row offsets
	NormValues  int64 // stage 2: trainable norm values
}

// Plan computes the Estimate for m and c.
func Plan(m *model.Model, c Config) (Estimate, error) {
	if err := c.check(); err != nil {
		return Estimate{}, err
	}
	var e Estimate
	for l := c.firstLayer(m.Config.Layers); l < m.Config.Layers; l++ {
		for _, mod := range c.Targets {
			w := m.Layers[l].Matrix(mod)
			e.Matrices++
			e.Weights += int64(w.Rows) * int64(w.Cols)
			e.ScoreParams += int64(c.Rank) * int64(w.Rows+w.Cols)
			e.Kept += int64(KeptEntries(w.Rows, w.Cols, c.KeepRatio))
			e.RowPtrs += int64(w.Rows + 1)
		}
	}
	for _, n := range NormNames(m, c) {
		e.NormValues += int64(len(normSlot(m, n)))
	}
	return e, nil
}

// Stage2Bytes is the stage-2 memory besides the model for training: per kept
// entry a value, a gradient, two AdamW moments and an int32 column; the CSR
// row offsets; a gradient and two moments per norm value; and the frozen
// warm start (ScoreParams floats when γ > 0).
func (e Estimate) Stage2Bytes(warm bool) int64 {
	b := e.Kept*(4+4+8+4) + 4*e.RowPtrs + e.NormValues*(4+8)
	if warm {
		b += 4 * e.ScoreParams
	}
	return b
}
