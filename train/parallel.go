package train

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"

	"github.com/qtune/qtune/data"
	"github.com/qtune/qtune/internal/fsx"
	"github.com/qtune/qtune/offload/comm"
	"github.com/qtune/qtune/optim"
)

// Data-parallel training (Config.Comm with several ranks, `mpirun -np N
// qtune train …`): every rank reads the same data in the same order and
// takes the micro-batches of each step whose index is its rank modulo the
// ranks. First-order gradients (LoRA's and QLoRA's, LoHO's first-order
// part, LoReML's scores and stage 2) and the step's loss and token count
// are summed over the ranks once per step (reduceStep, per tensor; the
// group sends at most comm.BucketFloats values a message). LoRA's (on the
// CPU) are summed a block at a time (blockSums), started as the step's
// last backward pass finishes each block where a core is free for MPI
// (overlapSums), so the sums overlap the blocks below, else after it; a
// zeroth-order evaluation
// (MeZO, LoHO's zeroth-order part) sums one float64 (meanLoss), since z is
// regenerated from the seed on every rank. Every rank then applies the same
// update to the same values, so the adapters stay equal without being
// sent. Rank 0 writes the adapter folder; the others write theirs into a
// temporary folder that is removed at the end. Run starts the ranks
// together (one collective: a rank that cannot start says so). The result
// equals the single-process run with the same --grad-accumulation-steps up
// to the order of the gradient sums.

// parallel is the run's group, or nil for one process.
func (c *Config) parallel() comm.Comm {
	if c.Comm == nil || c.Comm.Size() <= 1 {
		return nil
	}
	return c.Comm
}

// checkParallel refuses what data-parallel runs do not do yet.
func (c *Config) checkParallel() error {
	if c.parallel() == nil {
		return nil
	}
	switch c.Method {
	case "lora", "qlora", "mezo", "loho", "loho-intra", "loreml":
	default:
		return fmt.Errorf("train: method %s runs in one process only", c.Method)
	}
	return nil
}

// overlapSums reports whether a data-parallel LoRA step starts each block's
// gradient sum as its backward pass finishes the block, and why, for the
// plan. MPI's thread spins on a core while a sum waits for the other
// ranks' data, so overlapping pays only where a core is free for it: on 2
// cores running 2 ranks of one compute thread each, over a 1 Gbit/s link,
// it hid the sums (the wait after the backward pass fell from 179–185 to
// 14–17 ms a step) and the steps were no faster (the README's figures).
func (c *Config) overlapSums() (bool, string) {
	g := c.parallel()
	if g == nil {
		return false, ""
	}
	switch c.OverlapSums {
	case "on":
		return true, "during the backward pass, block by block (--overlap-sums on)"
	case "off":
		return false, "after the backward pass (--overlap-sums off)"
	}
	// NumCPU is the cores this process may run on (a launcher that binds
	// ranks to cores gives each its own); counting every rank on the
	// machine against them is right when they are not bound and cautious
	// when they are. A GOMAXPROCS the runtime chose says nothing: it is
	// NumCPU, or less under a container's CPU limit, which leaves no core
	// free either; only one the user set below the cores leaves one.
	cores, procs, local := runtime.NumCPU(), runtime.GOMAXPROCS(0), g.LocalSize()
	if os.Getenv("GOMAXPROCS") != "" && cores > local*procs {
		return true, fmt.Sprintf("during the backward pass, block by block (%d ranks on this machine computing on GOMAXPROCS=%d threads each, %d cores: one is free for MPI's thread)", local, procs, cores)
	}
	hint := "--overlap-sums on overlaps them anyway"
	if p := (cores - 1) / local; p >= 1 {
		hint = fmt.Sprintf("GOMAXPROCS=%d leaves one, --overlap-sums on overlaps them anyway", p)
	}
	return false, fmt.Sprintf("after the backward pass (%d ranks on this machine computing on %d threads each, %d cores: no core left free for MPI's thread, which spins while a sum waits; %s)",
		local, procs, cores, hint)
}

