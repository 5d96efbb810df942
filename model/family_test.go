package model

import (
	"fmt"
	"math"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/qtune/qtune/internal/synth"
	"github.com/qtune/qtune/quant"
)

// Every family's small random model, written by internal/synth with
// llama.cpp's conventions as a GGUF and with Hugging Face's as a folder, is
// one model: the two loaders must agree; the three forward paths (KV cache,
// training, scorer) must agree; the backward must match finite
// differences. The judge against llama.cpp itself is in
// internal/llamacpp's tests.

type familyModels struct {
	f        synth.Family
	gguf, hf *Model
}

func openFamily(t *testing.T, f synth.Family, typ quant.Type) familyModels {
	t.Helper()
	dir := t.TempDir()
	gp := filepath.Join(dir, f.Name+".gguf")
	if err := f.WriteGGUF(gp, typ, 7); err != nil {
		t.Fatal(err)
	}
	hd := filepath.Join(dir, "hf")
	if err := f.WriteHF(hd, 7); err != nil {
		t.Fatal(err)
	}
	g, err := Open(gp, Options{})
	if err != nil {
		t.Fatalf("%s GGUF: %v", f.Name, err)
	}
	t.Cleanup(func() { g.Close() })
	h, err := Open(hd, Options{})
	if err != nil {
		t.Fatalf("%s HF: %v", f.Name, err)
	}
	t.Cleanup(func() { h.Close() })
	return familyModels{f, g, h}
}

// familyPrompt is n token ids drawn past the special ones.
func familyPrompt(m *Model, n int, seed uint64) []int {
	r := rand.New(rand.NewPCG(seed, 3))
	out := make([]int, n)
	for i := range out {
		out[i] = 3 + r.IntN(m.Config.Vocab-3)
	}
	return out
}

func allLogits(t *testing.T, m *Model, toks []int) []float32 {
	t.Helper()
	s := m.NewState(len(toks))
	defer s.Free()
	out := make([]float32, len(toks)*m.Config.Vocab)
	if err := m.Forward(s, toks, out, true); err != nil {
		t.Fatal(err)
	}
	return out
}

func maxAbs(v []float32) float64 {
	var m float64
	for _, x := range v {
		m = math.Max(m, math.Abs(float64(x)))
	}
	return m
}

func TestFamiliesGGUFMatchesHF(t *testing.T) {
	for _, f := range synth.Families() {
		t.Run(f.Name, func(t *testing.T) {
			fm := openFamily(t, f, quant.F32)
			if fm.gguf.Config.Arch != f.Arch || fm.hf.Config.Arch != f.Arch {
				t.Fatalf("loaded as %q (GGUF) and %q (HF), want %q", fm.gguf.Config.Arch, fm.hf.Config.Arch, f.Arch)
			}
			toks := familyPrompt(fm.gguf, 24, 1)
			a, b := allLogits(t, fm.gguf, toks), allLogits(t, fm.hf, toks)
			var worst float64
			for i := range a {
				worst = math.Max(worst, math.Abs(float64(a[i]-b[i])))
			}
			scale := maxAbs(a)
			t.Logf("%s: max |GGUF − HF| %.3g over logits up to %.3g; features %v", f.Name, worst, scale, fm.gguf.Features())
			if worst > 1e-5*scale {
				t.Fatalf("GGUF and HF logits differ by %.3g (max logit %.3g): the loaders disagree", worst, scale)
			}
		})
	}
}

