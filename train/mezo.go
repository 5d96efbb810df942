package train

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/qtune/qtune/checkpoint"
	"github.com/qtune/qtune/data"
	"github.com/qtune/qtune/methods/lora"
	"github.com/qtune/qtune/methods/mezo"
	"github.com/qtune/qtune/model"
	"github.com/qtune/qtune/offload/comm"
)

// Files a zeroth-order run writes besides (or instead of) a LoRA adapter.
const (
	// FloatTensorsFile holds the trained float tensors of --zo-target float
	// under their GGUF names, full values (not differences), F32.
	FloatTensorsFile = "zo_tensors.safetensors"
	// ScalesFile holds --zo-target scales: per quantized matrix T a tensor
	// "T.block_scale" of ⌈rows·cols/block⌉ F32 values r, the block of
	// elements [b·block, (b+1)·block) (row-major) scaled by (1 + r).
	ScalesFile = "zo_scales.safetensors"
)

// mezoMethod is MeZO (methods.md §2) over one of three trainable sets.
type mezoMethod struct {
	m      *model.Model
	cfg    Config
	spsa   *mezo.SPSA
	set    *lora.Set      // zo-target lora
	scales []*mezo.Scales // zo-target scales
	ad     model.Adapters // what the forward passes use
	what   string         // for Describe
	copies int64          // bytes of writable copies of float matrices
	sc     *model.Scorer  // the no-gradient forward passes
	gpu    *gpuRun        // --device cuda: the forward passes and perturbations run there
}

func (z *mezoMethod) scorer() *model.Scorer { return z.sc }

func zoConfig(cfg Config) (mezo.Config, error) {
	c := mezo.Config{Epsilon: cfg.Epsilon, LR: cfg.ZOLearningRate, WeightDecay: cfg.WeightDecay, N: cfg.Perturbations, Seed: cfg.Seed}
	return c, c.Validate()
}

// zoLoRA makes the LoRA set MeZO perturbs: no dropout (MeZO evaluates in
// eval mode) and no gradient buffers (zeroth-order parameters never get one).
func zoLoRA(m *model.Model, cfg Config) (*lora.Set, error) {
	targets, err := lora.ParseTargets(cfg.Targets)
	if err != nil {
		return nil, err
	}
	return lora.New(m, lora.Config{Rank: cfg.Rank, Alpha: cfg.Alpha, Targets: targets, Layers: cfg.NumLayers, Seed: cfg.Seed, NoGrads: true,
		Alloc: cfg.tensors.slabTensors(m)})
}

// loraTensors lists LoRA factors as MeZO tensors (decay applies).
func loraTensors(ls []*lora.Layer) []mezo.Tensor {
	ts := make([]mezo.Tensor, 0, 2*len(ls))
	for _, l := range ls {
		ts = append(ts, mezo.Tensor{Name: l.Target + ".lora_a", Data: l.A, Decay: true, Shape: []int{l.R, l.In}},
			mezo.Tensor{Name: l.Target + ".lora_b", Data: l.B, Decay: true, Shape: []int{l.Out, l.R}})
	}
	return ts
}

func newMeZOMethod(m *model.Model, cfg Config) (Method, error) {
	zc, err := zoConfig(cfg)
	if err != nil {
		return nil, err
	}
	mm := &mezoMethod{m: m, cfg: cfg, sc: m.NewScorer()}
	var ts []mezo.Tensor
	switch cfg.ZOTarget {
	case "lora", "":
		if mm.set, err = zoLoRA(m, cfg); err != nil {
			return nil, err
		}
		ts = loraTensors(mm.set.Layers)
		mm.ad = mm.set.ByPos
		mm.what = fmt.Sprintf("LoRA factors of %d matrices (rank %d, scale %.3g, B = 0 at start: the first steps move A and B both)",
			len(mm.set.Layers), cfg.Rank, cfg.Alpha/float64(cfg.Rank))
	case "float":
		var restore func()
		if ts, restore, err = mezo.FloatTensors(m, mezo.FloatOptions{Matrices: true, Layers: cfg.NumLayers, Alloc: cfg.tensors.alloc(m)}); err != nil {
			return nil, err
		}
		// The copies are slabs: the model gets its own matrices back (and
		// its norms their values) before they go; the trained tensors are
		// in the saved files.
		if cfg.tensors != nil {
			cfg.tensors.onFree(restore)
		}
		norms, mats := 0, 0
		for _, t := range ts {
			if len(t.Shape) == 2 {
				mats++
				mm.copies += 4 * int64(len(t.Data))
			} else {
				norms++
			}
		}
		mm.what = fmt.Sprintf("%d RMSNorm weights and %d float matrices (writable F32 copies, %.1f MiB; quantized matrices stay frozen)",
			norms, mats, float64(mm.copies)/(1<<20))
	case "scales":
		if mm.scales, mm.ad, err = mezo.NewScaleSet(m, cfg.NumLayers, cfg.tensors.alloc(m)); err != nil {
			return nil, err
		}
		for _, s := range mm.scales {
			ts = append(ts, mezo.Tensor{Name: s.Target + ".block_scale", Data: s.R})
		}
		mm.what = fmt.Sprintf("block scales of %d quantized matrices (codes kept; each adapted matrix is decoded twice per forward)", len(mm.scales))
	default:
		return nil, fmt.Errorf("train: zo target %q is not available (lora, float, scales)", cfg.ZOTarget)
	}
	if mm.spsa, err = mezo.New(ts, zc, m.Pool()); err != nil {
		return nil, err
	}
	return mm, nil
}

