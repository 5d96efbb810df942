package optim

import (
	"errors"
	"math"
	"slices"
	"testing"
)

// grad returns a deterministic gradient value for parameter element i at
// step t (1-based), with mixed signs and magnitudes.
func grad(t, i int) float64 {
	return math.Sin(float64(3*t+7*i+1)) * math.Pow(10, float64((i%5)-2))
}

func newParams() []*Param {
	return []*Param{
		{Name: "a.lora_a", W: []float32{0.5, -1.25, 2, 0.001, -3, 0.75, 0, 1e-4}, Decay: true},
		{Name: "norm.weight", W: []float32{1, 1.5, -0.5}, Decay: false},
	}
}

// setGrads fills every gradient for step t from grad.
func setGrads(ps []*Param, t int) {
	for pi, p := range ps {
		if p.G == nil {
			p.G = make([]float32, len(p.W))
		}
		for i := range p.G {
			p.G[i] = float32(grad(t, i+10*pi))
		}
	}
}

func closeRel(got float32, want, rel float64) bool {
	d := math.Abs(float64(got) - want)
	return d <= rel*math.Max(math.Abs(want), 1e-3)
}

// TestAdamWFirstStepsByHand checks two steps of one scalar against numbers
// worked out by hand from torch's AdamW formulas.
func TestAdamWFirstStepsByHand(t *testing.T) {
	p := &Param{Name: "w", W: []float32{1}, G: []float32{0.5}, Decay: true}
	o := NewAdamW(0.9, 0.999, 1e-8, 0.01)
	if err := o.Step([]*Param{p}, 0.1); err != nil {
		t.Fatal(err)
	}
	// Step 1: m̂ = g, v̂ = g², so w = 1*(1-0.1*0.01) - 0.1*0.5/(0.5+1e-8).
	if want := 0.999 - 0.1*0.5/(0.5+1e-8); !closeRel(p.W[0], want, 1e-7) {
		t.Fatalf("step 1: w = %.9g, want %.9g", p.W[0], want)
	}
	p.G[0] = -0.25
	if err := o.Step([]*Param{p}, 0.1); err != nil {
		t.Fatal(err)
	}
	// Step 2 by hand: m = 0.9*0.05 + 0.1*(-0.25) = 0.02,
	// v = 0.999*0.00025 + 0.001*0.0625 = 0.00031225,
	// w = w1*0.999 - 0.1/0.19 * 0.02 / (sqrt(0.00031225)/sqrt(0.001999) + 1e-8).
	w1 := float64(float32(0.999 - 0.1*0.5/(0.5+1e-8)))
	want := w1*0.999 - 0.1/0.19*0.02/(math.Sqrt(0.00031225)/math.Sqrt(0.001999)+1e-8)
	if !closeRel(p.W[0], want, 1e-6) || math.Abs(want-0.87147) > 1e-4 {
		t.Fatalf("step 2: w = %.9g, want %.9g (≈0.87147)", p.W[0], want)
	}
}

// refAdamW is torch.optim.AdamW written out in float64, one scalar at a time.
type refAdamW struct {
	w, m, v []float64
	t       int
}

func (r *refAdamW) step(g []float64, lr, b1, b2, eps, wd float64, decay bool) {
	r.t++
	for i := range r.w {
		if decay {
			r.w[i] *= 1 - lr*wd
		}
		r.m[i] = b1*r.m[i] + (1-b1)*g[i]
		r.v[i] = b2*r.v[i] + (1-b2)*g[i]*g[i]
		bc1 := 1 - math.Pow(b1, float64(r.t))
		bc2 := 1 - math.Pow(b2, float64(r.t))
		denom := math.Sqrt(r.v[i])/math.Sqrt(bc2) + eps
		r.w[i] -= lr / bc1 * r.m[i] / denom
	}
}

