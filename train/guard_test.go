package train

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/qtune/qtune/checkpoint"
	"github.com/qtune/qtune/internal/synth"
	"github.com/qtune/qtune/quant"
)

// --grad-checkpoint is honoured under a budget: the plan checkpoints (it
// used to size every candidate as checkpointed, pick the first, which was
// not, and run without), and the run completes within it.
func TestGradCheckpointHonoured(t *testing.T) {
	for _, ckpt := range []bool{false, true} {
		cfg := smallRun(t, t.TempDir())
		cfg.Iters, cfg.StepsPerEval, cfg.SaveEvery = 2, 0, 0
		cfg.GradCheckpoint, cfg.MaxMem = ckpt, "1GiB"
		res, err := Run(context.Background(), cfg, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if res.Plan.Checkpoint != ckpt {
			t.Errorf("--grad-checkpoint=%v: the plan has checkpointing %v", ckpt, res.Plan.Checkpoint)
		}
	}
}

// train.Run leaves the process's memory limit as it found it (an app that
// embeds qtune would otherwise run under a run's tiny heap limit after it).
func TestRunRestoresMemoryLimit(t *testing.T) {
	const mine = 3 << 30
	prev := debug.SetMemoryLimit(mine)
	defer debug.SetMemoryLimit(prev)
	for _, maxMem := range []string{"", "1GiB"} {
		cfg := smallRun(t, t.TempDir())
		cfg.Iters, cfg.StepsPerEval, cfg.SaveEvery, cfg.MaxMem = 1, 0, 0, maxMem
		if _, err := Run(context.Background(), cfg, nil, nil); err != nil {
			t.Fatal(err)
		}
		if got := debug.SetMemoryLimit(-1); got != mine {
			t.Errorf("--max-mem %q: memory limit %d after the run, was %d", maxMem, got, int64(mine))
		}
	}
}

// Resuming refuses any change that would lose or misapply the saved state
// (fewer targets used to drop trained adapters and overwrite the state,
// exit 0), naming the difference, and leaves the state as it was; --restart
// starts over.
func TestResumeRefusesChanges(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	base := smallRun(t, dir)
	base.Iters, base.StepsPerEval, base.SaveEvery = 2, 0, 0
	if _, err := Run(ctx, base, nil, nil); err != nil {
		t.Fatal(err)
	}
	state, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		t.Fatal(err)
	}
	otherData := t.TempDir()
	os.WriteFile(filepath.Join(otherData, "train.jsonl"), []byte(`{"text": "Once upon a time there was a cat."}`+"\n"+`{"text": "The cat sat on the mat all day."}`+"\n"), 0o644)
	for _, c := range []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"fewer targets", func(c *Config) { c.Targets = "q_proj,v_proj" }, "--targets"},
		{"fewer layers", func(c *Config) { c.NumLayers = 2 }, "--num-layers"},
		{"alpha", func(c *Config) { c.Alpha = 32 }, "--alpha"},
		{"rank", func(c *Config) { c.Rank = 8 }, "--rank"},
		{"seed", func(c *Config) { c.Seed = 8 }, "--seed"},
		{"batch", func(c *Config) { c.BatchSize = 4 }, "--batch-size"},
		{"data", func(c *Config) { c.Data = otherData }, "the training data"},
	} {
		cfg := base
		cfg.Iters, cfg.Resume = 4, true
		c.edit(&cfg)
		_, err := Run(ctx, cfg, nil, nil)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error naming %q", c.name, err, c.want)
		}
		if now, _ := os.ReadFile(filepath.Join(dir, stateFile)); !bytes.Equal(now, state) {
			t.Fatalf("%s: the saved state changed", c.name)
		}
	}
	// The same settings resume; --restart starts over.
	cfg := base
	cfg.Iters, cfg.Resume = 3, true
	if _, err := Run(ctx, cfg, nil, nil); err != nil {
		t.Fatalf("resume with the same settings: %v", err)
	}
	cfg = base
	cfg.Targets, cfg.Restart = "q_proj", true
	res, err := Run(ctx, cfg, nil, nil)
	if err != nil || res.Iters != 2 {
		t.Fatalf("--restart: %v", err)
	}
}

