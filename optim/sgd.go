package optim

import (
	"fmt"
	"slices"
	"strings"
)

// SGD is torch.optim.SGD with dampening 0. For a parameter with gradient g:
//
//	g  += wd*w                     (only when Param.Decay)
//	buf = g on the first step, else momentum*buf + g   (when Momentum != 0)
//	g   = g + momentum*buf if Nesterov, else buf       (when Momentum != 0)
//	w  -= lr*g
//
// The momentum buffer is allocated the first time a parameter is stepped,
// one float32 per weight; plain SGD (Momentum 0) keeps no state.
type SGD struct {
	Momentum, WeightDecay float64
	Nesterov              bool
	// Store, when set, holds the momentum buffers (as AdamW's moments);
	// nil keeps them on the heap.
	Store MomentStore

	buf map[string][]float32
}

func (o *SGD) alloc(n int) ([]float32, error) { return storeAlloc(o.Store, "sgd", n) }

// NewSGD returns an SGD optimizer.
func NewSGD(momentum, wd float64, nesterov bool) *SGD {
	return &SGD{Momentum: momentum, WeightDecay: wd, Nesterov: nesterov}
}

// Name returns "sgd".
func (o *SGD) Name() string { return "sgd" }

// StateBytes is 4 bytes per trainable value with momentum, 0 without.
func (o *SGD) StateBytes(numParams int64) int64 {
	if o.Momentum == 0 {
		return 0
	}
	return 4 * numParams
}

func (o *SGD) check() error {
	switch {
	case !finite(o.Momentum) || o.Momentum < 0:
		return fmt.Errorf("optim: sgd: momentum %v: must be finite and >= 0: %w", o.Momentum, ErrConfig)
	case !finite(o.WeightDecay) || o.WeightDecay < 0:
		return fmt.Errorf("optim: sgd: weight decay %v: must be finite and >= 0: %w", o.WeightDecay, ErrConfig)
	case o.Nesterov && o.Momentum == 0:
		return fmt.Errorf("optim: sgd: Nesterov momentum needs momentum > 0: %w", ErrConfig)
	}
	return nil
}

// Step applies one SGD update to every param with a non-nil gradient.
func (o *SGD) Step(params []*Param, lr float64) error {
	if err := o.check(); err != nil {
		return err
	}
	if err := checkLR("sgd", lr); err != nil {
		return err
	}
	if err := checkParams(params); err != nil {
		return err
	}
	for _, p := range params {
		if b, ok := o.buf[p.Name]; ok && p.G != nil && len(b) != len(p.W) {
			return fmt.Errorf("optim: sgd: param %q has %d values, its momentum buffer %d: %w",
				p.Name, len(p.W), len(b), ErrState)
		}
	}
	mom, wd := o.Momentum, o.WeightDecay
	if mom != 0 && o.buf == nil {
		o.buf = make(map[string][]float32)
	}
	// Buffers made before any update, so that a store that fails leaves
	// the parameters as they were.
	var fresh map[string]bool
	if mom != 0 {
		for _, p := range params {
			if p.G == nil || o.buf[p.Name] != nil {
				continue
			}
			b, err := o.alloc(len(p.W))
			if err != nil {
				return err
			}
			if fresh == nil {
				fresh = map[string]bool{}
			}
			o.buf[p.Name], fresh[p.Name] = b, true
		}
	}
	for _, p := range params {
		if p.G == nil {
			continue
		}
		var buf []float32
		first := false
		if mom != 0 {
			buf, first = o.buf[p.Name][:len(p.W)], fresh[p.Name]
		}
		w, g := p.W, p.G[:len(p.W)]
		for i := range w {
			gi := float64(g[i])
			if p.Decay {
				gi += wd * float64(w[i])
			}
			if mom != 0 {
				b := gi
				if !first {
					b = mom*float64(buf[i]) + gi
				}
				buf[i] = float32(b)
				if o.Nesterov {
					gi += mom * b
				} else {
					gi = b
				}
			}
			w[i] = float32(float64(w[i]) - lr*gi)
		}
	}
	return nil
}

const sgdMomentum = "sgd.momentum/"

// State returns one "sgd.momentum/<param>" tensor per parameter stepped with
// momentum, sorted by name. The slices alias the live state.
func (o *SGD) State() []StateTensor {
	out := make([]StateTensor, 0, len(o.buf))
	for name, b := range o.buf {
		out = append(out, StateTensor{Name: sgdMomentum + name, Data: b})
	}
	slices.SortFunc(out, func(a, b StateTensor) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// LoadState replaces the momentum buffers with copies of ts, as returned by
// State. On error the previous state is kept.
func (o *SGD) LoadState(ts []StateTensor) error {
	buf := make(map[string][]float32, len(ts))
	for _, x := range ts {
		name, ok := strings.CutPrefix(x.Name, sgdMomentum)
		if !ok || name == "" {
			return fmt.Errorf("optim: sgd: state %q: unknown name: %w", x.Name, ErrState)
		}
		if _, dup := buf[name]; dup {
			return fmt.Errorf("optim: sgd: state %q: duplicate: %w", x.Name, ErrState)
		}
		b, err := o.alloc(len(x.Data))
		if err != nil {
			return err
		}
		copy(b, x.Data)
		buf[name] = b
	}
	o.buf = buf
	return nil
}