func TestAdamWMatchesTorchFormula(t *testing.T) {
	const b1, b2, eps, wd = 0.9, 0.95, 1e-6, 0.1
	ps := newParams()
	refs := make([]*refAdamW, len(ps))
	for i, p := range ps {
		refs[i] = &refAdamW{w: f64(p.W), m: make([]float64, len(p.W)), v: make([]float64, len(p.W))}
	}
	o := NewAdamW(b1, b2, eps, wd)
	sched := Schedule{Kind: Cosine, Peak: 1e-2, Warmup: 3, Total: 30}
	for step := 0; step < 30; step++ {
		setGrads(ps, step+1)
		lr := sched.LR(step)
		if err := o.Step(ps, lr); err != nil {
			t.Fatal(err)
		}
		for i, p := range ps {
			refs[i].step(f64(p.G), lr, b1, b2, eps, wd, p.Decay)
		}
	}
	for i, p := range ps {
		for j := range p.W {
			if !closeRel(p.W[j], refs[i].w[j], 2e-5) {
				t.Errorf("%s[%d] = %.9g, want %.9g", p.Name, j, p.W[j], refs[i].w[j])
			}
		}
	}
	// The norm parameter (Decay false) must differ from a decayed run.
	ps2 := newParams()
	for _, p := range ps2 {
		p.Decay = true
	}
	o2 := NewAdamW(b1, b2, eps, wd)
	for step := 0; step < 30; step++ {
		setGrads(ps2, step+1)
		_ = o2.Step(ps2, sched.LR(step))
	}
	if slices.Equal(ps[1].W, ps2[1].W) {
		t.Error("Decay=false gave the same weights as Decay=true")
	}
}

func f64(x []float32) []float64 {
	out := make([]float64, len(x))
	for i, v := range x {
		out[i] = float64(v)
	}
	return out
}

// refSGD is torch.optim.SGD (dampening 0) in float64.
type refSGD struct {
	w, buf []float64
	first  bool
}

func (r *refSGD) step(g []float64, lr, mom, wd float64, nesterov, decay bool) {
	for i := range r.w {
		d := g[i]
		if decay {
			d += wd * r.w[i]
		}
		if mom != 0 {
			if r.first {
				r.buf[i] = d
			} else {
				r.buf[i] = mom*r.buf[i] + d
			}
			if nesterov {
				d += mom * r.buf[i]
			} else {
				d = r.buf[i]
			}
		}
		r.w[i] -= lr * d
	}
	r.first = false
}

func TestSGDMatchesTorchFormula(t *testing.T) {
	for _, c := range []struct {
		name          string
		mom, wd       float64
		nesterov      bool
		wantStateSize int
	}{
		{"plain", 0, 0, false, 0},
		{"decay", 0, 0.05, false, 0},
		{"momentum", 0.9, 0.01, false, 2},
		{"nesterov", 0.9, 0.01, true, 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			ps := newParams()
			refs := make([]*refSGD, len(ps))
			for i, p := range ps {
				refs[i] = &refSGD{w: f64(p.W), buf: make([]float64, len(p.W)), first: true}
			}
			o := NewSGD(c.mom, c.wd, c.nesterov)
			for step := 0; step < 20; step++ {
				setGrads(ps, step+1)
				lr := 0.05 * (1 - float64(step)/40)
				if err := o.Step(ps, lr); err != nil {
					t.Fatal(err)
				}
				for i, p := range ps {
					refs[i].step(f64(p.G), lr, c.mom, c.wd, c.nesterov, p.Decay)
				}
			}
			for i, p := range ps {
				for j := range p.W {
					if !closeRel(p.W[j], refs[i].w[j], 1e-5) {
						t.Errorf("%s[%d] = %.9g, want %.9g", p.Name, j, p.W[j], refs[i].w[j])
					}
				}
			}
			if n := len(o.State()); n != c.wantStateSize {
				t.Errorf("state tensors = %d, want %d", n, c.wantStateSize)
			}
		})
	}
}

