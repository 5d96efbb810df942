package optim

import (
	"fmt"
	"math"
	"runtime"
	"slices"
	"strings"
	"sync"
)

// AdamW is torch.optim.AdamW: Adam with decoupled weight decay (Loshchilov &
// Hutter). For a parameter at its step t (counted from 1), with gradient g:
//
//	w  -= lr*wd*w                      (only when Param.Decay)
//	m   = b1*m + (1-b1)*g
//	v   = b2*v + (1-b2)*g*g
//	w  -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)
//
// Moments are allocated the first time a parameter is stepped, two float32
// per weight. The zero value is not usable; call NewAdamW or set the four
// fields.
type AdamW struct {
	Beta1, Beta2, Eps, WeightDecay float64
	// Store, when set, holds the moments (for example in a file-backed
	// mapping, so they leave memory between steps); nil keeps them on the heap.
	Store MomentStore

	st map[string]*adamState
}

// MomentStore provides optimizer moment storage: Alloc returns n zeroed
// values; Evict is told when a parameter's moments are not needed until the
// next step, so a store backed by a file can drop them from memory.
type MomentStore interface {
	Alloc(n int) ([]float32, error)
	Evict(v []float32)
}

func (o *AdamW) alloc(n int) ([]float32, error) { return storeAlloc(o.Store, "adamw", n) }

// storeAlloc is n zeroed values from s, or from the heap when s is nil.
func storeAlloc(s MomentStore, opt string, n int) ([]float32, error) {
	if s == nil {
		return make([]float32, n), nil
	}
	v, err := s.Alloc(n)
	if err != nil {
		return nil, fmt.Errorf("optim: %s: moment store: %w", opt, err)
	}
	return v, nil
}

// copyOf is a copy of v in the moment store's memory.
func (o *AdamW) copyOf(v []float32) ([]float32, error) {
	if len(v) == 0 {
		return []float32{}, nil
	}
	c, err := o.alloc(len(v))
	if err != nil {
		return nil, err
	}
	copy(c, v)
	return c, nil
}

type adamState struct {
	m, v []float32 // (n) first and second moments
	t    int64     // steps taken by this parameter
}

// NewAdamW returns an AdamW optimizer. torch's defaults are
// NewAdamW(0.9, 0.999, 1e-8, 0.01).
func NewAdamW(beta1, beta2, eps, wd float64) *AdamW {
	return &AdamW{Beta1: beta1, Beta2: beta2, Eps: eps, WeightDecay: wd}
}

// Name returns "adamw".
func (o *AdamW) Name() string { return "adamw" }

// StateBytes is 8 bytes per trainable value (two float32 moments).
func (o *AdamW) StateBytes(numParams int64) int64 { return 8 * numParams }

func (o *AdamW) check() error {
	switch {
	case !(o.Beta1 >= 0 && o.Beta1 < 1):
		return fmt.Errorf("optim: adamw: beta1 %v: must be in [0, 1): %w", o.Beta1, ErrConfig)
	case !(o.Beta2 >= 0 && o.Beta2 < 1):
		return fmt.Errorf("optim: adamw: beta2 %v: must be in [0, 1): %w", o.Beta2, ErrConfig)
	case !finite(o.Eps) || o.Eps < 0:
		return fmt.Errorf("optim: adamw: eps %v: must be finite and >= 0: %w", o.Eps, ErrConfig)
	case !finite(o.WeightDecay) || o.WeightDecay < 0:
		return fmt.Errorf("optim: adamw: weight decay %v: must be finite and >= 0: %w", o.WeightDecay, ErrConfig)
	}
	return nil
}

// Step applies one AdamW update to every param with a non-nil gradient.
func (o *AdamW) Step(params []*Param, lr float64) error {
	if err := o.check(); err != nil {
		return err
	}
	if err := checkLR("adamw", lr); err != nil {
		return err
	}
	if err := checkParams(params); err != nil {
		return err
	}
	for _, p := range params {
		if s, ok := o.st[p.Name]; ok && p.G != nil && len(s.m) != len(p.W) {
			return fmt.Errorf("optim: adamw: param %q has %d values, its state %d: %w",
				p.Name, len(p.W), len(s.m), ErrState)
		}
	}
	if o.st == nil {
		o.st = make(map[string]*adamState)
	}
	b1, b2, eps := o.Beta1, o.Beta2, o.Eps
	for _, p := range params {
		if p.G == nil {
			continue
		}
		s := o.st[p.Name]
		if s == nil {
			m, err := o.alloc(len(p.W))
			if err != nil {
				return err
			}
			v, err := o.alloc(len(p.W))
			if err != nil {
				return err
			}
			s = &adamState{m: m, v: v}
			o.st[p.Name] = s
		}
		s.t++
		t := float64(s.t)
		stepSize := lr / (1 - math.Pow(b1, t))
		sqrtBC2 := math.Sqrt(1 - math.Pow(b2, t))
		decay := 1.0
		if p.Decay {
			decay = 1 - lr*o.WeightDecay
		}
		w, g, m, v := p.W, p.G[:len(p.W)], s.m[:len(p.W)], s.v[:len(p.W)]
		spread(len(w), func(lo, hi int) {
			for i := lo; i < hi; i++ {
				gi := float64(g[i])
				mi := b1*float64(m[i]) + (1-b1)*gi
				vi := b2*float64(v[i]) + (1-b2)*gi*gi
				m[i], v[i] = float32(mi), float32(vi)
				wi := float64(w[i]) * decay
				w[i] = float32(wi - stepSize*mi/(math.Sqrt(vi)/sqrtBC2+eps))
			}
		})
		if o.Store != nil {
			o.Store.Evict(s.m)
			o.Store.Evict(s.v)
		}
	}
	return nil
}

