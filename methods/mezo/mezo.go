package mezo

import (
	"errors"
	"fmt"
	"math"

	"github.com/qtune/qtune/kernels"
)

// Tensor is one trainable float32 tensor, updated in place.
type Tensor struct {
	Name  string    // stable name (checkpoints, files)
	Data  []float32 // (n) the live values the model reads
	Decay bool      // weight decay applies (false for norms and scales)
	Shape []int     // for files; nil means (len(Data))
	// Mask, when set, clears z at the entries of Data that are not
	// trainable (z[i] stands for Data[off+i]); it is called on every draw,
	// so perturbations and updates leave those entries alone (LoHO-intra's
	// zeroth-order part, the complement of the first-order mask).
	Mask func(off int, z []float32)
}

// Config is the SPSA estimator and its update.
type Config struct {
	Epsilon     float64 // perturbation scale ε
	LR          float64 // step size η (constant in MeZO and LoHO)
	WeightDecay float64 // λ, applied to tensors with Decay
	N           int     // perturbations per step (n-SPSA); ≥ 1
	Seed        uint64  // run seed; draw seeds derive from (Seed, step, i)
}

// ErrConfig marks an invalid configuration.
var ErrConfig = errors.New("invalid MeZO configuration")

// Validate checks the configuration.
func (c Config) Validate() error {
	switch {
	case !(c.Epsilon > 0) || math.IsInf(c.Epsilon, 0):
		return fmt.Errorf("mezo: %w: epsilon %g must be positive", ErrConfig, c.Epsilon)
	case !(c.LR >= 0) || math.IsInf(c.LR, 0):
		return fmt.Errorf("mezo: %w: learning rate %g", ErrConfig, c.LR)
	case !(c.WeightDecay >= 0) || math.IsInf(c.WeightDecay, 0):
		return fmt.Errorf("mezo: %w: weight decay %g", ErrConfig, c.WeightDecay)
	case c.N < 1 || c.N > 1<<16:
		return fmt.Errorf("mezo: %w: %d perturbations per step", ErrConfig, c.N)
	}
	return nil
}

// chunk is a piece of one tensor that one worker perturbs.
type chunk struct{ t, lo, hi int }

// chunkLen is the elements per parallel piece (even, so pieces start on a
// Box–Muller pair).
const chunkLen = 1 << 14

// SPSA is MeZO's estimator over a fixed, ordered list of tensors. The order
// is part of the random stream: tensor i always draws z from index i.
type SPSA struct {
	Config  Config
	Tensors []Tensor

	pool   *kernels.Pool
	chunks []chunk
	zlen   int // longest chunk: the size of a worker's z buffer
}

// New returns an estimator over ts (the slice order is the tensor index).
// pool may be nil (kernels.Default()).
func New(ts []Tensor, c Config, pool *kernels.Pool) (*SPSA, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if len(ts) == 0 {
		return nil, errors.New("mezo: nothing to train")
	}
	if pool == nil {
		pool = kernels.Default()
	}
	s := &SPSA{Config: c, Tensors: ts, pool: pool}
	for i, t := range ts {
		for lo := 0; lo < len(t.Data); lo += chunkLen {
			hi := min(lo+chunkLen, len(t.Data))
			s.chunks = append(s.chunks, chunk{i, lo, hi})
			s.zlen = max(s.zlen, hi-lo)
		}
	}
	return s, nil
}

// Params is the number of trainable values.
func (s *SPSA) Params() int64 {
	var n int64
	for _, t := range s.Tensors {
		n += int64(len(t.Data))
	}
	return n
}

// apply runs p ← a·p + c·z(seed) over every tensor (a = 1 for tensors
// without decay), chunk-parallel. z lives only in a per-chunk buffer.
func (s *SPSA) apply(seed uint64, c, a float32) {
	s.pool.Parallel(len(s.chunks), 1, func(lo, hi int) {
		z := make([]float32, s.zlen)
		for _, ch := range s.chunks[lo:hi] {
			s.applyChunk(ch, z, seed, c, a)
		}
	})
}

// applyChunk is apply over one chunk, z its scratch.
func (s *SPSA) applyChunk(ch chunk, z []float32, seed uint64, c, a float32) {
	t := s.Tensors[ch.t]
	p := t.Data[ch.lo:ch.hi]
	zz := z[:len(p)]
	Normal(zz, seed, ch.t, ch.lo)
	if t.Mask != nil {
		t.Mask(ch.lo, zz)
	}
	if a != 1 && t.Decay {
		for i := range p {
			p[i] = a*p[i] + c*zz[i]
		}
	} else {
		kernels.Axpy(p, c, zz)
	}
}