func TestSGDFirstStepByHand(t *testing.T) {
	// w=2, g=0.5, wd=0.1 on the gradient: d = 0.5+0.2 = 0.7; buf = 0.7;
	// nesterov: d = 0.7 + 0.9*0.7 = 1.33; w = 2 - 0.1*1.33 = 1.867.
	p := &Param{Name: "w", W: []float32{2}, G: []float32{0.5}, Decay: true}
	o := NewSGD(0.9, 0.1, true)
	if err := o.Step([]*Param{p}, 0.1); err != nil {
		t.Fatal(err)
	}
	if !closeRel(p.W[0], 1.867, 1e-7) {
		t.Fatalf("w = %.9g, want 1.867", p.W[0])
	}
	// Second step, g = -1: d = -1 + 0.1*1.867 = -0.8133;
	// buf = 0.9*0.7 - 0.8133 = -0.1833; d = -0.8133 + 0.9*(-0.1833) = -0.97827;
	// w = 1.867 + 0.097827 = 1.964827.
	p.G[0] = -1
	if err := o.Step([]*Param{p}, 0.1); err != nil {
		t.Fatal(err)
	}
	if !closeRel(p.W[0], 1.964827, 1e-6) {
		t.Fatalf("w = %.9g, want 1.964827", p.W[0])
	}
}

// run steps an optimizer n times from step `from` with deterministic grads.
func run(t *testing.T, o Optimizer, ps []*Param, from, n int) {
	t.Helper()
	s := Schedule{Kind: Linear, Peak: 3e-3, Min: 1e-4, Warmup: 2, Total: 20}
	for step := from; step < from+n; step++ {
		setGrads(ps, step+1)
		ClipGradNorm(ps, 1)
		if err := o.Step(ps, s.LR(step)); err != nil {
			t.Fatal(err)
		}
	}
}

func cloneParams(ps []*Param) []*Param {
	out := make([]*Param, len(ps))
	for i, p := range ps {
		out[i] = &Param{Name: p.Name, W: slices.Clone(p.W), G: slices.Clone(p.G), Decay: p.Decay}
	}
	return out
}

func cloneState(ts []StateTensor) []StateTensor {
	out := make([]StateTensor, len(ts))
	for i, x := range ts {
		out[i] = StateTensor{Name: x.Name, Data: slices.Clone(x.Data)}
	}
	return out
}

func sameBits(t *testing.T, a, b []*Param) {
	t.Helper()
	for i := range a {
		for j := range a[i].W {
			if math.Float32bits(a[i].W[j]) != math.Float32bits(b[i].W[j]) {
				t.Fatalf("%s[%d]: %v vs %v", a[i].Name, j, a[i].W[j], b[i].W[j])
			}
		}
	}
}

func TestStateRoundTripContinuesIdentically(t *testing.T) {
	for _, mk := range []func() Optimizer{
		func() Optimizer { return NewAdamW(0.9, 0.999, 1e-8, 0.01) },
		func() Optimizer { return NewSGD(0.9, 0.01, true) },
		func() Optimizer { return NewSGD(0, 0.01, false) },
	} {
		t.Run(mk().Name(), func(t *testing.T) {
			whole := newParams()
			o1 := mk()
			run(t, o1, whole, 0, 12)

			part := newParams()
			o2 := mk()
			run(t, o2, part, 0, 5)
			saved := cloneState(o2.State())
			savedW := cloneParams(part)

			o3 := mk()
			if err := o3.LoadState(saved); err != nil {
				t.Fatal(err)
			}
			if !equalState(o3.State(), saved) {
				t.Fatal("State after LoadState differs from what was loaded")
			}
			run(t, o3, savedW, 5, 7)
			sameBits(t, whole, savedW)
		})
	}
}

func equalState(a, b []StateTensor) bool {
	return slices.EqualFunc(a, b, func(x, y StateTensor) bool {
		return x.Name == y.Name && slices.Equal(x.Data, y.Data)
	})
}

func TestDeterministic(t *testing.T) {
	a, b := newParams(), newParams()
	run(t, NewAdamW(0.9, 0.999, 1e-8, 0.1), a, 0, 15)
	run(t, NewAdamW(0.9, 0.999, 1e-8, 0.1), b, 0, 15)
	sameBits(t, a, b)
}

