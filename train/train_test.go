package train

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/qtune/qtune/budget"
	"github.com/qtune/qtune/internal/shared"
	"github.com/qtune/qtune/methods/lora"
	"github.com/qtune/qtune/model"
)

func smallRun(t *testing.T, dir string) Config {
	c := Defaults()
	c.Model = shared.Path(t, "assets", "models", "stories260K.gguf")
	c.Data = shared.Path(t, "assets", "data", "tinyshakespeare")
	c.Iters, c.BatchSize, c.MaxSeqLength = 6, 2, 48
	c.LearningRate, c.Rank, c.Alpha, c.Dropout = 5e-3, 4, 8, 0.1
	c.StepsPerReport, c.StepsPerEval, c.ValBatches, c.SaveEvery = 1, 3, 2, 3
	c.AdapterPath, c.CacheDir = dir, filepath.Join(dir, "cache")
	c.Seed = 7
	return c
}

// stopThenResume runs cfg until iteration stop is reported and cancels it
// (its state saved on the way out), then runs it again with --resume (log
// gets the resumed run's lines) and returns that run's result.
func stopThenResume(t *testing.T, cfg Config, stop int, log func(string)) *Result {
	t.Helper()
	ctx := context.Background()
	cctx, cancel := context.WithCancel(ctx)
	_, err := Run(cctx, cfg, nil, func(p Progress) {
		if p.Kind == "train" && p.Iter == stop {
			cancel()
		}
	})
	cancel()
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("the run stopped at iteration %d: %v", stop, err)
	}
	cfg.Resume = true
	res, err := Run(ctx, cfg, log, nil)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// TestResumeGivesSameLosses: a run interrupted after iteration 3 and resumed
// from its saved state reports the same per-iteration losses as a run that
// was never interrupted (adapters, optimizer moments, data position and
// dropout seeds all restored).
func TestResumeGivesSameLosses(t *testing.T) {
	ctx := context.Background()
	full, err := Run(ctx, smallRun(t, t.TempDir()), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfg := smallRun(t, dir)
	resumed := stopThenResume(t, cfg, 3, nil)
	if len(full.Curve) != 6 || len(resumed.Curve) != 6 {
		t.Fatalf("curves of %d and %d points", len(full.Curve), len(resumed.Curve))
	}
	for i := range full.Curve {
		if full.Curve[i] != resumed.Curve[i] {
			t.Fatalf("iteration %d: uninterrupted loss %v, resumed %v", i+1, full.Curve[i].Loss, resumed.Curve[i].Loss)
		}
	}
	if full.FinalValLoss != resumed.FinalValLoss {
		t.Fatalf("final validation loss %v vs %v", full.FinalValLoss, resumed.FinalValLoss)
	}
	for _, f := range []string{lora.PEFTFile, "adapter_config.json", lora.GGUFFile, "loss.svg", stateFile} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("adapter folder lacks %s", f)
		}
	}
	svg, _ := os.ReadFile(filepath.Join(dir, "loss.svg"))
	if !strings.Contains(string(svg), "validation loss") || strings.Count(string(svg), "<polyline") != 2 {
		t.Error("loss.svg lacks the two curves")
	}
	// A damaged state file is refused with a clear error.
	p := filepath.Join(dir, stateFile)
	b, _ := os.ReadFile(p)
	b[len(b)/2] ^= 0xff
	os.WriteFile(p, b, 0o644)
	cfg.Resume = true
	if _, err := Run(ctx, cfg, nil, nil); err == nil || !strings.Contains(err.Error(), stateFile) {
		t.Fatalf("damaged state: %v", err)
	}
}

