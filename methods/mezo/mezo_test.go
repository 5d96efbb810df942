package mezo

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/qtune/qtune/internal/shared"
	"github.com/qtune/qtune/model"
	"github.com/qtune/qtune/quant"
)

func openStories(t testing.TB) *model.Model {
	m, err := model.Open(shared.Path(t, "assets", "models", "stories260K.gguf"), model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// quantized returns stories260K quantized to typ (a temporary file).
func quantized(t testing.TB, typ quant.Type) *model.Model {
	src := openStories(t)
	p := filepath.Join(t.TempDir(), "q.gguf")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := model.Quantize(src, f, typ); err != nil {
		t.Fatal(err)
	}
	f.Close()
	m, err := model.Open(p, model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// batch is a fixed story fragment: B ≤ 2 rows of T ≤ 16 tokens.
func batch(m *model.Model, B, T int) (tokens, targets []int, _, _ int) {
	text := []string{"Once upon a time, there was a little girl named Lily. She loved to play outside",
		"One day, a big dog came to the park. The dog was very happy and wanted to play"}
	for _, s := range text[:B] {
		ids := m.Tokenizer.Encode(s, true)
		tokens = append(tokens, ids[:T]...)
		targets = append(targets, ids[1:T+1]...)
	}
	return tokens, targets, B, T
}

// meanLoss returns the closure MeZO evaluates: the mean token loss.
func meanLoss(t testing.TB, m *model.Model, o model.StepOptions, B, T int) func() (float64, error) {
	tok, tg, B, T := batch(m, B, T)
	return func() (float64, error) {
		s, n, err := m.LossGrad(tok, tg, B, T, o, false, 0)
		return s / float64(n), err
	}
}

func TestNormalStream(t *testing.T) {
	const n = 10001
	all := make([]float32, n)
	Normal(all, 42, 3, 0)
	// Any split, any offset parity, gives the same values.
	for _, cut := range []int{1, 2, 777, 5000} {
		part := make([]float32, n-cut)
		Normal(part, 42, 3, cut)
		for i, v := range part {
			if v != all[cut+i] {
				t.Fatalf("offset %d: z[%d] = %v, whole draw %v", cut, cut+i, v, all[cut+i])
			}
		}
	}
	var s, s2 float64
	for _, v := range all {
		s += float64(v)
		s2 += float64(v) * float64(v)
	}
	mean, vr := s/n, s2/n-(s/n)*(s/n)
	if math.Abs(mean) > 0.04 || math.Abs(vr-1) > 0.05 {
		t.Fatalf("mean %.4f variance %.4f, want 0 and 1", mean, vr)
	}
	other := make([]float32, 16)
	Normal(other, 42, 4, 0)
	if other[0] == all[0] && other[1] == all[1] {
		t.Fatal("tensors 3 and 4 share a stream")
	}
	Normal(other, 43, 3, 0)
	if other[0] == all[0] {
		t.Fatal("seeds 42 and 43 share a stream")
	}
}

// TestPerturbationRestores: +ε, −2ε, +ε brings every parameter back to θ
// within float32 rounding, and the step's loss evaluations see θ±εz.
func TestPerturbationRestores(t *testing.T) {
	m := openStories(t)
	ts, _, err := FloatTensors(m, FloatOptions{Matrices: true})
	if err != nil {
		t.Fatal(err)
	}
	orig := make([][]float32, len(ts))
	for i, tt := range ts {
		orig[i] = append([]float32(nil), tt.Data...)
	}
	s, err := New(ts, Config{Epsilon: 1e-3, LR: 0, N: 3, Seed: 5}, m.Pool())
	if err != nil {
		t.Fatal(err)
	}
	loss := meanLoss(t, m, model.StepOptions{}, 2, 16)
	base, _ := loss()
	ds, err := s.Estimate(1, loss)
	if err != nil {
		t.Fatal(err)
	}
	worst := 0.0
	for i, tt := range ts {
		for j, v := range tt.Data {
			// three float32 additions of ε·z: a few ulps of max(|θ|, ε|z|)
			tol := 4 * (math.Abs(float64(orig[i][j])) + 1e-2) * 0x1p-23
			if d := math.Abs(float64(v - orig[i][j])); d > tol {
				t.Fatalf("%s[%d]: %v after the perturbations, was %v", tt.Name, j, v, orig[i][j])
			} else {
				worst = max(worst, d)
			}
		}
	}
	t.Logf("largest drift %.3g; L=%.5f, draws %+v", worst, base, ds)
	for _, d := range ds {
		if d.Plus == d.Minus || math.Abs((d.Plus+d.Minus)/2-base) > 0.05 {
			t.Fatalf("draw %+v around L=%v", d, base)
		}
	}
}

func cosine(a, b []float64) float64 {
	var ab, aa, bb float64
	for i := range a {
		ab += a[i] * b[i]
		aa += a[i] * a[i]
		bb += b[i] * b[i]
	}
	return ab / math.Sqrt(aa*bb)
}

// TestEstimatorFollowsGradient: the average of ĝ = g·z over many draws
// points along the true gradient (LossGrad's backward) of the final and the
// last block's FFN norm weights: E[ĝ] = ∇L for small ε.
func TestEstimatorFollowsGradient(t *testing.T) {
	m := openStories(t)
	L := m.Config.Layers
	fn := "blk." + string(rune('0'+L-1)) + ".ffn_norm.weight"
	ts := []Tensor{{Name: "output_norm.weight", Data: m.OutNorm}, {Name: fn, Data: m.Layers[L-1].FFNNorm}}
	tok, tg, B, T := batch(m, 1, 10)
	grads := map[string][]float32{"output_norm.weight": make([]float32, m.Config.Dim), fn: make([]float32, m.Config.Dim)}
	n := 0
	for _, v := range tg {
		if v >= 0 {
			n++
		}
	}
	if _, _, err := m.LossGrad(tok, tg, B, T, model.StepOptions{WeightGrads: grads, FirstLayer: L - 1}, true, 1/float64(n)); err != nil {
		t.Fatal(err)
	}
	var truth []float64
	for _, tt := range ts {
		for _, v := range grads[tt.Name] {
			truth = append(truth, float64(v))
		}
	}
	s, err := New(ts, Config{Epsilon: 1e-3, LR: 0, N: 1, Seed: 11}, m.Pool())
	if err != nil {
		t.Fatal(err)
	}
	loss := meanLoss(t, m, model.StepOptions{}, 1, 10)
	d := len(truth)
	const draws = 1200
	avg := make([]float64, d)
	z := make([]float32, m.Config.Dim)
	for k := 1; k <= draws; k++ {
		ds, err := s.Estimate(k, loss)
		if err != nil {
			t.Fatal(err)
		}
		for ti := range ts {
			Normal(z, ds[0].Seed, ti, 0)
			for j, v := range z {
				avg[ti*len(z)+j] += ds[0].G * float64(v) / draws
			}
		}
	}
	c := cosine(avg, truth)
	t.Logf("d=%d, %d draws: cos(mean ĝ, ∇L) = %.4f (expected from the estimator's variance ≈ %.2f)", d, draws, c, 1/math.Sqrt(1+float64(d)/draws))
	if c < 0.9 {
		t.Fatalf("cos %.3f < 0.9", c)
	}
}

// repeatLoss is the mean loss of a small memorisation task: an odd sentence
// said twice.
func repeatLoss(m *model.Model, o model.StepOptions) func() (float64, error) {
	tok := m.Tokenizer.Encode("The sky was green and the grass was blue. The sky was green and the grass was blue.", true)
	T := len(tok) - 1
	return func() (float64, error) {
		s, n, err := m.LossGrad(tok[:T], tok[1:], 1, T, o, false, 0)
		return s / float64(n), err
	}
}

// TestMeZOLowersLoss: full-parameter MeZO (every float tensor of the F32
// stories260K through writable copies, ≈293K values) lowers the training
// loss of a small task.
func TestMeZOLowersLoss(t *testing.T) {
	m := openStories(t)
	ts, _, err := FloatTensors(m, FloatOptions{Matrices: true})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(ts, Config{Epsilon: 1e-3, LR: 1e-4, N: 1, Seed: 1}, m.Pool())
	if err != nil {
		t.Fatal(err)
	}
	loss := repeatLoss(m, model.StepOptions{})
	l0, _ := loss()
	for k := 1; k <= 60; k++ {
		if _, err := s.Step(k, loss); err != nil {
			t.Fatal(err)
		}
	}
	l1, _ := loss()
	t.Logf("%d parameters: loss %.4f -> %.4f", s.Params(), l0, l1)
	if !(l1 < 0.85*l0) {
		t.Fatalf("loss %.4f -> %.4f", l0, l1)
	}
}

// TestSameSeedSameRun: two runs with one seed end bit-identical (n = 2,
// weight decay on); another seed ends elsewhere.
func TestSameSeedSameRun(t *testing.T) {
	run := func(seed uint64) [][]float32 {
		m := openStories(t)
		ts, _, err := FloatTensors(m, FloatOptions{Matrices: true})
		if err != nil {
			t.Fatal(err)
		}
		s, err := New(ts, Config{Epsilon: 1e-3, LR: 1e-4, WeightDecay: 0.1, N: 2, Seed: seed}, m.Pool())
		if err != nil {
			t.Fatal(err)
		}
		loss := repeatLoss(m, model.StepOptions{})
		for k := 1; k <= 5; k++ {
			if _, err := s.Step(k, loss); err != nil {
				t.Fatal(err)
			}
		}
		var out [][]float32
		for _, tt := range ts {
			out = append(out, tt.Data)
		}
		return out
	}
	a, b, c := run(3), run(3), run(4)
	same := func(x, y [][]float32) bool {
		for i := range x {
			for j := range x[i] {
				if math.Float32bits(x[i][j]) != math.Float32bits(y[i][j]) {
					return false
				}
			}
		}
		return true
	}
	if !same(a, b) {
		t.Fatal("same seed, different parameters")
	}
	if same(a, c) {
		t.Fatal("different seeds, same parameters")
	}
}

func TestConfigAndFiles(t *testing.T) {
	for _, c := range []Config{{Epsilon: 0, LR: 1, N: 1}, {Epsilon: 1e-3, LR: -1, N: 1}, {Epsilon: 1e-3, LR: 1, N: 0}, {Epsilon: math.NaN(), N: 1}} {
		if _, err := New([]Tensor{{Data: make([]float32, 1)}}, c, nil); !errors.Is(err, ErrConfig) {
			t.Errorf("%+v: %v", c, err)
		}
	}
	m := openStories(t)
	ts, _, err := FloatTensors(m, FloatOptions{Matrices: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range ts {
		tt.Data[0] += 0.5
	}
	p := filepath.Join(t.TempDir(), "f.safetensors")
	if err := WriteTensors(p, ts, map[string]string{"k": "v"}); err != nil {
		t.Fatal(err)
	}
	got, meta, err := ReadTensors(p)
	if err != nil || meta["k"] != "v" || len(got) != len(ts) {
		t.Fatalf("%d tensors, meta %v, %v", len(got), meta, err)
	}
	m2 := openStories(t)
	if err := SetFloat(m2, got); err != nil {
		t.Fatal(err)
	}
	if m2.OutNorm[0] != m.OutNorm[0] || m2.Layers[1].AttnNorm[0] != m.Layers[1].AttnNorm[0] {
		t.Fatal("norms not restored")
	}
	r1, r2 := make([]float32, m.Config.Dim), make([]float32, m.Config.Dim)
	m.Layers[2].Wq.Row(r1, 0)
	m2.Layers[2].Wq.Row(r2, 0)
	if r1[0] != r2[0] {
		t.Fatal("matrix not restored")
	}
	if err := SetFloat(m2, []Tensor{{Name: "nope", Data: []float32{1}}}); err == nil {
		t.Fatal("unknown tensor accepted")
	}
}