func TestAdamWStateNamesAndStepCount(t *testing.T) {
	ps := newParams()
	o := NewAdamW(0.9, 0.999, 1e-8, 0)
	run(t, o, ps, 0, 3)
	ps[1].G = nil // frozen this step: not stepped, state kept
	before := slices.Clone(ps[1].W)
	setGrads(ps[:1], 9)
	if err := o.Step(ps, 1e-3); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(before, ps[1].W) {
		t.Error("param with nil gradient was updated")
	}
	var names []string
	steps := map[string]int64{}
	for _, x := range o.State() {
		names = append(names, x.Name)
		if n, ok := decodeCount(x.Data); ok && len(x.Name) > 11 && x.Name[:11] == adamStep {
			steps[x.Name[11:]] = n
		}
	}
	want := []string{"adamw.m/a.lora_a", "adamw.m/norm.weight", "adamw.step/a.lora_a",
		"adamw.step/norm.weight", "adamw.v/a.lora_a", "adamw.v/norm.weight"}
	if !slices.Equal(names, want) {
		t.Fatalf("names %v, want %v", names, want)
	}
	if steps["a.lora_a"] != 4 || steps["norm.weight"] != 3 {
		t.Fatalf("step counts %v, want a.lora_a 4, norm.weight 3", steps)
	}
	for _, n := range []int64{0, 1, 1<<24 - 1, 1 << 24, 1<<40 + 12345} {
		if got, ok := decodeCount(encodeCount(n)); !ok || got != n {
			t.Errorf("count %d round trip: %d %v", n, got, ok)
		}
	}
}

func TestErrors(t *testing.T) {
	good := func() []*Param { ps := newParams(); setGrads(ps, 1); return ps }
	for _, c := range []struct {
		name string
		o    Optimizer
		ps   []*Param
		lr   float64
		want error
	}{
		{"nil param", NewAdamW(0.9, 0.999, 1e-8, 0), []*Param{nil}, 1e-3, ErrParam},
		{"empty name", NewAdamW(0.9, 0.999, 1e-8, 0), []*Param{{W: []float32{1}, G: []float32{1}}}, 1e-3, ErrParam},
		{"dup name", NewSGD(0, 0, false), append(good(), good()[0]), 1e-3, ErrParam},
		{"grad length", NewSGD(0, 0, false), []*Param{{Name: "x", W: []float32{1, 2}, G: []float32{1}}}, 1e-3, ErrParam},
		{"nan lr", NewAdamW(0.9, 0.999, 1e-8, 0), good(), math.NaN(), ErrConfig},
		{"negative lr", NewSGD(0, 0, false), good(), -1, ErrConfig},
		{"beta1", NewAdamW(1, 0.999, 1e-8, 0), good(), 1e-3, ErrConfig},
		{"beta2", NewAdamW(0.9, -0.1, 1e-8, 0), good(), 1e-3, ErrConfig},
		{"eps", NewAdamW(0.9, 0.999, math.Inf(1), 0), good(), 1e-3, ErrConfig},
		{"wd", NewAdamW(0.9, 0.999, 1e-8, -1), good(), 1e-3, ErrConfig},
		{"nesterov", NewSGD(0, 0, true), good(), 1e-3, ErrConfig},
		{"momentum", NewSGD(math.NaN(), 0, false), good(), 1e-3, ErrConfig},
		{"bad schedule lr", NewSGD(0, 0, false), good(), Schedule{Kind: "step"}.LR(3), ErrConfig},
	} {
		t.Run(c.name, func(t *testing.T) {
			var before [][]float32
			for _, p := range c.ps {
				if p != nil {
					before = append(before, slices.Clone(p.W))
				}
			}
			err := c.o.Step(c.ps, c.lr)
			if !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
			if err.Error()[:7] != "optim: " {
				t.Errorf("error %q lacks the package prefix", err)
			}
			k := 0
			for _, p := range c.ps {
				if p != nil {
					if !slices.Equal(before[k], p.W) {
						t.Errorf("%s changed on error", p.Name)
					}
					k++
				}
			}
		})
	}
}

