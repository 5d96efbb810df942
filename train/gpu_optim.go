package train

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/qtune/qtune/kernels/cuda"
	"github.com/qtune/qtune/optim"
)

// devOptim is AdamW on the device for a LoRA run: each factor's moments
// live beside it there, the gradients are clipped and applied there and
// never copied back, and the factors are not copied over each step. The
// host's values, moments and step counts (optim.AdamW.Slot) are refreshed
// only before they are read (a save); a resumed run's are copied over at
// the next step.
type devOptim struct {
	opt   *optim.AdamW
	slots []devSlot
	part  *cuda.Buffer // clipping's partial sums: SumSquaresBlocks float64 per slot
	// hostNewer: the host's values and moments are the ones to use (the
	// first step, a resume): copied over before the next step. devNewer:
	// the device's are newer (a step ran), copied back before a save.
	hostNewer, devNewer bool
}

// devSlot is one trained factor: the host's parameter, its moments and
// step count there (resolved when copied over), and the device's copies.
type devSlot struct {
	p          *optim.Param
	hm, hv     []float32
	t          *int64
	w, g, m, v *cuda.Buffer
}

// deviceOptimizer says whether a run's optimizer steps on the device: a
// LoRA run (lora, qlora) with AdamW whose moments stay in memory, on one
// process (data-parallel ranks sum their gradients on the host).
func deviceOptimizer(meth Method, cfg Config, onDisk bool) (*loraMethod, *optim.AdamW) {
	l, ok := meth.(*loraMethod)
	if !ok || onDisk || cfg.parallel() != nil {
		return nil, nil
	}
	a, ok := l.opt.(*optim.AdamW)
	if !ok {
		return nil, nil
	}
	return l, a
}

// newDevOptim makes the device side of l's optimizer: moments (zero) for
// each factor of r's pairs.
func newDevOptim(r *gpuRun, l *loraMethod, a *optim.AdamW) (*devOptim, error) {
	o := &devOptim{opt: a, hostNewer: true}
	by := map[string]*optim.Param{}
	for _, p := range l.params {
		by[p.Name] = p
	}
	for _, pr := range r.pairs {
		for _, f := range []struct {
			suffix string
			w, g   *cuda.Buffer
		}{{".lora_a", pr.dev.A, pr.dev.GA}, {".lora_b", pr.dev.B, pr.dev.GB}} {
			p := by[pr.cpu.Target+f.suffix]
			if p == nil {
				return nil, fmt.Errorf("train: %s%s is not a parameter of the run", pr.cpu.Target, f.suffix)
			}
			m, err := r.d.Alloc(4 * int64(len(p.W)))
			if err != nil {
				return nil, err
			}
			v, err := r.d.Alloc(4 * int64(len(p.W)))
			if err != nil {
				m.Free()
				return nil, err
			}
			o.slots = append(o.slots, devSlot{p: p, w: f.w, g: f.g, m: m, v: v})
		}
	}
	var err error
	if o.part, err = r.d.Alloc(8 * int64(max(len(o.slots), 1)*cuda.SumSquaresBlocks)); err != nil {
		o.free()
		return nil, err
	}
	return o, nil
}

// devOptimBytes is what newDevOptim allocates for n trained values in k
// factors.
func devOptimBytes(n int64, k int) int64 { return 8*n + 8*int64(max(k, 1)*cuda.SumSquaresBlocks) }

func (o *devOptim) free() {
	for _, s := range o.slots {
		s.m.Free()
		s.v.Free()
	}
	if o.part != nil {
		o.part.Free()
	}
	o.slots, o.part = nil, nil
}

// pushNow copies the host's values and moments over when they are newer
// (on the device's thread). The moments are made here at the first step,
// as the host's optimizer makes them, in the memory the plan booked.
func (o *devOptim) pushNow() error {
	if !o.hostNewer {
		return nil
	}
	for i := range o.slots {
		s := &o.slots[i]
		var err error
		if s.hm, s.hv, s.t, err = o.opt.Slot(s.p.Name, len(s.p.W)); err != nil {
			return err
		}
	}
	if err := copyOver(o.pairs()); err != nil {
		return err
	}
	o.hostNewer, o.devNewer = false, false
	return nil
}

// pairs are the host's and the device's copies of each factor and its
// moments.
func (o *devOptim) pairs() []floatPair {
	ps := make([]floatPair, 0, 3*len(o.slots))
	for _, s := range o.slots {
		ps = append(ps, floatPair{host: s.p.W, dev: s.w}, floatPair{host: s.hm, dev: s.m}, floatPair{host: s.hv, dev: s.v})
	}
	return ps
}

// step clips the device's gradients to a global norm of maxNorm (≤ 0: no
// clipping; optim.ClipGradNorm's factor) and applies one AdamW step at lr
// (optim.AdamW.Step's arithmetic, the AdamW kernel).
func (o *devOptim) step(d *cuda.Device, lr, maxNorm float64) error {
	if !(lr >= 0) || math.IsInf(lr, 0) {
		return fmt.Errorf("optim: adamw: learning rate %v: %w", lr, optim.ErrConfig)
	}
	return d.Batch(func() error {
		if maxNorm > 0 {
			for i, s := range o.slots {
				if err := d.SumSquares(o.part, i*cuda.SumSquaresBlocks, s.g, int64(len(s.p.W))); err != nil {
					return err
				}
			}
			raw := make([]byte, 8*len(o.slots)*cuda.SumSquaresBlocks)
			if err := o.part.Read(raw, 0); err != nil {
				return err
			}
			var ss float64
			for i := 0; i < len(raw); i += 8 {
				ss += math.Float64frombits(binary.LittleEndian.Uint64(raw[i:]))
			}
			norm := math.Sqrt(ss)
			if coef := maxNorm / (norm + 1e-6); !math.IsNaN(norm) && !math.IsInf(norm, 0) && coef < 1 {
				for _, s := range o.slots {
					if err := d.Scale(s.g, float32(coef), int64(len(s.p.W))); err != nil {
						return err
					}
				}
			}
		}
		a := o.opt
		for _, s := range o.slots {
			*s.t++
			t := float64(*s.t)
			decay := 1.0
			if s.p.Decay {
				decay = 1 - lr*a.WeightDecay
			}
			if err := d.AdamW(s.w, s.g, s.m, s.v, int64(len(s.p.W)), a.Beta1, a.Beta2, a.Eps,
				lr/(1-math.Pow(a.Beta1, t)), math.Sqrt(1-math.Pow(a.Beta2, t)), decay); err != nil {
				return err
			}
		}
		o.devNewer = true
		return nil
	})
}

// pull copies the device's values and moments back to the host when they
// are newer.
func (o *devOptim) pull(d *cuda.Device) error {
	if o == nil || !o.devNewer {
		return nil
	}
	if err := copyBack(d, "the adapters and their moments", o.pairs()); err != nil {
		return err
	}
	o.devNewer = false
	return nil
}