func (z *mezoMethod) Describe() string {
	c := z.cfg
	return fmt.Sprintf("mezo: %d trainable values (%.3f%% of %d): %s; SPSA n=%d, ε=%g, η=%g (constant), weight decay %g; keeps the values only (no gradients, activations or optimizer state; z regenerated from a per-step seed); %d forward passes per step",
		z.Trainable(), 100*float64(z.Trainable())/float64(z.m.Config.Params()), z.m.Config.Params(), z.what,
		c.Perturbations, c.Epsilon, c.ZOLearningRate, c.WeightDecay, 2*c.Perturbations)
}

func (z *mezoMethod) Trainable() int64 { return z.spsa.Params() }

func (z *mezoMethod) StateBytes() int64 {
	if z.cfg.ZOTarget == "float" {
		return z.copies // norms are part of the model already
	}
	return 4 * z.spsa.Params()
}

// batchLoss returns the closure that evaluates the mean loss of the
// step's micro-batches without gradients, and their token count. The
// closure checks ctx before each micro-batch (SPSA undoes its perturbation
// when it fails).
//
// Data-parallel (g not nil), each rank evaluates its share of the
// micro-batches and the sums are added over the ranks: one float64 per
// evaluation.
func batchLoss(ctx context.Context, m *model.Model, it int, batches []data.Batch, ad model.Adapters, g comm.Comm) (func() (float64, error), int, error) {
	total, err := stepTargets(it, batches)
	if err != nil {
		return nil, 0, err
	}
	o := model.StepOptions{Adapters: ad}
	return meanLoss(ctx, it, batches, total, g, func(b data.Batch) (float64, error) {
		s, _, err := m.LossGrad(b.Tokens, b.Targets, b.B, b.T, o, false, 0)
		return s, err
	}), total, nil
}

// meanLoss is a zeroth-order evaluation of a step: loss(b) summed over the
// rank's share of the micro-batches (ctx checked before each), summed over
// the ranks, per target token.
func meanLoss(ctx context.Context, it int, batches []data.Batch, total int, g comm.Comm, loss func(data.Batch) (float64, error)) func() (float64, error) {
	mine := myBatches(batches, g)
	return func() (float64, error) {
		var sum float64
		for k, b := range mine {
			if err := stepCancelled(ctx, it, k, len(mine)); err != nil {
				return 0, err
			}
			s, err := loss(b)
			if err != nil {
				return 0, err
			}
			passDone("step")
			sum += s
		}
		sum, err := reduceLoss(g, it, sum)
		if err != nil {
			return 0, err
		}
		return sum / float64(total), nil
	}
}

// reduceLoss sums a loss over the ranks (as is with one process).
func reduceLoss(g comm.Comm, it int, sum float64) (float64, error) {
	if g == nil {
		return sum, nil
	}
	s := []float64{sum}
	if err := g.AllReduceSum64(s); err != nil {
		return 0, fmt.Errorf("train: iteration %d: summing the loss over %d ranks: %w", it, g.Size(), err)
	}
	return s[0], nil
}

// drawsLoss is the step's reported loss: the mean of L(θ±εz) over draws,
// as a sum over n tokens.
func drawsLoss(ds []mezo.Draw, n int) float64 {
	var s float64
	for _, d := range ds {
		s += (d.Plus + d.Minus) / 2
	}
	return s / float64(len(ds)) * float64(n)
}

func (z *mezoMethod) Step(ctx context.Context, it int, batches []data.Batch, _ float64) (float64, int, error) {
	total, err := stepTargets(it, batches)
	if err != nil {
		return 0, 0, err
	}
	// Checked before every micro-batch of every perturbed evaluation: a
	// cancelled evaluation fails, Estimate undoes its perturbation, and no
	// update is applied.
	// Data-parallel: each rank evaluates its share of the micro-batches and
	// the sums are added over the ranks (one float64 per evaluation), so
	// every rank sees the same losses and makes the same update.
	if z.gpu != nil {
		return z.stepGPU(ctx, it, batches, total)
	}
	loss := meanLoss(ctx, it, batches, total, z.cfg.parallel(), func(b data.Batch) (float64, error) {
		s, _, err := z.sc.Loss(b.Tokens, b.Targets, b.B, b.T, z.ad)
		return s, err
	})
	ds, err := z.spsa.Step(it, loss)
	if err != nil {
		return 0, 0, fmt.Errorf("train: iteration %d: %w", it, err)
	}
	return drawsLoss(ds, total), total, nil
}