func TestStateMismatch(t *testing.T) {
	o := NewAdamW(0.9, 0.999, 1e-8, 0)
	ps := newParams()
	run(t, o, ps, 0, 1)
	ps[0].W, ps[0].G = ps[0].W[:3], ps[0].G[:3]
	if err := o.Step(ps, 1e-3); !errors.Is(err, ErrState) {
		t.Fatalf("step with resized param: %v, want ErrState", err)
	}
	s := NewSGD(0.9, 0, false)
	ps = newParams()
	run(t, s, ps, 0, 1)
	ps[1].W, ps[1].G = append(ps[1].W, 1), append(ps[1].G, 1)
	if err := s.Step(ps, 1e-3); !errors.Is(err, ErrState) {
		t.Fatalf("sgd step with resized param: %v, want ErrState", err)
	}

	st := func(names ...string) []StateTensor {
		var out []StateTensor
		for _, n := range names {
			out = append(out, StateTensor{Name: n, Data: []float32{0, 1}})
		}
		return out
	}
	for _, c := range []struct {
		name string
		o    Optimizer
		ts   []StateTensor
	}{
		{"unknown", NewAdamW(0.9, 0.999, 1e-8, 0), st("sgd.momentum/x")},
		{"missing v", NewAdamW(0.9, 0.999, 1e-8, 0), st("adamw.m/x", "adamw.step/x")},
		{"missing step", NewAdamW(0.9, 0.999, 1e-8, 0), st("adamw.m/x", "adamw.v/x")},
		{"dup", NewAdamW(0.9, 0.999, 1e-8, 0), st("adamw.m/x", "adamw.m/x", "adamw.v/x", "adamw.step/x")},
		{"empty param name", NewAdamW(0.9, 0.999, 1e-8, 0), st("adamw.m/")},
		{"bad step", NewAdamW(0.9, 0.999, 1e-8, 0), append(st("adamw.m/x", "adamw.v/x"),
			StateTensor{Name: "adamw.step/x", Data: []float32{0.5, 1}})},
		{"m v lengths", NewAdamW(0.9, 0.999, 1e-8, 0), append(st("adamw.m/x", "adamw.step/x"),
			StateTensor{Name: "adamw.v/x", Data: []float32{1}})},
		{"sgd unknown", NewSGD(0.9, 0, false), st("adamw.m/x")},
		{"sgd dup", NewSGD(0.9, 0, false), st("sgd.momentum/x", "sgd.momentum/x")},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := cloneState(c.o.State())
			if err := c.o.LoadState(c.ts); !errors.Is(err, ErrState) {
				t.Fatalf("err = %v, want ErrState", err)
			}
			if !equalState(before, c.o.State()) {
				t.Error("state changed on error")
			}
		})
	}
}

func TestStateBytes(t *testing.T) {
	for _, c := range []struct {
		o    Optimizer
		want int64
	}{
		{NewAdamW(0.9, 0.999, 1e-8, 0), 8_000_000},
		{NewSGD(0.9, 0, false), 4_000_000},
		{NewSGD(0, 0.1, false), 0},
	} {
		if got := c.o.StateBytes(1_000_000); got != c.want {
			t.Errorf("%s: StateBytes = %d, want %d", c.o.Name(), got, c.want)
		}
	}
	// The estimate matches what State actually holds (moments only; step
	// counts are 8 bytes per parameter tensor, not per value).
	ps := newParams()
	o := NewAdamW(0.9, 0.999, 1e-8, 0)
	run(t, o, ps, 0, 1)
	var n, bytes int64
	for _, p := range ps {
		n += int64(len(p.W))
	}
	for _, x := range o.State() {
		bytes += 4 * int64(len(x.Data))
	}
	if bytes-8*int64(len(ps)) != o.StateBytes(n) {
		t.Errorf("state holds %d bytes, StateBytes(%d) = %d", bytes, n, o.StateBytes(n))
	}
}

