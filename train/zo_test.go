package train

import (
	"context"
	"github.com/qtune/qtune/budget"
	"github.com/qtune/qtune/internal/synth"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/qtune/qtune/data"
	"github.com/qtune/qtune/internal/shared"
	"github.com/qtune/qtune/methods/loho"
	"github.com/qtune/qtune/methods/lora"
	"github.com/qtune/qtune/methods/mezo"
	"github.com/qtune/qtune/model"
	"github.com/qtune/qtune/quant"
)

// zoRun is smallRun for a zeroth-order or hybrid method.
func zoRun(t *testing.T, dir, method, target string) Config {
	c := smallRun(t, dir)
	c.Method, c.ZOTarget = method, target
	c.Dropout = 0
	c.ZOLearningRate, c.Epsilon = 1e-3, 1e-2
	c.FOLayers = "2"
	c.FORatio = 0.2
	return c
}

// TestZOResumeGivesSameLosses: for MeZO (each trainable set) and both LoHO
// modes, a run interrupted after iteration 3 and resumed reports the same
// per-iteration losses and final validation loss as an uninterrupted one
// (parameters, optimizer moments, data position restored; the draws' seeds
// are a function of (seed, iteration)).
func TestZOResumeGivesSameLosses(t *testing.T) {
	for _, tc := range []struct{ method, target string }{
		{"mezo", "lora"}, {"mezo", "float"}, {"loho-inter", "lora"}, {"loho-intra", "lora"}, {"loho-intra", "complement"},
	} {
		t.Run(tc.method+"-"+tc.target, func(t *testing.T) {
			ctx := context.Background()
			full, err := Run(ctx, zoRun(t, t.TempDir(), tc.method, tc.target), nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			resumed := stopThenResume(t, zoRun(t, t.TempDir(), tc.method, tc.target), 3, nil)
			if len(full.Curve) != 6 || len(resumed.Curve) != 6 {
				t.Fatalf("curves of %d and %d points", len(full.Curve), len(resumed.Curve))
			}
			for i := range full.Curve {
				if full.Curve[i] != resumed.Curve[i] {
					t.Fatalf("iteration %d: uninterrupted loss %v, resumed %v", i+1, full.Curve[i].Loss, resumed.Curve[i].Loss)
				}
			}
			if full.FinalValLoss != resumed.FinalValLoss || full.FinalValLoss == full.FirstValLoss {
				t.Fatalf("validation loss %v -> %v, resumed run %v", full.FirstValLoss, full.FinalValLoss, resumed.FinalValLoss)
			}
		})
	}
}

// TestZOOutputsApply: what each method saves, applied to a fresh model
// (ApplyAdapter, as qtune eval --adapter does), gives the validation loss the
// run measured with its in-memory state.
func TestZOOutputsApply(t *testing.T) {
	for _, tc := range []struct{ method, target, model string }{
		{"mezo", "lora", ""}, {"mezo", "float", ""}, {"mezo", "scales", "q8"}, {"loho-inter", "lora", ""}, {"loho-intra", "lora", "q8"},
		{"loho-intra", "complement", "q8"},
	} {
		t.Run(tc.method+"-"+tc.target, func(t *testing.T) {
			dir := t.TempDir()
			cfg := zoRun(t, dir, tc.method, tc.target)
			cfg.Iters, cfg.SaveEvery, cfg.StepsPerEval = 4, 0, 4
			if tc.model == "q8" {
				cfg.Model = quantizedStories(t, dir)
			}
			res, err := Run(context.Background(), cfg, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			m, err := model.Open(cfg.Model, model.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			if _, err := ApplyAdapter(m, dir); err != nil {
				t.Fatal(err)
			}
			meth := &applied{m: m}
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
			got, err := evalLoss(t.Context(), m, meth, data.Examples(ex), cfg)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("validation loss %.5f -> %.5f; applied from %s: %.5f", res.FirstValLoss, res.FinalValLoss, dir, got)
			if math.Abs(got-res.FinalValLoss) > 1e-5 || got == res.FirstValLoss {
				t.Fatalf("applied output gives %v, the run %v (start %v)", got, res.FinalValLoss, res.FirstValLoss)
			}
		})
	}
}

// applied is a Method stand-in that evaluates m with its own adapters.
type applied struct {
	Method
	m *model.Model
}

func (a *applied) Eval() (model.StepOptions, func()) {
	return model.StepOptions{Adapters: a.m.Adapters}, func() {}
}

// quantizedStories writes stories260K as Q8_0 into dir.
func quantizedStories(t *testing.T, dir string) string {
	src, err := model.Open(shared.Path(t, "assets", "models", "stories260K.gguf"), model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	p := filepath.Join(dir, "q8.gguf")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := model.Quantize(src, f, quant.Q8_0); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestLoHOAutoLayers: --fo-layers auto without a budget trains every
// adapted block but the lowest first-order; with --max-mem it takes the
// largest N the plan fits; a budget too small is an error.
func TestLoHOAutoLayers(t *testing.T) {
	cfg := zoRun(t, t.TempDir(), "loho", "lora")
	m, err := model.Open(cfg.Model, model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	L := m.Config.Layers
	cfg.FOLayers = "auto"
	meth, err := newMethod(m, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if h := meth.(*lohoMethod); h.foN != L-1 || h.first != 1 || h.zo == nil {
		t.Fatalf("auto without budget: N=%d first=%d", h.foN, h.first)
	}
	p := lohoPlan(m, cfg, meth.(*lohoMethod).set, L, 0)
	cfg.MaxMem = strconv.FormatInt(p.Bytes(2)+budget.Margin(p.Bytes(2))+1, 10)
	meth, err = newMethod(m, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if h := meth.(*lohoMethod); h.foN != 2 || !strings.Contains(meth.Describe(), "fits --max-mem") {
		t.Fatalf("auto with the budget of N=2: N=%d (%s)", h.foN, meth.Describe())
	}
	cfg.MaxMem = "1MiB"
	if _, err := newMethod(m, cfg); err == nil {
		t.Fatal("a 1 MiB budget was accepted")
	}
	cfg.FOLayers = "9"
	if _, err := newMethod(m, cfg); err == nil {
		t.Fatal("--fo-layers 9 on a 5-block model was accepted")
	}
}

// TestLoHOIntraPartitionsEntries: with the default zeroth-order target,
// intra-layer LoHO trains complementary entries of every adapted matrix:
// the first-order sparse delta holds exactly the mask's entries, the
// zeroth-order dense delta is zero on the mask and has moved (almost)
// everywhere else, and no LoRA adapter is written.
func TestLoHOIntraPartitionsEntries(t *testing.T) {
	dir := t.TempDir()
	cfg := zoRun(t, dir, "loho-intra", "")
	cfg.Iters, cfg.SaveEvery, cfg.StepsPerEval = 3, 0, 3
	cfg.FORatio = 0.3
	if _, err := Run(context.Background(), cfg, nil, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, lora.PEFTFile)); err == nil {
		t.Fatal("a LoRA adapter was written for the complement target")
	}
	sp, _, err := loho.ReadSparse(filepath.Join(dir, loho.SparseFile), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	dense, _, err := mezo.ReadTensors(filepath.Join(dir, loho.DenseFile))
	if err != nil {
		t.Fatal(err)
	}
	if len(sp) == 0 || len(sp) != len(dense) {
		t.Fatalf("%d sparse and %d dense deltas", len(sp), len(dense))
	}
	for i, s := range sp {
		d := dense[i]
		if d.Name != s.Target+".zo_delta" || len(d.Data) != s.Out*s.In {
			t.Fatalf("dense delta %q (%d values) beside sparse %s %dx%d", d.Name, len(d.Data), s.Target, s.Out, s.In)
		}
		key := loho.MaskKey(cfg.Seed, s.Target)
		inFO := make([]bool, len(d.Data))
		for _, e := range s.Entries() {
			if !loho.InMask(key, int(e), cfg.FORatio) {
				t.Fatalf("%s: sparse entry %d is outside the mask", s.Target, e)
			}
			inFO[e] = true
		}
		moved, zo := 0, 0
		for e, v := range d.Data {
			m := loho.InMask(key, e, cfg.FORatio)
			if m != inFO[e] {
				t.Fatalf("%s: entry %d in mask %v, in the sparse delta %v", s.Target, e, m, inFO[e])
			}
			if m {
				if v != 0 {
					t.Fatalf("%s: zeroth-order delta %v at first-order entry %d", s.Target, v, e)
				}
				continue
			}
			zo++
			if v != 0 {
				moved++
			}
		}
		if zo == 0 || float64(moved) < 0.99*float64(zo) {
			t.Fatalf("%s: %d of %d zeroth-order entries moved", s.Target, moved, zo)
		}
	}
}

// TestLoHOAutoMonotone: with --fo-layers auto, a budget LoHO accepts is
// accepted with any more memory too. Keeping the plan's margin in the
// refusal but not in the choice to stream the weights refused a window
// of budgets above the smallest (the long sweep found 133 MiB on 110M,
// between 79 and 154 accepted). On a synthetic 15M Q4_0 model, whose
// weights streamed save more than the margin.
func TestLoHOAutoMonotone(t *testing.T) {
	p := filepath.Join(t.TempDir(), "15M.gguf")
	if err := synth.Write(p, synth.Presets["15M"], quant.Q4_0, 1); err != nil {
		t.Fatal(err)
	}
	cfg := zoRun(t, t.TempDir(), "loho", "lora")
	cfg.Model, cfg.FOLayers = p, "auto"
	cfg.BatchSize, cfg.MaxSeqLength = 2, 64
	m, err := model.Open(p, model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	first := int64(0)
	for limit := int64(16 << 20); limit <= 96<<20; limit += 64 << 10 {
		cfg.MaxMem = strconv.FormatInt(limit, 10)
		_, err := newMethod(m, cfg)
		switch {
		case err == nil && first == 0:
			first = limit
		case err != nil && first != 0:
			t.Fatalf("--max-mem %d accepted, %d refused: %v", first, limit, err)
		}
	}
	if first == 0 {
		t.Fatal("no budget up to 96 MiB accepted")
	}
}