// A zeroth-order run whose step blows the adapters up (--zo-learning-rate
// 1e6: the loss sits at ln(V) from iteration 2) stops with a message naming
// the iteration instead of running on to exit 0; a sane rate trains on.
func TestDivergenceStops(t *testing.T) {
	for _, method := range []string{"mezo", "loho-inter"} {
		cfg := zoRun(t, t.TempDir(), method, "lora")
		cfg.Iters, cfg.StepsPerEval, cfg.SaveEvery = 30, 0, 0
		cfg.ZOLearningRate = 1e6
		res, err := Run(context.Background(), cfg, nil, nil)
		if err == nil || !strings.Contains(err.Error(), "diverged at iteration") || !strings.Contains(err.Error(), "--zo-learning-rate") {
			t.Fatalf("%s: %v (curve %v)", method, err, res.Curve)
		}
		if n := len(res.Curve); n >= 30 || n < divergedAfter {
			t.Errorf("%s: stopped after %d iterations", method, n)
		}
		t.Logf("%s: %v", method, err)
	}
	cfg := zoRun(t, t.TempDir(), "mezo", "lora")
	cfg.Iters, cfg.StepsPerEval, cfg.SaveEvery = 8, 0, 0
	if _, err := Run(context.Background(), cfg, nil, nil); err != nil {
		t.Fatalf("a sane rate: %v", err)
	}
}

// A cancelled run (SIGINT in the CLI) saves a resumable state of what it
// trained, whatever the iteration and without --save-every, and resuming
// from it gives the losses of a run never interrupted.
func TestCancelSavesResumableState(t *testing.T) {
	ctx := context.Background()
	base := smallRun(t, t.TempDir())
	base.SaveEvery, base.StepsPerEval = 0, 0
	full, err := Run(ctx, base, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, at := range []int{1, 2, 5} {
		dir := t.TempDir()
		cfg := base
		cfg.AdapterPath, cfg.CacheDir = dir, filepath.Join(dir, "cache")
		cctx, cancel := context.WithCancel(ctx)
		var logs []string
		_, err := Run(cctx, cfg, func(s string) { logs = append(logs, s) }, func(p Progress) {
			if p.Kind == "train" && p.Iter == at {
				cancel()
			}
		})
		cancel()
		if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), fmt.Sprintf("after iteration %d", at)) {
			t.Fatalf("cancelled at %d: %v", at, err)
		}
		if !slices.ContainsFunc(logs, func(s string) bool { return strings.Contains(s, "--resume") }) {
			t.Errorf("cancelled at %d: no word on how to resume: %q", at, logs)
		}
		cfg.Resume = true
		resumed, err := Run(ctx, cfg, nil, nil)
		if err != nil {
			t.Fatalf("resume after %d: %v", at, err)
		}
		if !slices.Equal(full.Curve, resumed.Curve) {
			t.Errorf("cancelled at %d: losses %v, uninterrupted %v", at, resumed.Curve, full.Curve)
		}
	}
}

// Two runs cannot write one adapter folder at once: the second is refused
// with a message naming the folder and the holder; they may share a cache
// folder (its files are written under temporary names and renamed).
func TestAdapterPathLocked(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	a := smallRun(t, dir)
	a.StepsPerEval, a.SaveEvery = 0, 0
	started, tried := make(chan struct{}), make(chan struct{})
	errA := make(chan error, 1)
	go func() {
		_, err := Run(ctx, a, nil, func(p Progress) {
			if p.Iter == 1 {
				close(started)
				<-tried
			}
		})
		errA <- err
	}()
	<-started
	b := a
	_, err := Run(ctx, b, nil, nil)
	if err == nil || !strings.Contains(err.Error(), "in use by another qtune run") || !strings.Contains(err.Error(), dir) {
		t.Errorf("second run on the same adapter path: %v", err)
	}
	c := a
	c.AdapterPath = t.TempDir() // same cache folder, another adapter path
	if _, err := Run(ctx, c, nil, nil); err != nil {
		t.Errorf("a run sharing the cache folder: %v", err)
	}
	close(tried)
	if err := <-errA; err != nil {
		t.Fatal(err)
	}
}