func TestSchedule(t *testing.T) {
	const peak = 1e-3
	for _, c := range []struct {
		s    Schedule
		step int
		want float64
	}{
		{Schedule{Kind: Constant, Peak: peak}, 0, peak},
		{Schedule{Kind: Constant, Peak: peak}, 1 << 30, peak},
		{Schedule{Kind: Constant, Peak: peak, Warmup: 4}, 0, 0},
		{Schedule{Kind: Constant, Peak: peak, Warmup: 4}, 1, peak / 4},
		{Schedule{Kind: Constant, Peak: peak, Warmup: 4}, 4, peak},
		{Schedule{Kind: Linear, Peak: peak, Warmup: 10, Total: 110}, -3, 0},
		{Schedule{Kind: Linear, Peak: peak, Warmup: 10, Total: 110}, 0, 0},
		{Schedule{Kind: Linear, Peak: peak, Warmup: 10, Total: 110}, 5, peak / 2},
		{Schedule{Kind: Linear, Peak: peak, Warmup: 10, Total: 110}, 10, peak},
		{Schedule{Kind: Linear, Peak: peak, Warmup: 10, Total: 110}, 60, peak / 2},
		{Schedule{Kind: Linear, Peak: peak, Warmup: 10, Total: 110}, 109, peak / 100},
		{Schedule{Kind: Linear, Peak: peak, Warmup: 10, Total: 110}, 110, 0},
		{Schedule{Kind: Linear, Peak: peak, Warmup: 10, Total: 110}, 500, 0},
		{Schedule{Kind: Linear, Peak: peak, Min: 1e-4, Warmup: 10, Total: 110}, 60, 5.5e-4},
		{Schedule{Kind: Linear, Peak: peak, Min: 1e-4, Warmup: 10, Total: 110}, 110, 1e-4},
		{Schedule{Kind: Linear, Peak: peak, Total: 100}, 0, peak},
		{Schedule{Kind: Cosine, Peak: peak, Warmup: 10, Total: 110}, 0, 0},
		{Schedule{Kind: Cosine, Peak: peak, Warmup: 10, Total: 110}, 10, peak},
		{Schedule{Kind: Cosine, Peak: peak, Warmup: 10, Total: 110}, 35, peak * (1 + math.Sqrt2/2) / 2},
		{Schedule{Kind: Cosine, Peak: peak, Warmup: 10, Total: 110}, 60, peak / 2},
		{Schedule{Kind: Cosine, Peak: peak, Warmup: 10, Total: 110}, 85, peak * (1 - math.Sqrt2/2) / 2},
		{Schedule{Kind: Cosine, Peak: peak, Warmup: 10, Total: 110}, 110, 0},
		{Schedule{Kind: Cosine, Peak: peak, Warmup: 10, Total: 110}, 160, 0},
		{Schedule{Kind: Cosine, Peak: peak, Min: 1e-4, Warmup: 10, Total: 110}, 60, 5.5e-4},
		{Schedule{Kind: Cosine, Peak: peak, Min: 1e-4, Warmup: 10, Total: 110}, 1000, 1e-4},
		{Schedule{Kind: Cosine, Peak: peak, Warmup: 5, Total: 5}, 5, 0},
	} {
		if err := c.s.Validate(); err != nil {
			t.Errorf("%+v: %v", c.s, err)
		}
		if got := c.s.LR(c.step); math.Abs(got-c.want) > 1e-15 {
			t.Errorf("%+v: LR(%d) = %.10g, want %.10g", c.s, c.step, got, c.want)
		}
	}
	for _, s := range []Schedule{
		{Kind: "step", Peak: 1},
		{Kind: Linear, Peak: 1, Warmup: 10, Total: 5},
		{Kind: Cosine, Peak: 1},
		{Kind: Constant, Peak: -1},
		{Kind: Constant, Peak: math.Inf(1)},
		{Kind: Linear, Peak: 1, Min: 2, Total: 10},
		{Kind: Constant, Peak: 1, Warmup: -1},
	} {
		if err := s.Validate(); !errors.Is(err, ErrConfig) {
			t.Errorf("%+v: Validate = %v, want ErrConfig", s, err)
		}
	}
	if !math.IsNaN(Schedule{Kind: "nope", Peak: 1}.LR(0)) {
		t.Error("unknown kind: LR is not NaN")
	}
}