// stepGPU is Step with the forward passes and the perturbations on the
// device (the LoRA factors' copies there, the float tensors' and the
// embedding on the host, or the block scales'); the update is the host's,
// on the host's tensors, which are copied over at the start of each step
// (so the device's ±ε rounding never accumulates).
func (z *mezoMethod) stepGPU(ctx context.Context, it int, batches []data.Batch, total int) (float64, int, error) {
	r := z.gpu
	if err := r.push(); err != nil {
		return 0, 0, fmt.Errorf("train: iteration %d: %w", it, err)
	}
	var perturb mezo.Perturber
	var err error
	if z.cfg.ZOTarget == "float" || z.cfg.ZOTarget == "scales" {
		perturb = r.perturbPairs(r.floats, z.spsa)
	} else if perturb, err = r.perturber(z.set.Layers); err != nil {
		return 0, 0, err
	}
	ds, err := z.spsa.EstimateWith(it, r.evalLoss(ctx, it, batches, total, z.cfg.parallel()), perturb)
	if err != nil {
		return 0, 0, fmt.Errorf("train: iteration %d: %w", it, err)
	}
	z.spsa.Update(ds)
	return drawsLoss(ds, total), total, nil
}

func (z *mezoMethod) Eval() (model.StepOptions, func()) {
	return model.StepOptions{Adapters: z.ad}, func() {}
}

// StepActivations and StepWorkspace are what one step needs besides the
// model and the method's state, for the planner: MeZO's forward passes run
// on a model.Scorer, whose buffers (the residual stream and one block's
// keys and values for every position, one chunk's working set) are all it
// holds; no workspace besides.
func (z *mezoMethod) StepActivations(B, T int, _ bool) int64 { return z.m.Config.ScoreBytes(B * T) }

func (z *mezoMethod) StepWorkspace(_, _ int) int64 { return 0 }

// ActivationsNote says what StepActivations are, for the plan.
func (z *mezoMethod) ActivationsNote() string {
	return fmt.Sprintf("no-gradient forward: residual stream and one block's keys and values per position, %d positions at a time through the block", model.ScoreRows)
}

func spsaTensors(prefix string, s *mezo.SPSA) []checkpoint.Tensor {
	ts := make([]checkpoint.Tensor, len(s.Tensors))
	for i, t := range s.Tensors {
		ts[i] = checkpoint.Tensor{Name: prefix + t.Name, Shape: []int{len(t.Data)}, Data: t.Data}
	}
	return ts
}

func loadSPSA(prefix string, s *mezo.SPSA, ts []checkpoint.Tensor) error {
	by := map[string][]float32{}
	for _, t := range ts {
		by[t.Name] = t.Data
	}
	for _, t := range s.Tensors {
		v, ok := by[prefix+t.Name]
		if !ok || len(v) != len(t.Data) {
			return fmt.Errorf("%s%s does not match this run's shapes (target, rank or layers changed?)", prefix, t.Name)
		}
		copy(t.Data, v)
	}
	return nil
}

func (z *mezoMethod) Tensors() []checkpoint.Tensor { return spsaTensors("zo/", z.spsa) }

// Load restores the state and refuses values that, finite, would still
// overflow the forward (a state's 1e38 passes its NaN check).
func (z *mezoMethod) Load(ts []checkpoint.Tensor) error {
	if err := loadSPSA("zo/", z.spsa, ts); err != nil {
		return err
	}
	switch z.cfg.ZOTarget {
	case "scales":
		for _, s := range z.scales {
			if err := s.CheckRange(); err != nil {
				return err
			}
		}
	case "float":
		for _, t := range z.spsa.Tensors {
			if err := mezo.CheckTensor(t); err != nil {
				return err
			}
		}
	default:
		return checkLoRARange(z.set.Layers)
	}
	return nil
}

func (z *mezoMethod) Save(dir string) error {
	switch z.cfg.ZOTarget {
	case "float":
		if err := mezo.WriteTensors(filepath.Join(dir, FloatTensorsFile), z.spsa.Tensors, map[string]string{"format": "qtune-float-tensors"}); err != nil {
			return err
		}
	case "scales":
		if err := mezo.WriteTensors(filepath.Join(dir, ScalesFile), z.spsa.Tensors, map[string]string{"format": "qtune-block-scales"}); err != nil {
			return err
		}
	default:
		return WriteAdapters(dir, z.m, z.set, z.cfg)
	}
	return writeRunConfig(dir, z.cfg)
}

func writeRunConfig(dir string, cfg Config) error {
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "qtune_config.json"), b, 0o644)
}