// Perturb adds c·z(seed) to every tensor in place.
func (s *SPSA) Perturb(seed uint64, c float64) { s.apply(seed, float32(c), 1) }

// PerturbTensor adds c·z(seed) to tensor i alone: the part of Perturb that
// falls on it (a GPU run perturbs the tensors the device holds there).
func (s *SPSA) PerturbTensor(i int, seed uint64, c float64) {
	z := make([]float32, s.zlen)
	for _, ch := range s.chunks {
		if ch.t == i {
			s.applyChunk(ch, z, seed, float32(c), 1)
		}
	}
}

// Draw is one perturbation of a step.
type Draw struct {
	Seed        uint64
	Plus, Minus float64 // L(θ+εz), L(θ−εz)
	G           float64 // projected gradient (Plus − Minus)/2ε
}

// Estimate runs the n perturbations of step (1-based) without changing θ
// (beyond float rounding): for each draw, +ε, evaluate, −2ε, evaluate, +ε.
// loss evaluates the objective at the current parameters (no gradients).
func (s *SPSA) Estimate(step int, loss func() (float64, error)) ([]Draw, error) {
	return s.EstimateWith(step, loss, nil)
}

// Perturber adds c·z(seed) to the parameters the loss reads, wherever they
// live: nil is the host tensors (Perturb); a GPU run passes one that
// regenerates the same z on the device (tensor i keyed TensorKey(seed, i))
// over its copies of the tensors.
type Perturber func(seed uint64, c float64) error

// EstimateWith is Estimate with the perturbations made by perturb.
func (s *SPSA) EstimateWith(step int, loss func() (float64, error), perturb Perturber) ([]Draw, error) {
	if perturb == nil {
		perturb = func(seed uint64, c float64) error { s.Perturb(seed, c); return nil }
	}
	eps := s.Config.Epsilon
	ds := make([]Draw, s.Config.N)
	for i := range ds {
		d := &ds[i]
		d.Seed = DrawSeed(s.Config.Seed, step, i)
		if err := perturb(d.Seed, eps); err != nil {
			return nil, fmt.Errorf("mezo: step %d: %w", step, err)
		}
		var err error
		if d.Plus, err = loss(); err != nil {
			perturb(d.Seed, -eps)
			return nil, fmt.Errorf("mezo: step %d: %w", step, err)
		}
		if err := perturb(d.Seed, -2*eps); err != nil {
			return nil, fmt.Errorf("mezo: step %d: %w", step, err)
		}
		d.Minus, err = loss()
		if perr := perturb(d.Seed, eps); err == nil && perr != nil {
			err = perr
		}
		if err != nil {
			return nil, fmt.Errorf("mezo: step %d: %w", step, err)
		}
		d.G = (d.Plus - d.Minus) / (2 * eps)
		if math.IsNaN(d.G) || math.IsInf(d.G, 0) {
			return nil, fmt.Errorf("mezo: step %d: projected gradient is %v", step, d.G)
		}
	}
	return ds, nil
}

// Update applies p ← p − (η/n)·Σᵢ gᵢ·zᵢ − η·λ·p (decay once, on tensors
// with Decay), regenerating each zᵢ from its seed.
func (s *SPSA) Update(ds []Draw) {
	s.UpdateWith(ds, func(seed uint64, c, a float64) error {
		s.apply(seed, float32(c), float32(a))
		return nil
	})
}

// UpdateWith is Update with each draw's p ← a·p + c·z(seed) made by apply,
// wherever the tensors live (a applies to the tensors with Decay only; it
// is 1 after the first draw).
func (s *SPSA) UpdateWith(ds []Draw, apply func(seed uint64, c, a float64) error) error {
	eta := s.Config.LR
	n := float64(len(ds))
	for i, d := range ds {
		a := 1.0
		if i == 0 && s.Config.WeightDecay > 0 {
			a = 1 - eta*s.Config.WeightDecay
		}
		if err := apply(d.Seed, -eta*d.G/n, a); err != nil {
			return fmt.Errorf("mezo: update: %w", err)
		}
	}
	return nil
}

// Step is Estimate followed by Update: one MeZO step.
func (s *SPSA) Step(step int, loss func() (float64, error)) ([]Draw, error) {
	ds, err := s.Estimate(step, loss)
	if err != nil {
		return nil, err
	}
	s.Update(ds)
	return ds, nil
}
