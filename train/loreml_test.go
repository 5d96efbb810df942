package train

import (
	"bytes"
	"context"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/qtune/qtune/data"
	"github.com/qtune/qtune/methods/loreml"
	"github.com/qtune/qtune/model"
	"github.com/qtune/qtune/quant"
)

func loremlRun(t *testing.T, dir string) Config {
	c := smallRun(t, dir)
	c.Method, c.Iters, c.Stage1Iters, c.SaveEvery = "loreml", 6, 2, 2
	c.KeepRatio, c.WarmStart = 0.02, 1
	return c
}

// TestLoReMLResumeAcrossStages: runs interrupted in stage 1 (state saved
// after iteration 2, the transition happens after resuming) and in stage 2
// (after iteration 4: mask, delta, norms, warm start and moments restored)
// report the same per-iteration losses as an uninterrupted run.
func TestLoReMLResumeAcrossStages(t *testing.T) {
	ctx := context.Background()
	full, err := Run(ctx, loremlRun(t, t.TempDir()), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, stop := range []int{2, 4} {
		dir := t.TempDir()
		resumed := stopThenResume(t, loremlRun(t, dir), stop, nil)
		if len(resumed.Curve) != len(full.Curve) {
			t.Fatalf("curves of %d and %d points", len(full.Curve), len(resumed.Curve))
		}
		for i := range full.Curve {
			if full.Curve[i] != resumed.Curve[i] {
				t.Fatalf("stopped at %d: iteration %d: uninterrupted loss %v, resumed %v", stop, i+1, full.Curve[i].Loss, resumed.Curve[i].Loss)
			}
		}
		if full.FinalValLoss != resumed.FinalValLoss {
			t.Fatalf("stopped at %d: final validation loss %v vs %v", stop, full.FinalValLoss, resumed.FinalValLoss)
		}
		if !loreml.Has(dir) {
			t.Fatalf("%s lacks %s", dir, loreml.FileName)
		}
	}
	if _, err := newLoReMLMethod(nil, Config{Iters: 5, Stage1Iters: 5}); err == nil {
		t.Fatal("a run without stage 2 was accepted")
	}
}

// TestLoReMLLowersLossAndMerges: a short LoReML run on stories260K lowers the
// validation loss in stage 2 as well as overall; the saved delta, applied
// with ApplyAdapter, reproduces the run's final validation loss; and the
// merged float export gives the applied delta's logits within 1e-4.
func TestLoReMLLowersLossAndMerges(t *testing.T) {
	dir := t.TempDir()
	cfg := smallRun(t, dir)
	cfg.Method, cfg.Iters, cfg.Stage1Iters, cfg.Dropout, cfg.SaveEvery = "loreml", 40, 10, 0, 0
	cfg.StepsPerEval = 10
	var lines []string
	res, err := Run(context.Background(), cfg, func(s string) { lines = append(lines, s) }, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range lines {
		t.Log(l)
	}
	vc := res.ValCurve
	t.Logf("validation loss %v", vc)
	if len(vc) != 5 || vc[0].Iter != 0 || vc[1].Iter != 10 {
		t.Fatalf("validation curve %v", vc)
	}
	if !(res.FinalValLoss < res.FirstValLoss-0.3) {
		t.Fatalf("validation loss %.3f -> %.3f: training did not help", res.FirstValLoss, res.FinalValLoss)
	}
	// Stage 2 starts from W + γ·U·V (not the stage-1 model W + (α/R)·U·V),
	// so compare its end with its own first evaluation.
	if !(vc[4].Loss < vc[2].Loss) {
		t.Fatalf("stage 2 did not lower the validation loss: %v", vc)
	}
	m, err := model.Open(cfg.Model, model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if _, err := ApplyAdapter(m, dir); err != nil {
		t.Fatal(err)
	}
	meth := &fixedMethod{o: model.StepOptions{Adapters: m.Adapters}}
	validEx := validExamples(t, m, cfg)
	l, err := evalLoss(t.Context(), m, meth, data.Examples(validEx), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(l-res.FinalValLoss) > 1e-9 {
		t.Fatalf("the saved delta gives validation loss %v, the run %v", l, res.FinalValLoss)
	}
	toks := []int{1, 403, 407, 261, 378, 432, 383}
	logits := func(mm *model.Model) []float32 {
		out := make([]float32, len(toks)*mm.Config.Vocab)
		if err := mm.Forward(mm.NewState(len(toks)), toks, out, true); err != nil {
			t.Fatal(err)
		}
		return out
	}
	want := logits(m)
	set, err := loreml.Load(m, dir)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := model.QuantizeWith(m, &buf, quant.F32, set.Merge()); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "merged.gguf")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	mm, err := model.Open(p, model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer mm.Close()
	got := logits(mm)
	for i := range want {
		if d := math.Abs(float64(got[i] - want[i])); d > 1e-4 {
			t.Fatalf("merged logit %d = %v, applied delta %v", i, got[i], want[i])
		}
	}
}

// fixedMethod evaluates with given options (only Eval is used).
type fixedMethod struct {
	Method
	o model.StepOptions
}

func (f *fixedMethod) Eval() (model.StepOptions, func()) { return f.o, func() {} }

// validExamples tokenizes the validation split as Run does.
func validExamples(t *testing.T, m *model.Model, cfg Config) []data.Example {
	t.Helper()
	splits, err := data.LoadSplits(cfg.Data)
	if err != nil {
		t.Fatal(err)
	}
	tokOpt, err := ChatTokenizeOptions(m, "test model", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	ex, err := data.Tokenize(m.Tokenizer, splits.Valid.Records, splits.Valid.Kind, tokOpt)
	if err != nil {
		t.Fatal(err)
	}
	return ex
}