func TestClipGradNorm(t *testing.T) {
	ps := []*Param{{Name: "a", W: make([]float32, 1), G: []float32{3}}, nil, {Name: "b", W: make([]float32, 1), G: []float32{4}}}
	if n := ClipGradNorm(ps, 10); n != 5 || ps[0].G[0] != 3 || ps[2].G[0] != 4 {
		t.Fatalf("below the bound: norm %v, grads %v %v", n, ps[0].G, ps[2].G)
	}
	if n := ClipGradNorm(ps, 0); n != 5 || ps[0].G[0] != 3 {
		t.Fatal("maxNorm 0 must disable clipping")
	}
	n := ClipGradNorm(ps, 1)
	if n != 5 {
		t.Fatalf("norm = %v, want 5", n)
	}
	c := 1 / (5 + 1e-6)
	if !closeRel(ps[0].G[0], 3*c, 1e-7) || !closeRel(ps[2].G[0], 4*c, 1e-7) {
		t.Fatalf("clipped grads %v %v, want %v %v", ps[0].G, ps[2].G, 3*c, 4*c)
	}
	if after := GradNorm(ps); math.Abs(after-1) > 1e-6 {
		t.Fatalf("norm after clipping = %v, want 1", after)
	}
	ps[0].G[0] = float32(math.NaN())
	if n := ClipGradNorm(ps, 1); !math.IsNaN(n) || ps[2].G[0] != float32(4*c) {
		t.Fatalf("NaN gradient: norm %v, other grad changed to %v", n, ps[2].G[0])
	}
	// The sum is taken in float64: float32 squares would overflow here.
	big := []*Param{{Name: "x", W: make([]float32, 2), G: []float32{3e20, 4e20}}}
	if n := ClipGradNorm(big, 1); math.Abs(n-5e20)/5e20 > 1e-7 || !closeRel(big[0].G[1], 0.8, 1e-6) {
		t.Fatalf("large gradients: norm %v, grads %v", n, big[0].G)
	}
}

func TestZeroGrad(t *testing.T) {
	ps := newParams()
	setGrads(ps, 1)
	ps = append(ps, nil, &Param{Name: "frozen", W: []float32{1}})
	ZeroGrad(ps)
	for _, p := range ps[:2] {
		for _, g := range p.G {
			if g != 0 {
				t.Fatalf("%s: gradient not zeroed", p.Name)
			}
		}
	}
}

func BenchmarkAdamWStep(b *testing.B) {
	const n = 1 << 20
	p := &Param{Name: "w", W: make([]float32, n), G: make([]float32, n), Decay: true}
	for i := range p.G {
		p.G[i] = float32(grad(1, i))
	}
	o := NewAdamW(0.9, 0.999, 1e-8, 0.01)
	b.SetBytes(n * 16) // read w, g, m, v; write w, m, v
	for b.Loop() {
		if err := o.Step([]*Param{p}, 1e-3); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds()/1e6, "Mparams/s")
}

type countingStore struct{ allocs, evicts int }

func (c *countingStore) Alloc(n int) ([]float32, error) { c.allocs++; return make([]float32, n), nil }
func (c *countingStore) Evict(v []float32)              { c.evicts++ }

// storeParams are two parameters for the moment-store tests.
func storeParams() []*Param {
	return []*Param{{Name: "a", W: []float32{1, -2, 3}, G: []float32{0.1, 0.2, -0.3}, Decay: true},
		{Name: "b", W: []float32{0.5}, G: []float32{-1}}}
}

// sameAsHeap steps plain (state on the heap) and stored (state in a
// store) three times and requires the same weights.
func sameAsHeap(t *testing.T, plain, stored Optimizer) {
	t.Helper()
	a, b := storeParams(), storeParams()
	for i := 0; i < 3; i++ {
		if err := plain.Step(a, 1e-2); err != nil {
			t.Fatal(err)
		}
		if err := stored.Step(b, 1e-2); err != nil {
			t.Fatal(err)
		}
	}
	for i := range a {
		for j := range a[i].W {
			if a[i].W[j] != b[i].W[j] {
				t.Fatalf("param %d[%d]: %v vs %v", i, j, a[i].W[j], b[i].W[j])
			}
		}
	}
}

