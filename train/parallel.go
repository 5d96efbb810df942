package train

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

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
// are summed over the ranks once per step (reduceStep: LoRA's gradients in
// one call over their one allocation, others per tensor; the group sends
// at most comm.BucketFloats values a message); a zeroth-order evaluation
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

// reduceStep sums the step's gradients, loss and token count over the
// ranks: grads, when the method keeps every gradient in one allocation
// (LoRA's set), in one call that the group makes in buckets
// (comm.BucketFloats); else each parameter's.
func reduceStep(g comm.Comm, it int, grads []float32, params []*optim.Param, loss float64, n int) (float64, int, error) {
	if g == nil {
		return loss, n, nil
	}
	fail := func(err error) (float64, int, error) {
		return 0, 0, fmt.Errorf("train: iteration %d: summing gradients over %d ranks: %w", it, g.Size(), err)
	}
	if grads != nil {
		if err := g.AllReduceSum(grads); err != nil {
			return fail(err)
		}
	} else {
		for _, p := range params {
			if p.G == nil {
				continue
			}
			if err := g.AllReduceSum(p.G[:len(p.W)]); err != nil {
				return fail(err)
			}
		}
	}
	s := []float64{loss, float64(n)}
	if err := g.AllReduceSum64(s); err != nil {
		return 0, 0, fmt.Errorf("train: iteration %d: summing the loss over %d ranks: %w", it, g.Size(), err)
	}
	return s[0], int(s[1]), nil
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