// Slot returns parameter name's moments (n values each) and step count,
// made zero (step 0) when it has none: the live state, for a device that
// steps the parameter itself and copies its moments here before they are
// saved. A state of another length is refused.
func (o *AdamW) Slot(name string, n int) (m, v []float32, t *int64, err error) {
	if o.st == nil {
		o.st = make(map[string]*adamState)
	}
	s := o.st[name]
	if s == nil {
		if m, err = o.alloc(n); err != nil {
			return nil, nil, nil, err
		}
		if v, err = o.alloc(n); err != nil {
			return nil, nil, nil, err
		}
		s = &adamState{m: m, v: v}
		o.st[name] = s
	}
	if len(s.m) != n || len(s.v) != n {
		return nil, nil, nil, fmt.Errorf("optim: adamw: param %q has %d values, its state %d: %w", name, n, len(s.m), ErrState)
	}
	return s.m, s.v, &s.t, nil
}

// spread runs f over [0, n) in one piece, or for large n in a piece per
// processor at once: an element-wise update gives the same bits either
// way. (A GPU run steps millions of adapter values on the host each
// iteration; one core takes tens of milliseconds for them.)
func spread(n int, f func(lo, hi int)) {
	const minChunk = 1 << 16
	k := min(runtime.GOMAXPROCS(0), n/minChunk)
	if k <= 1 {
		f(0, n)
		return
	}
	var wg sync.WaitGroup
	for j := 0; j < k; j++ {
		lo, hi := j*n/k, (j+1)*n/k
		wg.Go(func() { f(lo, hi) })
	}
	wg.Wait()
}

const (
	adamM    = "adamw.m/"
	adamV    = "adamw.v/"
	adamStep = "adamw.step/"
)

// State returns, for each parameter stepped so far, its "adamw.m/",
// "adamw.v/" and "adamw.step/" tensors, sorted by name. The moment slices
// alias the live state.
func (o *AdamW) State() []StateTensor {
	out := make([]StateTensor, 0, 3*len(o.st))
	for name, s := range o.st {
		out = append(out,
			StateTensor{Name: adamM + name, Data: s.m},
			StateTensor{Name: adamV + name, Data: s.v},
			StateTensor{Name: adamStep + name, Data: encodeCount(s.t)})
	}
	slices.SortFunc(out, func(a, b StateTensor) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// LoadState replaces the state with copies of ts, as returned by State. Every
// parameter needs all three tensors, with moments of equal length. On error
// the previous state is kept.
func (o *AdamW) LoadState(ts []StateTensor) (err error) {
	st := make(map[string]*adamState)
	get := func(name string) *adamState {
		s := st[name]
		if s == nil {
			s = &adamState{t: -1}
			st[name] = s
		}
		return s
	}
	for _, x := range ts {
		var s *adamState
		switch {
		case strings.HasPrefix(x.Name, adamM) && len(x.Name) > len(adamM):
			if s = get(x.Name[len(adamM):]); s.m != nil {
				return fmt.Errorf("optim: adamw: state %q: duplicate: %w", x.Name, ErrState)
			}
			if s.m, err = o.copyOf(x.Data); err != nil {
				return err
			}
		case strings.HasPrefix(x.Name, adamV) && len(x.Name) > len(adamV):
			if s = get(x.Name[len(adamV):]); s.v != nil {
				return fmt.Errorf("optim: adamw: state %q: duplicate: %w", x.Name, ErrState)
			}
			if s.v, err = o.copyOf(x.Data); err != nil {
				return err
			}
		case strings.HasPrefix(x.Name, adamStep) && len(x.Name) > len(adamStep):
			if s = get(x.Name[len(adamStep):]); s.t >= 0 {
				return fmt.Errorf("optim: adamw: state %q: duplicate: %w", x.Name, ErrState)
			}
			t, ok := decodeCount(x.Data)
			if !ok {
				return fmt.Errorf("optim: adamw: state %q: not a step count: %w", x.Name, ErrState)
			}
			s.t = t
		default:
			return fmt.Errorf("optim: adamw: state %q: unknown name: %w", x.Name, ErrState)
		}
	}
	for name, s := range st {
		switch {
		case s.m == nil || s.v == nil || s.t < 0:
			return fmt.Errorf("optim: adamw: state of %q: needs m, v and step: %w", name, ErrState)
		case len(s.m) != len(s.v):
			return fmt.Errorf("optim: adamw: state of %q: m has %d values, v %d: %w", name, len(s.m), len(s.v), ErrState)
		}
	}
	if o.Store != nil { // the moments are the store's (copyOf): out of memory until used
		for _, s := range st {
			o.Store.Evict(s.m)
			o.Store.Evict(s.v)
		}
	}
	o.st = st
	return nil
}

// encodeCount stores a step count exactly in two float32 values (each below
// 2^24, where float32 holds every integer).
func encodeCount(t int64) []float32 {
	return []float32{float32(t >> 24), float32(t & (1<<24 - 1))}
}

func decodeCount(d []float32) (int64, bool) {
	if len(d) != 2 {
		return 0, false
	}
	for _, x := range d {
		if !(x >= 0 && x < 1<<24) || x != float32(math.Trunc(float64(x))) {
			return 0, false
		}
	}
	return int64(d[0])<<24 | int64(d[1]), true
}