// TestFamiliesPathsAgree: token-by-token generation through the KV cache,
// one batched Forward, LossGrad's forward and the Scorer give the same
// model on every family (sliding windows and no-RoPE blocks included).
func TestFamiliesPathsAgree(t *testing.T) {
	for _, f := range synth.Families() {
		t.Run(f.Name, func(t *testing.T) {
			m := openFamily(t, f, quant.F32).gguf
			V := m.Config.Vocab
			toks := familyPrompt(m, 20, 2)
			batch := allLogits(t, m, toks)
			s := m.NewState(len(toks))
			defer s.Free()
			one := make([]float32, V)
			for i, id := range toks {
				if err := m.Forward(s, []int{id}, one, false); err != nil {
					t.Fatal(err)
				}
				for j := range one {
					if d := math.Abs(float64(one[j] - batch[i*V+j])); d > 1e-4*(1+maxAbs(one)) {
						t.Fatalf("position %d: cached %g, batched %g", i, one[j], batch[i*V+j])
					}
				}
			}
			// Loss three ways: from the batched logits in float64, LossGrad, Scorer.
			B, T := 2, len(toks)-1
			in := append(append([]int(nil), toks[:T]...), familyPrompt(m, T, 9)...)
			tg := make([]int, B*T)
			copy(tg, toks[1:])
			for i := T; i < B*T; i++ {
				tg[i] = in[i+1-T+T-1] // any ids
				if i == B*T-1 {
					tg[i] = -1
				}
			}
			var want float64
			for i := 0; i < T; i++ {
				want += ce(batch[i*V:(i+1)*V], tg[i])
			}
			second := allLogits(t, m, in[T:])
			for i := 0; i < T; i++ {
				if tg[T+i] >= 0 {
					want += ce(second[i*V:(i+1)*V], tg[T+i])
				}
			}
			got, _, err := m.LossGrad(in, tg, B, T, StepOptions{}, false, 1)
			if err != nil {
				t.Fatal(err)
			}
			sc := m.NewScorer()
			defer sc.Free()
			got2, _, err := sc.Loss(in, tg, B, T, nil)
			if err != nil {
				t.Fatal(err)
			}
			if math.Abs(got-want) > 1e-4*math.Abs(want) || math.Abs(got2-want) > 1e-4*math.Abs(want) {
				t.Fatalf("loss: from Forward %.6f, LossGrad %.6f, Scorer %.6f", want, got, got2)
			}
		})
	}
}

func ce(logits []float32, target int) float64 {
	m := float64(logits[0])
	for _, v := range logits {
		m = math.Max(m, float64(v))
	}
	var s float64
	for _, v := range logits {
		s += math.Exp(float64(v) - m)
	}
	return m + math.Log(s) - float64(logits[target])
}

// denseAdapter is y += x·Mᵀ with a trainable M (out, in), the simplest
// adapter whose gradient is checkable: dM += dyᵀ·x, dx += dy·M.
type denseAdapter struct {
	in, out int
	w, g    []float32
}

func (d *denseAdapter) Forward(y, x []float32, M int) {
	for r := 0; r < M; r++ {
		for o := 0; o < d.out; o++ {
			var s float32
			for i := 0; i < d.in; i++ {
				s += x[r*d.in+i] * d.w[o*d.in+i]
			}
			y[r*d.out+o] += s
		}
	}
}

func (d *denseAdapter) Backward(dx, dy, x []float32, M int) {
	for r := 0; r < M; r++ {
		for o := 0; o < d.out; o++ {
			g := dy[r*d.out+o]
			for i := 0; i < d.in; i++ {
				d.g[o*d.in+i] += g * x[r*d.in+i]
				if dx != nil {
					dx[r*d.in+i] += g * d.w[o*d.in+i]
				}
			}
		}
	}
}