// myBatches is rank r's share of a step's micro-batches.
func myBatches(batches []data.Batch, g comm.Comm) []data.Batch {
	if g == nil {
		return batches
	}
	var mine []data.Batch
	for i := g.Rank(); i < len(batches); i += g.Size() {
		mine = append(mine, batches[i])
	}
	return mine
}

// reduceStep sums each parameter's gradient (LoRA's go by blocks:
// loraMethod.reduce), then the step's loss and token count, over the ranks.
func reduceStep(g comm.Comm, it int, params []*optim.Param, loss float64, n int) (float64, int, error) {
	if g == nil {
		return loss, n, nil
	}
	for _, p := range params {
		if p.G == nil {
			continue
		}
		if err := g.AllReduceSum(p.G[:len(p.W)]); err != nil {
			return 0, 0, fmt.Errorf("train: iteration %d: summing gradients over %d ranks: %w", it, g.Size(), err)
		}
	}
	s := []float64{loss, float64(n)}
	if err := g.AllReduceSum64(s); err != nil {
		return 0, 0, fmt.Errorf("train: iteration %d: summing the loss over %d ranks: %w", it, g.Size(), err)
	}
	return s[0], int(s[1]), nil
}

// blockSums sums a LoRA set's gradients over the ranks block by block,
// overlapped with the backward pass where overlapSums says so: done
// (model.StepOptions.LayerDone on the rank's last micro-batch) starts the
// sums of the blocks the pass has finished, finish starts the rest and
// waits for all. Every rank starts the same sums in the same order (blocks
// from the last down, during its pass or after it), as the collectives
// require.
type blockSums struct {
	g     comm.Comm
	grads func(l int) []float32
	next  int // the blocks from next up have been started
	waits []func() error
}

func newBlockSums(g comm.Comm, grads func(l int) []float32, layers int) *blockSums {
	return &blockSums{g: g, grads: grads, next: layers}
}

// done starts the sums of blocks l and above not yet started.
func (b *blockSums) done(l int) {
	for b.next > max(l, 0) {
		b.next--
		if gr := b.grads(b.next); len(gr) > 0 {
			b.waits = append(b.waits, b.g.StartAllReduceSum(gr))
		}
	}
}

// testHookBlockSums, when set (by tests), is told at the end of each step
// how many block sums the backward pass started and how many there were.
var testHookBlockSums func(inPass, all int)

// finish starts what is left and waits for every sum.
func (b *blockSums) finish(it int) error {
	inPass := len(b.waits)
	b.done(0)
	if testHookBlockSums != nil {
		testHookBlockSums(inPass, len(b.waits))
	}
	var first error
	for _, w := range b.waits {
		if err := w(); err != nil && first == nil {
			first = fmt.Errorf("train: iteration %d: summing gradients over %d ranks: %w", it, b.g.Size(), err)
		}
	}
	return first
}

// rankFolder gives a rank other than 0 its own adapter folder (a
// temporary one, holding rank 0's saved state when resuming) and returns
// what removes it.
func rankFolder(cfg *Config) (func(), error) {
	g := cfg.parallel()
	if g == nil || g.Rank() == 0 {
		return func() {}, nil
	}
	dir, err := os.MkdirTemp("", fmt.Sprintf("qtune-rank%d-", g.Rank()))
	if err != nil {
		return nil, fmt.Errorf("train: rank %d's folder: %w", g.Rank(), err)
	}
	if cfg.Resume {
		if err := copyFile(filepath.Join(cfg.AdapterPath, stateFile), filepath.Join(dir, stateFile)); err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("train: rank %d resuming from rank 0's state: %w", g.Rank(), err)
		}
	}
	cfg.AdapterPath = dir
	return func() { os.RemoveAll(dir) }, nil
}

func copyFile(from, to string) error {
	in, err := fsx.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	return fsx.WriteFile(to, func(w io.Writer) error { _, err := io.Copy(w, in); return err })
}
