package train

import (
	"context"
	"runtime/debug"
	"testing"
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