// TestTrainingLowersLossAndAdapterRoundTrips: a short LoRA run lowers the
// validation loss on out-of-domain text; the saved PEFT and GGUF adapters,
// re-imported, give exactly the logits of the in-memory adapters, and the
// merged export gives them within float rounding.
func TestTrainingLowersLossAndAdapterRoundTrips(t *testing.T) {
	dir := t.TempDir()
	cfg := smallRun(t, dir)
	cfg.Iters, cfg.Dropout, cfg.SaveEvery = 30, 0, 0
	cfg.StepsPerEval = 30
	res, err := Run(context.Background(), cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("validation loss %.3f -> %.3f", res.FirstValLoss, res.FinalValLoss)
	if !(res.FinalValLoss < res.FirstValLoss-0.3) {
		t.Fatalf("validation loss %.3f -> %.3f: training did not help", res.FirstValLoss, res.FinalValLoss)
	}
	m, err := model.Open(cfg.Model, model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	toks := []int{1, 403, 407, 261, 378, 432, 383}
	logits := func() []float32 {
		out := make([]float32, len(toks)*m.Config.Vocab)
		if err := m.Forward(m.NewState(len(toks)), toks, out, true); err != nil {
			t.Fatal(err)
		}
		return out
	}
	base := logits()
	var ref []float32
	for _, src := range []string{dir, filepath.Join(dir, lora.GGUFFile)} {
		set, err := lora.Load(m, src)
		if err != nil {
			t.Fatal(err)
		}
		m.Adapters = set.ByPos
		got := logits()
		if ref == nil {
			ref = got
		}
		for i := range got {
			if got[i] != ref[i] {
				t.Fatalf("%s: logit %d = %v, PEFT gave %v", src, i, got[i], ref[i])
			}
		}
	}
	diff := 0.0
	for i := range ref {
		diff = math.Max(diff, math.Abs(float64(ref[i]-base[i])))
	}
	if diff < 0.1 {
		t.Fatalf("the adapter barely changes the logits (%g)", diff)
	}
}

func TestQLoRABaseIsCached(t *testing.T) {
	dir := t.TempDir()
	src := shared.Path(t, "assets", "models", "stories260K.gguf")
	m, note, err := OpenBase(src, "qlora", dir, model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	nf4 := 0
	for _, tt := range m.Tensors {
		if tt.Type.String() == "NF4" {
			nf4++
		}
	}
	m.Close()
	if nf4 != 32 || !strings.Contains(note, "quantized") {
		t.Fatalf("%d NF4 tensors, note %q", nf4, note)
	}
	m, note, err = OpenBase(src, "qlora", dir, model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	m.Close()
	if !strings.Contains(note, "from cache") {
		t.Fatalf("second open did not reuse the cache: %q", note)
	}
	m, note, err = OpenBase(src, "lora", dir, model.Options{})
	if err != nil || note != "" {
		t.Fatalf("lora on a float base: %q %v", note, err)
	}
	m.Close()
}

// TestRunStreamsDataThroughTokenCache: a run tokenizes its train and valid
// splits into token cache files on disk (the test split is not read), the
// plan counts what the data holds per example, a second run reads the
// tokens from the cache and trains identically, and a damaged cache file is
// rebuilt.
func TestRunStreamsDataThroughTokenCache(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	ds := filepath.Join(dir, "data")
	os.MkdirAll(ds, 0o755)
	src, err := os.ReadFile(shared.Path(t, "assets", "data", "tinyshakespeare", "valid.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(string(src), "\n")
	os.WriteFile(filepath.Join(ds, "train.jsonl"), src, 0o644)
	os.WriteFile(filepath.Join(ds, "valid.jsonl"), []byte(strings.Join(lines[:12], "")), 0o644)
	os.WriteFile(filepath.Join(ds, "test.jsonl"), []byte("{not read\n"), 0o644)
	cfg := smallRun(t, dir)
	cfg.Data, cfg.Iters, cfg.SaveEvery, cfg.StepsPerEval = ds, 3, 0, 3

	var logs []string
	logf := func(s string) { logs = append(logs, s) }
	dry := cfg
	dry.DryRun = true
	res, err := Run(ctx, dry, logf, nil)
	if err != nil {
		t.Fatal(err)
	}
	var item *budget.Item
	for i := range res.Plan.Items {
		if res.Plan.Items[i].Category == budget.TokenCache {
			item = &res.Plan.Items[i]
		}
	}
	if item == nil || !strings.Contains(item.Note, fmt.Sprintf("index of %d examples", 162+12)) {
		t.Fatalf("plan's token cache item %+v", item)
	}
	// Per example (about 12 bytes with its batch order) plus fixed buffers:
	// 64 KiB read scratch per file, the step's batches.
	if most := int64(2*(64<<10)+(162+12)*24) + int64(3*cfg.BatchSize*(16*cfg.MaxSeqLength+8)) + int64(8*(cfg.MaxSeqLength+1)); item.Bytes > most || item.Bytes < 2*(64<<10) {
		t.Errorf("token cache planned at %d bytes, want at most %d", item.Bytes, most)
	}
	if !slices.ContainsFunc(logs, func(s string) bool { return strings.Contains(s, "memory plan") }) {
		t.Error("no plan printed")
	}
	cached, _ := filepath.Glob(filepath.Join(cfg.CacheDir, "tokens", "*.qtok"))
	if len(cached) != 2 || !strings.HasPrefix(filepath.Base(cached[0]), "train-") || !strings.HasPrefix(filepath.Base(cached[1]), "valid-") {
		t.Fatalf("token cache holds %v", cached)
	}
	noEval := dry
	noEval.StepsPerEval, noEval.CacheDir = 0, filepath.Join(dir, "cache-no-eval")
	if _, err := Run(ctx, noEval, nil, nil); err != nil {
		t.Fatal(err)
	}
	if c, _ := filepath.Glob(filepath.Join(noEval.CacheDir, "tokens", "*.qtok")); len(c) != 1 || !strings.HasPrefix(filepath.Base(c[0]), "train-") {
		t.Errorf("a run that does not evaluate cached %v", c)
	}
	fromCache := func() bool {
		return slices.Contains(logs, "training tokens from the cache")
	}

	logs = nil
	first, err := Run(ctx, cfg, logf, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !fromCache() || math.IsNaN(first.FinalValLoss) || len(first.Curve) != 3 {
		t.Fatalf("cached run: from cache %v, val loss %v, %d points", fromCache(), first.FinalValLoss, len(first.Curve))
	}
	good, _ := os.ReadFile(cached[0])
	bad := append([]byte(nil), good...)
	bad[len(bad)/2] ^= 1
	os.WriteFile(cached[0], bad, 0o644)
	logs = nil
	again, err := Run(ctx, cfg, logf, nil)
	if err != nil {
		t.Fatal(err)
	}
	if fromCache() {
		t.Error("a damaged cache file was used")
	}
	if b, _ := os.ReadFile(cached[0]); !bytes.Equal(b, good) {
		t.Error("the damaged cache file was not rebuilt")
	}
	if !slices.Equal(first.Curve, again.Curve) || first.FinalValLoss != again.FinalValLoss {
		t.Errorf("rebuilt cache trains differently: %v vs %v", first.Curve, again.Curve)
	}
}
