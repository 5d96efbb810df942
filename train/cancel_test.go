package train

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/qtune/qtune/data"
	"github.com/qtune/qtune/internal/shared"
	"github.com/qtune/qtune/model"
)

// passCounter counts the forward passes of one phase (testHookPass) and
// cancels a context at the at-th; after is how many ran once it was
// cancelled.
type passCounter struct {
	phase     string
	at, n     int
	after     int
	cancelled bool
	cancel    func()
}

func countPasses(t *testing.T, phase string, at int, cancel func()) *passCounter {
	t.Helper()
	c := &passCounter{phase: phase, at: at, cancel: cancel}
	testHookPass = func(p string) {
		if c.cancelled {
			c.after++ // any phase: nothing may run once cancelled
		}
		if p != c.phase {
			return
		}
		c.n++
		if c.n == c.at {
			c.cancelled = true
			c.cancel()
		}
	}
	t.Cleanup(func() { testHookPass = nil })
	return c
}

// A run cancelled in the middle of a step stops before the step's next
// forward pass (no further micro-batch, no further perturbed evaluation),
// applies nothing of that step, saves the state of the iteration before it,
// and resuming from that state gives the losses of a run never interrupted
// (LoRA exactly; MeZO and LoHO within float rounding, as undoing a
// perturbation is exact only up to it).
func TestCancelMidStepResumes(t *testing.T) {
	zo := func(method string) func(*testing.T, string) Config {
		return func(t *testing.T, dir string) Config { return zoRun(t, dir, method, "lora") }
	}
	for _, tc := range []struct {
		method  string
		cfg     func(*testing.T, string) Config
		accum   int // micro-batches per step
		n       int // SPSA draws
		perIter int // forward passes per iteration
		at      int // cancel at this pass: inside iteration 3
		exact   bool
	}{
		{"lora", smallRun, 3, 1, 3, 2*3 + 2, true},
		{"mezo", zo("mezo"), 1, 2, 4, 2*4 + 1, false},             // after draw 1's θ+εz evaluation
		{"loho-inter", zo("loho-inter"), 2, 1, 6, 2*6 + 5, false}, // in the first-order pass, after the ZO estimate
		{"loreml", loremlRun, 2, 1, 2, 2*2 + 1, true},             // in the first step of stage 2
	} {
		t.Run(tc.method, func(t *testing.T) {
			ctx := context.Background()
			base := tc.cfg(t, t.TempDir())
			base.SaveEvery, base.StepsPerEval, base.GradAccum, base.Perturbations = 0, 0, tc.accum, tc.n
			full, err := Run(ctx, base, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			cfg := base
			cfg.AdapterPath, cfg.CacheDir = dir, filepath.Join(dir, "cache")
			cctx, cancel := context.WithCancel(ctx)
			defer cancel()
			c := countPasses(t, "step", tc.at, cancel)
			var logs []string
			res, err := Run(cctx, cfg, func(s string) { logs = append(logs, s) }, nil)
			testHookPass = nil
			if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "after iteration 2") || !strings.Contains(err.Error(), "iteration 3 was cut short") {
				t.Fatalf("cancelled in iteration 3: %v", err)
			}
			if c.after != 0 {
				t.Errorf("%d forward passes ran after the cancellation (at pass %d of %d per iteration)", c.after, tc.at, tc.perIter)
			}
			if c.n != tc.at {
				t.Errorf("%d passes, want %d: the passes per iteration are not %d", c.n, tc.at, tc.perIter)
			}
			if len(res.Curve) != 2 {
				t.Errorf("the cancelled run reports %d iterations, want 2", len(res.Curve))
			}
			if !slices.ContainsFunc(logs, func(s string) bool { return strings.Contains(s, "--resume") }) {
				t.Errorf("no word on how to resume: %q", logs)
			}
			cfg.Resume = true
			resumed, err := Run(ctx, cfg, nil, nil)
			if err != nil {
				t.Fatalf("resume: %v", err)
			}
			if len(resumed.Curve) != len(full.Curve) {
				t.Fatalf("resumed curve of %d points, uninterrupted %d", len(resumed.Curve), len(full.Curve))
			}
			for i := range full.Curve {
				a, b := full.Curve[i].Loss, resumed.Curve[i].Loss
				if tc.exact && a != b || math.Abs(a-b) > 1e-5*math.Abs(a) {
					t.Errorf("iteration %d: uninterrupted loss %v, resumed %v", i+1, a, b)
				}
			}
		})
	}
}