// A refused budget names the smallest one that fits, and that one is
// accepted: loho used to name 85.9 MiB, then refuse 86–136 MiB naming
// 140 MiB (its own estimate kept the weights resident where the run would
// stream them). Swept on a synthetic 15M Q4_0 model for LoHO and LoRA.
func TestRefusalNamesAcceptedBudget(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "15M.gguf")
	if err := synth.Write(p, synth.Presets["15M"], quant.Q4_0, 1); err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`below the ([0-9.]+) MiB|\(--max-mem ([0-9]+)MiB\)`)
	for _, method := range []string{"loho", "lora", "mezo", "loho-intra", "loreml"} {
		named := map[float64]bool{}
		for mib := 8; mib <= 128; mib += 8 {
			cfg := smallRun(t, t.TempDir())
			cfg.Model, cfg.Method, cfg.DryRun = p, method, true
			cfg.Iters, cfg.BatchSize, cfg.MaxSeqLength = 2, 2, 64
			cfg.MaxMem = fmt.Sprintf("%dMiB", mib)
			_, err := Run(context.Background(), cfg, nil, nil)
			if err == nil {
				continue
			}
			mm := re.FindStringSubmatch(err.Error())
			if mm == nil {
				t.Fatalf("%s at %d MiB: a refusal that names no budget: %v", method, mib, err)
			}
			need, _ := strconv.ParseFloat(mm[1]+mm[2], 64)
			if need <= float64(mib) {
				t.Errorf("%s at %d MiB: refused naming %.1f MiB, which it is above", method, mib, need)
			}
			named[math.Ceil(need)] = strings.Contains(err.Error(), "alone exceed") // refused before a plan
		}
		if len(named) == 0 {
			t.Fatalf("%s: nothing refused from 8 MiB", method)
		}
		// Following the named budgets ends accepted: directly when the plan
		// refused; within one more hop when a part was refused before there
		// was a plan (it names a budget that part fits in).
		for need, early := range named {
			for hop := 0; ; hop++ {
				cfg := smallRun(t, t.TempDir())
				cfg.Model, cfg.Method, cfg.DryRun = p, method, true
				cfg.Iters, cfg.BatchSize, cfg.MaxSeqLength = 2, 2, 64
				cfg.MaxMem = fmt.Sprintf("%gMiB", need)
				_, err := Run(context.Background(), cfg, nil, nil)
				if err == nil {
					break
				}
				mm := re.FindStringSubmatch(err.Error())
				next := 0.0
				if mm != nil {
					next, _ = strconv.ParseFloat(mm[1]+mm[2], 64)
				}
				if hop > 0 || !early || math.Ceil(next) <= need {
					t.Errorf("%s: the named %g MiB is refused: %v", method, need, err)
					break
				}
				need = math.Ceil(next)
			}
		}
	}
}

// A training state whose header declares a body far larger than this run's
// tensors (a 109 KB zstd bomb declaring 3 GiB peaked at 5.1 GB before its
// checksum failed) is refused before anything is inflated.
func TestResumeRefusesOversizedState(t *testing.T) {
	dir := t.TempDir()
	var hdr [24]byte
	copy(hdr[:], "QTCK")
	binary.LittleEndian.PutUint32(hdr[4:], 1)      // format version
	binary.LittleEndian.PutUint32(hdr[8:], 1)      // zstd
	binary.LittleEndian.PutUint64(hdr[12:], 3<<30) // body bytes declared
	binary.LittleEndian.PutUint32(hdr[20:], crc32.Checksum(hdr[:20], crc32.MakeTable(crc32.Castagnoli)))
	os.WriteFile(filepath.Join(dir, stateFile), append(hdr[:], make([]byte, 100<<10)...), 0o644)
	cfg := smallRun(t, dir)
	cfg.Resume = true
	_, err := Run(context.Background(), cfg, nil, nil)
	if !errors.Is(err, checkpoint.ErrLimit) {
		t.Fatalf("a state declaring 3 GiB: %v", err)
	}
	t.Log(err)
}
