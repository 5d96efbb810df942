package train

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// A run's progress names its phases in order, reports every micro-batch
// (the points a cancel is seen), and the first report of a phase comes
// before any of its work: a QLoRA run on a float base converts it, then
// tokenizes, validates, trains (two micro-batches per step), saves a
// state, trains on, validates and saves its outputs. A cancel from a
// micro-batch report stops the run before that micro-batch.
func TestProgressPhasesAndMicroBatches(t *testing.T) {
	dir := t.TempDir()
	cfg := smallRun(t, dir)
	cfg.Method, cfg.Dropout = "qlora", 0
	cfg.Iters, cfg.GradAccum, cfg.StepsPerEval, cfg.SaveEvery = 4, 2, 4, 2
	cfg.PhaseReports = true
	var seq []string
	micro := 0
	_, err := Run(context.Background(), cfg, nil, func(p Progress) {
		switch p.Kind {
		case KindPhase:
			seq = append(seq, p.Phase)
		case KindMicroBatch:
			if p.Phase != PhaseTraining || p.MicroBatches != 2 || p.MicroBatch < 1 || p.MicroBatch > 2 {
				t.Errorf("micro-batch report %+v", p)
			}
			if want := fmt.Sprint(p.Iter); len(seq) == 0 || !strings.HasSuffix(seq[len(seq)-1], "micro "+want) {
				seq = append(seq, "micro "+want)
			}
			micro++
		case KindTrain:
			if p.Phase != PhaseTraining {
				t.Errorf("train report in phase %q", p.Phase)
			}
		case KindVal:
			seq = append(seq, "val")
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{PhaseConverting, PhaseTokenizing, PhaseValidating, "val", PhaseTraining, "micro 1", "micro 2",
		PhaseSaving, PhaseTraining, "micro 3", "micro 4", PhaseValidating, "val", PhaseTraining, PhaseSaving}
	if !slices.Equal(seq, want) {
		t.Errorf("progress\n %q\nwant\n %q", seq, want)
	}
	if micro != 4*2 {
		t.Errorf("%d micro-batch reports, want 8 (4 steps of 2)", micro)
	}

	// cancelled at the second micro-batch of iteration 2: iteration 1 is
	// saved, iteration 2 is not applied
	cfg = smallRun(t, t.TempDir())
	cfg.Iters, cfg.GradAccum, cfg.StepsPerEval = 4, 2, 0
	cfg.PhaseReports = true
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	after := 0
	_, err = Run(ctx, cfg, nil, func(p Progress) {
		if p.Kind == KindMicroBatch {
			if ctx.Err() != nil {
				after++
			}
			if p.Iter == 2 && p.MicroBatch == 1 {
				cancel()
			}
		}
	})
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "interrupted after iteration 1") || after != 0 {
		t.Errorf("cancelled at iteration 2's first micro-batch: %v (%d micro-batches after)", err, after)
	}

	// without PhaseReports: steps and validations only
	cfg = smallRun(t, t.TempDir())
	cfg.Iters = 2
	_, err = Run(context.Background(), cfg, nil, func(p Progress) {
		if p.Kind != KindTrain && p.Kind != KindVal {
			t.Errorf("a %s report without PhaseReports", p.Kind)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
}

// The library writes nothing under the user's home unless asked: without
// a cache folder a run's caches go under the temporary folder.
func TestLibraryCacheNotUnderHome(t *testing.T) {
	home, tmp := t.TempDir(), t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("XDG_CACHE_HOME", "")
	t.Setenv("QTUNE_CACHE", "")
	t.Setenv("TMPDIR", tmp)
	cfg := smallRun(t, filepath.Join(t.TempDir(), "ad"))
	cfg.CacheDir, cfg.Iters, cfg.StepsPerEval = "", 1, 0
	if _, err := Run(context.Background(), cfg, nil, nil); err != nil {
		t.Fatal(err)
	}
	if left, _ := os.ReadDir(home); len(left) != 0 {
		t.Errorf("the run wrote under $HOME: %v", left)
	}
	if !strings.HasPrefix(LibraryCacheDir(), tmp) {
		t.Fatalf("library cache folder %s, not under %s", LibraryCacheDir(), tmp)
	}
	if toks, _ := filepath.Glob(filepath.Join(LibraryCacheDir(), "tokens", "*")); len(toks) == 0 {
		t.Errorf("no token cache under %s", LibraryCacheDir())
	}
	if !strings.HasPrefix(DefaultCacheDir(), home) {
		t.Errorf("the command's default %s is not the user's cache folder", DefaultCacheDir())
	}
}