// A run cancelled during a validation stops before the next validation
// batch; the step before it is complete and saved, and --resume runs that
// validation again, so the resumed run's validation curve is the
// uninterrupted run's.
func TestCancelDuringValidation(t *testing.T) {
	ctx := context.Background()
	base := smallRun(t, t.TempDir())
	base.SaveEvery, base.StepsPerEval, base.ValBatches = 0, 3, 4
	full, err := Run(ctx, base, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(full.ValCurve) != 3 {
		t.Fatalf("uninterrupted validation curve %v, want iterations 0, 3 and 6", full.ValCurve)
	}
	dir := t.TempDir()
	cfg := base
	cfg.AdapterPath, cfg.CacheDir = dir, filepath.Join(dir, "cache")
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	c := countPasses(t, "val", 4+2, cancel) // the second batch of the validation at iteration 3
	_, err = Run(cctx, cfg, nil, nil)
	testHookPass = nil
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "after iteration 3, during its validation") {
		t.Fatalf("cancelled in the validation at 3: %v", err)
	}
	if c.after != 0 {
		t.Errorf("%d validation batches ran after the cancellation", c.after)
	}
	cfg.Resume = true
	resumed, err := Run(ctx, cfg, nil, nil)
	if err != nil {
		t.Fatalf("resume: %v", err)
	}
	if !slices.Equal(full.Curve, resumed.Curve) {
		t.Errorf("losses %v, uninterrupted %v", resumed.Curve, full.Curve)
	}
	if !slices.Equal(full.ValCurve, resumed.ValCurve) || full.FinalValLoss != resumed.FinalValLoss {
		t.Errorf("validation %v, uninterrupted %v", resumed.ValCurve, full.ValCurve)
	}
}

// One text record can be a whole book: EvalLM stops between the windows
// of a record, not only between records.
func TestEvalLMCancelInsideRecord(t *testing.T) {
	m := openStories(t)
	b, err := os.ReadFile(shared.Path(t, "assets", "data", "tinyshakespeare", "input.txt"))
	if err != nil {
		t.Fatal(err)
	}
	recs := []data.Record{{Text: string(b[:20000])}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := countPasses(t, "eval", 3, cancel)
	_, err = EvalLM(ctx, m, recs, data.Text, EvalOptions{MaxSeqLen: 32})
	if !errors.Is(err, context.Canceled) || !strings.HasPrefix(err.Error(), "train: evaluation stopped in record 1 of 1") {
		t.Fatalf("cancelled after 3 windows of one record: %v", err)
	}
	if c.after != 0 {
		t.Errorf("%d windows ran after the cancellation", c.after)
	}
}

// Cancelled before its first record and tensor, a run leaves nothing in
// its cache folder: no token cache (it used to tokenize both splits whole,
// and check the context only at its first iteration) and no converted base
// (qlora used to convert the whole model first); an uncancelled run then
// builds both.
func TestCancelledRunCachesNothing(t *testing.T) {
	for _, method := range []string{"lora", "qlora"} {
		t.Run(method, func(t *testing.T) {
			dir := t.TempDir()
			cfg := smallRun(t, dir)
			cfg.Method, cfg.Iters, cfg.StepsPerEval = method, 1, 0
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			if _, err := Run(ctx, cfg, nil, nil); !errors.Is(err, context.Canceled) {
				t.Fatalf("cancelled run: %v", err)
			}
			if files := cacheFiles(t, cfg.CacheDir); len(files) > 0 {
				t.Fatalf("a cancelled run left %v in its cache", files)
			}
			if _, err := Run(context.Background(), cfg, nil, nil); err != nil {
				t.Fatal(err)
			}
			files := cacheFiles(t, cfg.CacheDir)
			want := []string{".qtok"}
			if method == "qlora" {
				want = append(want, ".gguf")
			}
			for _, ext := range want {
				if !slices.ContainsFunc(files, func(f string) bool { return strings.HasSuffix(f, ext) }) {
					t.Errorf("the uncancelled run cached %v, no %s", files, ext)
				}
			}
		})
	}
}

// OpenBaseLimit cancelled stops the conversion and caches no partial base.
func TestOpenBaseCancelledConversion(t *testing.T) {
	dir := t.TempDir()
	src := shared.Path(t, "assets", "models", "stories260K.gguf")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := OpenBaseLimit(ctx, src, "qlora", dir, model.Options{}, 0); !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "stopped before") {
		t.Fatalf("cancelled conversion: %v", err)
	}
	if files := cacheFiles(t, dir); len(files) > 0 {
		t.Fatalf("a cancelled conversion left %v", files)
	}
	m, note, err := OpenBaseLimit(context.Background(), src, "qlora", dir, model.Options{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	m.Close()
	if !strings.HasPrefix(note, "quantized the base to NF4 once") {
		t.Fatalf("after a cancelled conversion: %q", note)
	}
}

// cacheFiles lists the files under dir (none when it does not exist).
func cacheFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if errors.Is(err, os.ErrNotExist) {
			return filepath.SkipAll
		}
		if err != nil {
			return err
		}
		if !d.IsDir() {
			out = append(out, fmt.Sprint(p[len(dir):]))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