// TestFamiliesGradientsFD checks LossGrad's gradients on every family
// against central differences of the loss: an adapter on each module of
// every block (so the gradient crosses biases, q/k norms, RoPE or its
// absence, the query scale, windowed attention, GeGLU and the post norms)
// and the weights of every norm, each along a random direction, at 2%.
func TestFamiliesGradientsFD(t *testing.T) {
	for _, f := range synth.Families() {
		t.Run(f.Name, func(t *testing.T) {
			m := openFamily(t, f, quant.F32).gguf
			c := m.Config
			r := rand.New(rand.NewPCG(5, 5))
			// Soften the model: these random models are sharp (peaked
			// outputs, focused attention), which makes the loss too curved
			// for finite differences at a step float32 can resolve. Smaller
			// final and attention norm weights keep every op in the path.
			soften := func(v []float32, by float32) {
				for i := range v {
					v[i] *= by
				}
			}
			soften(m.OutNorm, 0.25)
			for l := range m.Layers {
				soften(m.Layers[l].AttnNorm, 0.5)
			}
			ads := make(Adapters, c.Layers)
			var all []*denseAdapter
			for l := range m.Layers {
				for k := Module(0); k < NumModules; k++ {
					w := m.Layers[l].Matrix(k)
					d := &denseAdapter{in: w.Cols, out: w.Rows, w: make([]float32, w.Rows*w.Cols), g: make([]float32, w.Rows*w.Cols)}
					for i := range d.w {
						d.w[i] = float32(r.NormFloat64() * 0.01)
					}
					ads[l][k] = d
					all = append(all, d)
				}
			}
			grads := map[string][]float32{}
			type param struct {
				name string
				v    []float32
			}
			var params []param
			for l := range m.Layers {
				L := &m.Layers[l]
				for _, p := range []param{{"attn_norm", L.AttnNorm}, {"ffn_norm", L.FFNNorm}, {"attn_q_norm", L.QNorm},
					{"attn_k_norm", L.KNorm}, {"post_attention_norm", L.PostAttnNorm}, {"post_ffw_norm", L.PostFFNNorm}} {
					if p.v != nil {
						name := fmt.Sprintf("blk.%d.%s.weight", l, p.name)
						grads[name] = make([]float32, len(p.v))
						params = append(params, param{name, p.v})
					}
				}
			}
			B, T := 2, 12
			toks := familyPrompt(m, B*T, 11)
			tg := familyPrompt(m, B*T, 12)
			loss := func() float64 {
				l, _, err := m.LossGrad(toks, tg, B, T, StepOptions{Adapters: ads}, false, 1)
				if err != nil {
					t.Fatal(err)
				}
				return l
			}
			loss0, _, err := m.LossGrad(toks, tg, B, T, StepOptions{Adapters: ads, WeightGrads: grads}, true, 1)
			if err != nil {
				t.Fatal(err)
			}
			// Directional derivatives: along a random ±1 direction u over the
			// whole tensor, (L(v+hu) − L(v−hu))/2h against Σ g·u, with a
			// step that has converged (below).
			check := func(what string, v, g []float32) {
				u := make([]float32, len(v))
				var want float64
				for i := range u {
					u[i] = float32(2*r.IntN(2) - 1)
					want += float64(g[i]) * float64(u[i])
				}
				old := append([]float32(nil), v...)
				d := func(h float32) float64 {
					for i := range v {
						v[i] = old[i] + h*u[i]
					}
					lp := loss()
					for i := range v {
						v[i] = old[i] - h*u[i]
					}
					lm := loss()
					copy(v, old)
					return (lp - lm) / float64(2*h)
				}
				// Start at |h·u| = 0.08 and halve the step until two successive
				// differences agree to 1% (the curvature is then negligible),
				// at most five times (below that float32 rounding dominates).
				h := float32(0.08 / math.Sqrt(float64(len(v))))
				fd := d(h)
				for k := 0; k < 5; k++ {
					h /= 2
					next := d(h)
					done := math.Abs(next-fd) <= 0.01*math.Abs(next)+1e-3
					fd = next
					if done {
						break
					}
				}
				// float32 rounding moves the loss by about 1e-6 of itself
				// between nearby points; its difference quotient carries that
				// over 2h.
				noise := 1e-6 * math.Abs(loss0) / float64(h)
				if math.Abs(fd-want) > 0.02*math.Abs(fd)+noise {
					t.Errorf("%s: backward %.6g, finite difference %.6g along a random direction", what, want, fd)
				}
			}
			for _, p := range params {
				check(p.name, p.v, grads[p.name])
			}
			for i, d := range all {
				check(fmt.Sprintf("adapter blk.%d.%s", i/int(NumModules), ModuleNames[i%int(NumModules)]), d.w, d.g)
			}
		})
	}
}