// TestAdamWMomentStore: moments in a store give the same weights as on the
// heap, and every parameter's moments are evicted after each step.
func TestAdamWMomentStore(t *testing.T) {
	st, o := &countingStore{}, NewAdamW(0.9, 0.999, 1e-8, 0.01)
	o.Store = st
	sameAsHeap(t, NewAdamW(0.9, 0.999, 1e-8, 0.01), o)
	if st.allocs != 4 || st.evicts != 12 {
		t.Fatalf("allocs %d evicts %d, want 4 and 12", st.allocs, st.evicts)
	}
}

type failingStore struct{ left int }

func (f *failingStore) Alloc(n int) ([]float32, error) {
	if f.left == 0 {
		return nil, errors.New("store full")
	}
	f.left--
	return make([]float32, n), nil
}
func (f *failingStore) Evict([]float32) {}

// SGD's momentum buffers come from its store when it has one (the same
// weights as on the heap, one buffer per parameter, made once); a store
// that fails leaves every parameter as it was.
func TestSGDMomentumStore(t *testing.T) {
	st, o := &countingStore{}, NewSGD(0.9, 0.01, false)
	o.Store = st
	sameAsHeap(t, NewSGD(0.9, 0.01, false), o)
	if st.allocs != 2 {
		t.Fatalf("%d buffers from the store, want 2", st.allocs)
	}
	ps := storeParams()
	o3 := NewSGD(0.9, 0, false)
	o3.Store = &failingStore{left: 1}
	if err := o3.Step(ps, 1e-2); err == nil {
		t.Fatal("a full store was not an error")
	}
	if ps[0].W[0] != 1 || ps[1].W[0] != 0.5 {
		t.Errorf("a failed step moved the parameters: %v %v", ps[0].W, ps[1].W)
	}
}

// Slot is the live state Step uses: moments made zero at step 0 for a new
// parameter, written through by whoever steps it elsewhere (a device), and
// Step continues from them; a state of another length is refused.
func TestAdamWSlot(t *testing.T) {
	o := NewAdamW(0.9, 0.999, 1e-8, 0.01)
	m, v, step, err := o.Slot("w", 3)
	if err != nil || len(m) != 3 || len(v) != 3 || *step != 0 {
		t.Fatalf("new slot: %v %v %v %v", m, v, step, err)
	}
	// Two steps here, or one here and one "elsewhere" written into the slot.
	p := &Param{Name: "w", W: []float32{1, 2, 3}, G: []float32{0.1, -0.2, 0.3}}
	ref := NewAdamW(0.9, 0.999, 1e-8, 0.01)
	q := &Param{Name: "w", W: []float32{1, 2, 3}, G: []float32{0.1, -0.2, 0.3}}
	for range 2 {
		if err := ref.Step([]*Param{q}, 0.01); err != nil {
			t.Fatal(err)
		}
	}
	if err := o.Step([]*Param{p}, 0.01); err != nil {
		t.Fatal(err)
	}
	if *step != 1 || m[0] == 0 {
		t.Fatalf("after a step the slot holds step %d, m %v: not the live state", *step, m)
	}
	if err := o.Step([]*Param{p}, 0.01); err != nil {
		t.Fatal(err)
	}
	for i := range p.W {
		if p.W[i] != q.W[i] {
			t.Fatalf("w[%d] = %v, %v stepped twice by one optimizer", i, p.W[i], q.W[i])
		}
	}
	m[1] = 42 // written elsewhere: what a checkpoint saves
	for _, st := range o.State() {
		if st.Name == "adamw.m/w" && st.Data[1] != 42 {
			t.Fatalf("the state saved is %v, not the slot's", st.Data)
		}
	}
	if _, _, _, err := o.Slot("w", 4); !errors.Is(err, ErrState) {
		t.Errorf("a slot of another length: %v", err)
	}
}
