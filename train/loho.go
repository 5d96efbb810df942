package train

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/qtune/qtune/budget"
	"github.com/qtune/qtune/checkpoint"
	"github.com/qtune/qtune/data"
	"github.com/qtune/qtune/kernels"
	"github.com/qtune/qtune/methods/loho"
	"github.com/qtune/qtune/methods/lora"
	"github.com/qtune/qtune/methods/mezo"
	"github.com/qtune/qtune/model"
	"github.com/qtune/qtune/optim"
)

// lohoMethod is LoHO (methods.md §3). Inter-layer: first-order on the LoRA
// factors of the deepest N blocks, MeZO on the LoRA factors of the blocks
// below, backprop stopped at block L−N. Intra-layer: first-order on a
// sparse delta at a seeded mask of each adapted matrix, MeZO on the same
// matrices' LoRA factors (see methods/loho's doc for why not on ¬M).
type lohoMethod struct {
	m     *model.Model
	cfg   Config
	intra bool
	set   *lora.Set      // every adapted matrix's LoRA factors
	ad    model.Adapters // what the forward passes use
	first int            // lowest block the backward reaches
	foN   int            // inter: first-order blocks
	why   string         // how foN was chosen
	fo    []*optim.Param
	opt   optim.Optimizer
	zo    *mezo.SPSA // nil when the zeroth-order set is empty
	sp    []*loho.Sparse
	// intra with --zo-target complement: the zeroth-order part is a dense
	// float32 delta per matrix, trained at the entries outside the mask.
	complement bool
	dense      []*loho.Dense
	zoVal      int64 // zeroth-order entries (¬M) of the dense deltas
	denseBytes int64
	denseMax   int64         // the largest dense delta's bytes
	est        int64         // inter: the plan's estimate for foN
	foVal      int64         // first-order values
	nnzIx      int64         // CSR index bytes of the sparse deltas
	zoLayers   []*lora.Layer // inter: the zeroth-order factors, in the estimator's order
	gpu        *gpuRun       // --device cuda (inter): the passes and perturbations run there
}

// loraDx is a zeroth-order LoRA layer inside the first-order part of the
// network: its output and its input gradient count, it gets no gradient.
type loraDx struct {
	l    *lora.Layer
	pool *kernels.Pool
}

func (d loraDx) Forward(y, x []float32, M int) { d.l.Forward(y, x, M) }

// Backward adds dx += s·(dy·B)·A only.
func (d loraDx) Backward(dx, dy, x []float32, M int) {
	if dx == nil {
		return
	}
	l := d.l
	dh := make([]float32, M*l.R)
	kernels.MatMulT(d.pool, dh, dy, M, mezo.F32Matrix(l.B, l.Out, l.R))
	for i := range dh {
		dh[i] *= l.Scale
	}
	kernels.MatMulT(d.pool, dx, dh, M, mezo.F32Matrix(l.A, l.R, l.In))
}

// layerOf returns the block index of a GGUF block tensor name.
func layerOf(target string) int {
	s := strings.TrimPrefix(target, "blk.")
	n, _ := strconv.Atoi(s[:strings.IndexByte(s, '.')])
	return n
}

func newLoHOMethod(m *model.Model, cfg Config, intra bool) (Method, error) {
	if cfg.ZOTarget == "" {
		cfg.ZOTarget = "lora"
		if intra {
			cfg.ZOTarget = DefaultZOTarget("loho-intra")
		}
	}
	zc, err := zoConfig(cfg)
	if err != nil {
		return nil, err
	}
	targets, err := lora.ParseTargets(cfg.Targets)
	if err != nil {
		return nil, err
	}
	// Gradients only for the first-order blocks' factors, made below (the
	// zeroth-order ones never have any).
	alloc := cfg.tensors.alloc(m)
	set, err := lora.New(m, lora.Config{Rank: cfg.Rank, Alpha: cfg.Alpha, Targets: targets, Layers: cfg.NumLayers, Seed: cfg.Seed, NoGrads: true,
		Alloc: cfg.tensors.slabTensors(m)})
	if err != nil {
		return nil, err
	}
	if len(set.Layers) == 0 {
		return nil, fmt.Errorf("train: loho: no matrices to adapt")
	}
	h := &lohoMethod{m: m, cfg: cfg, intra: intra, set: set, opt: newOptimizer(cfg)}
	L := m.Config.Layers
	lowest := layerOf(set.Layers[0].Target) // lowest adapted block
	var zoLayers []*lora.Layer
	var zoTensors []mezo.Tensor
	if intra {
		if !(cfg.FORatio > 0 && cfg.FORatio <= 1) {
			return nil, fmt.Errorf("train: loho-intra: --fo-ratio %g out of (0, 1]", cfg.FORatio)
		}
		switch cfg.ZOTarget {
		case "complement":
			h.complement = true
		case "lora":
		default:
			return nil, fmt.Errorf("train: loho-intra: zo target %q is not available (complement, lora)", cfg.ZOTarget)
		}
		h.first = lowest
		h.ad = make(model.Adapters, L)
		for _, l := range set.Layers {
			s, err := loho.NewSparse(l.Target, l.Out, l.In, cfg.FORatio, cfg.Seed, true, m.Pool(), alloc)
			if err != nil {
				return nil, err
			}
			h.sp = append(h.sp, s)
			h.fo = append(h.fo, &optim.Param{Name: l.Target + ".sparse", W: s.Val, G: s.Grad, Decay: true})
			h.foVal += int64(s.Nnz())
			h.nnzIx += 4*int64(s.Nnz()) + 4*int64(s.Out+1)
			var zo model.Adapter = loraDx{l, m.Pool()}
			if h.complement && cfg.FORatio < 1 {
				d, err := loho.NewDense(l.Target, l.Out, l.In, cfg.FORatio, cfg.Seed, m.Pool(), alloc)
				if err != nil {
					return nil, err
				}
				h.dense = append(h.dense, d)
				h.zoVal += int64(l.Out*l.In - s.Nnz()) // the entries outside the mask, which NewSparse counted
				h.denseBytes += 4 * int64(len(d.Val))
				h.denseMax = max(h.denseMax, 4*int64(len(d.Val)))
				zoTensors = append(zoTensors, mezo.Tensor{Name: l.Target + ".zo_delta", Data: d.Val, Decay: true,
					Shape: []int{l.Out, l.In}, Mask: d.ZeroMasked})
				zo = d
			}
			li := layerOf(l.Target)
			for mod := model.Module(0); mod < model.NumModules; mod++ {
				if set.ByPos[li][mod] == l {
					if h.complement && cfg.FORatio == 1 {
						h.ad[li][mod] = s
					} else {
						h.ad[li][mod] = loho.Stack{s, zo}
					}
				}
			}
		}
		if h.complement {
			// the LoRA factors only named the matrices
			cfg.tensors.drop(set.Layers[0].A)
			h.set = nil
		} else {
			zoLayers = set.Layers
		}
	} else {
		adapted := L - lowest
		if h.foN, h.why, err = foLayers(m, cfg, set, adapted); err != nil {
			return nil, err
		}
		h.first = L - h.foN
		h.est = lohoPlan(m, cfg, set, adapted, 0).Bytes(h.foN)
		h.ad = set.ByPos
		// The first-order blocks' gradients: one allocation.
		var lens []int
		for _, l := range set.Layers {
			if layerOf(l.Target) >= h.first {
				lens = append(lens, len(l.A), len(l.B))
			}
		}
		grads, err := alloc.Parts(budget.Gradients, lens...)
		if err != nil {
			return nil, fmt.Errorf("train: loho: gradients of the first-order blocks: %w", err)
		}
		for _, l := range set.Layers {
			if layerOf(l.Target) >= h.first {
				l.GA, l.GB, grads = grads[0], grads[1], grads[2:]
				h.fo = append(h.fo, &optim.Param{Name: l.Target + ".lora_a", W: l.A, G: l.GA, Decay: true},
					&optim.Param{Name: l.Target + ".lora_b", W: l.B, G: l.GB, Decay: true})
				h.foVal += int64(len(l.A) + len(l.B))
			} else {
				zoLayers = append(zoLayers, l)
			}
		}
	}
	if !intra && cfg.ZOTarget != "lora" {
		return nil, fmt.Errorf("train: loho-inter: zo target %q is not available (lora)", cfg.ZOTarget)
	}
	if len(zoLayers) > 0 {
		zoTensors = loraTensors(zoLayers)
		h.zoLayers = zoLayers
	}
	if len(zoTensors) > 0 {
		if h.zo, err = mezo.New(zoTensors, zc, m.Pool()); err != nil {
			return nil, err
		}
	}
	lens := make([]int, len(h.fo))
	for i, p := range h.fo {
		lens[i] = len(p.W)
	}
	cfg.moments.want(stateBytes(h.opt, lens...))
	return h, nil
}

// foLayers resolves --fo-layers for inter-layer LoHO: a number, or auto —
// the largest N whose estimate fits --max-mem, or without a budget every
// adapted block but the lowest.
func foLayers(m *model.Model, cfg Config, set *lora.Set, adapted int) (int, string, error) {
	if cfg.FOLayers != "auto" && cfg.FOLayers != "" {
		n, err := strconv.Atoi(cfg.FOLayers)
		if err != nil || n < 0 || n > adapted {
			return 0, "", fmt.Errorf("train: loho: --fo-layers %q: want auto or 0..%d (the adapted blocks)", cfg.FOLayers, adapted)
		}
		return n, "--fo-layers", nil
	}
	if cfg.MaxMem == "" {
		return max(adapted-1, 0), "auto without --max-mem: every adapted block but the lowest", nil
	}
	limit, err := budget.ParseSize(cfg.MaxMem)
	if err != nil {
		return 0, "", fmt.Errorf("train: loho: --max-mem: %w", err)
	}
	p := lohoPlan(m, cfg, set, adapted, limit)
	n, err := p.MaxFO(limit)
	if err != nil {
		return 0, "", err
	}
	n = min(n, adapted)
	return n, fmt.Sprintf("auto: largest N whose estimate %.1f MiB fits --max-mem %s", float64(p.Bytes(n))/(1<<20), cfg.MaxMem), nil
}

// lohoPlan is the inter-layer memory model for this run.
func lohoPlan(m *model.Model, cfg Config, set *lora.Set, adapted int, limit int64) loho.Plan {
	per := set.Params() / int64(max(adapted, 1)) // LoRA values per adapted block
	opt := newOptimizer(cfg)
	fo := 8*per + opt.StateBytes(per) // values, gradients, moments
	p := loho.PlanFor(m.Config, m.WeightBytes(), cfg.BatchSize, cfg.MaxSeqLength, cfg.GradCheckpoint, fo, 4*per)
	// The same runtime and data terms as the run's own plan (PlanTrain).
	p.Runtime = runtimeBytes(m) + cfg.dataBytes + 4<<20
	p.Margin = budget.Margin // kept free as the budget planner keeps it
	// The run streams the blocks when they do not fit resident beside the
	// rest (the budget planner decides the same way), not only when the
	// weights alone exceed the budget.
	if b := p.Bytes(0); limit > 0 && b+budget.Margin(b) > limit {
		var biggest int64
		for _, b := range m.LayerBytes() {
			biggest = max(biggest, b)
		}
		p.Weights = m.OutputBytes() + biggest + min(m.EmbedBytes(), 1<<20)
		if m.Config.Tied {
			p.Weights += m.EmbedBytes()
		}
	}
	return p
}

func (h *lohoMethod) zoValues() int64 {
	switch {
	case h.zo == nil:
		return 0
	case h.complement:
		return h.zoVal
	}
	return h.zo.Params()
}

// zoStateBytes is what the zeroth-order values cost: LoRA factors, or the
// dense deltas (zeros at the mask included).
func (h *lohoMethod) zoStateBytes() int64 {
	if h.complement {
		return h.denseBytes
	}
	return 4 * h.zoValues()
}

func (h *lohoMethod) Describe() string {
	c := h.cfg
	zo := fmt.Sprintf("ZO: MeZO (n=%d, ε=%g, η_ZO=%g constant) on %d LoRA values (rank %d), kept without gradients", c.Perturbations, c.Epsilon, c.ZOLearningRate, h.zoValues(), c.Rank)
	if h.complement {
		zo = fmt.Sprintf("ZO: MeZO (n=%d, ε=%g, η_ZO=%g constant) on the complementary %d entries (¬mask) of the same matrices, held in dense float32 deltas beside the quantized base (%.1f MiB), kept without gradients", c.Perturbations, c.Epsilon, c.ZOLearningRate, h.zoValues(), float64(h.denseBytes)/(1<<20))
		if h.zo == nil {
			zo = "ZO: none (--fo-ratio 1 leaves no complementary entries)"
		}
	}
	clip := ""
	if c.MaxGradNorm > 0 {
		clip = fmt.Sprintf(", clip %g", c.MaxGradNorm)
	}
	every := ""
	if c.FOEvery > 1 {
		every = fmt.Sprintf(" every %d steps", c.FOEvery)
	}
	if h.intra {
		return fmt.Sprintf("loho-intra: FO (%s%s, scheduled lr%s) on sparse deltas at a seeded %.0f%% mask of %d matrices: %d values with gradients (SDDMM, no dense gradient) and optimizer state, %.1f MiB of CSR indices; backprop from block %d; %s",
			h.opt.Name(), clip, every, 100*c.FORatio, len(h.sp), h.foVal, float64(h.nnzIx)/(1<<20), h.first, zo)
	}
	L := h.m.Config.Layers
	s := fmt.Sprintf("loho-inter: FO (%s%s, scheduled lr%s) on the LoRA factors of blocks %d..%d (N=%d of %d, %s): %d values with gradients and optimizer state, activations of those %d blocks only (backprop stops at block %d); %s on the blocks below; LoHO memory estimate %.1f MiB",
		h.opt.Name(), clip, every, h.first, L-1, h.foN, L, h.why, h.foVal, h.foN, h.first, zo, float64(h.est)/(1<<20))
	if h.foN > 0 && h.zo == nil {
		s += " (none: first-order only)"
	}
	return s
}

func (h *lohoMethod) Trainable() int64 { return h.foVal + h.zoValues() }

func (h *lohoMethod) StateBytes() int64 {
	return 8*h.foVal + h.opt.StateBytes(h.foVal) + h.nnzIx + h.zoStateBytes()
}

// StepActivations and StepWorkspace are what one step needs besides the
// model and the method's state, for the planner: one block's working set
// (the no-grad blocks) and the activations of the blocks the backward
// reaches (their inputs only with checkpointing), and the backward's
// workspace.
func (h *lohoMethod) StepActivations(B, T int, ckpt bool) int64 {
	c := h.m.Config
	one := c
	one.Layers = 1
	per := one.ActivationBytes(B, T, false)
	if ckpt {
		per = 4 * int64(B*T*c.Dim)
	}
	return one.ActivationBytes(B, T, false) + int64(c.Layers-h.first)*per
}

// With dense zeroth-order deltas a step also holds about one delta's worth
// of transient float32 (the GEMM's packed operand and the perturbation's
// draws): measured on 110M NF4 as 5-7 MiB over the plan without it.
// stepAdapters are the adapters LossGrad runs (for the plan's scratch).
func (h *lohoMethod) stepAdapters() []model.Adapters { return []model.Adapters{h.ad} }

func (h *lohoMethod) StepWorkspace(B, T int) int64 {
	return h.m.Config.StepWorkspaceBytes(B, T, true) + h.denseMax
}

func (h *lohoMethod) Step(ctx context.Context, it int, batches []data.Batch, lr float64) (float64, int, error) {
	if h.set != nil {
		h.set.SetStep(it)
	}
	// Every forward pass checks ctx; both updates come after the last, so a
	// cancelled step applies neither.
	// Data-parallel: every evaluation on the rank's share of the
	// micro-batches with its loss summed over the ranks (the zeroth-order
	// part then makes the same update everywhere from the seed), and the
	// first-order gradients summed once per step.
	if h.gpu != nil {
		return h.stepGPU(ctx, it, batches, lr)
	}
	g := h.cfg.parallel()
	loss, total, err := batchLoss(ctx, h.m, it, batches, h.ad, g)
	if err != nil {
		return 0, 0, err
	}
	// ZO estimate first (two perturbed no-grad passes per draw, θ restored).
	var ds []mezo.Draw
	if h.zo != nil {
		if ds, err = h.zo.Estimate(it, loss); err != nil {
			return 0, 0, fmt.Errorf("train: iteration %d: %w", it, err)
		}
	}
	// FO gradient on the same batch at the unperturbed values.
	foStep := len(h.fo) > 0 && (h.cfg.FOEvery <= 1 || it%h.cfg.FOEvery == 0)
	var sum float64
	if foStep {
		optim.ZeroGrad(h.fo)
		o := model.StepOptions{Adapters: h.ad, Checkpoint: h.cfg.GradCheckpoint, FirstLayer: h.first}
		var n int
		if sum, n, err = batchGrad(ctx, h.m, it, myBatches(batches, g), o, total); err != nil {
			return 0, 0, err
		}
		if sum, _, err = reduceStep(g, it, h.fo, sum, n); err != nil {
			return 0, 0, err
		}
	}
	return h.update(ds, foStep, sum, total, lr)
}

// stepGPU is Step on the device: the zeroth-order part perturbed there (z
// regenerated from the seed), the passes there with the backward stopped
// at the first first-order block, the first-order gradients pulled back.
// The updates are the host's, on the host's values, copied over at the
// start of each step; but for the dense deltas of --zo-target complement,
// as large as the matrices they adapt, which are updated on the device and
// copied back only when saved.
func (h *lohoMethod) stepGPU(ctx context.Context, it int, batches []data.Batch, lr float64) (float64, int, error) {
	r := h.gpu
	g := h.cfg.parallel()
	total, err := stepTargets(it, batches)
	if err != nil {
		return 0, 0, err
	}
	if err := r.push(); err != nil {
		return 0, 0, fmt.Errorf("train: iteration %d: %w", it, err)
	}
	var ds []mezo.Draw
	if h.zo != nil {
		var perturb mezo.Perturber
		if h.complement {
			perturb = r.perturbPairs(r.dense, nil)
		} else if perturb, err = r.perturber(h.zoLayers); err != nil {
			return 0, 0, err
		}
		if ds, err = h.zo.EstimateWith(it, r.evalLoss(ctx, it, batches, total, g), perturb); err != nil {
			return 0, 0, fmt.Errorf("train: iteration %d: %w", it, err)
		}
	}
	foStep := len(h.fo) > 0 && (h.cfg.FOEvery <= 1 || it%h.cfg.FOEvery == 0)
	var sum float64
	if foStep {
		optim.ZeroGrad(h.fo)
		n := 0
		if sum, n, err = r.gradSteps(ctx, it, myBatches(batches, g), total); err != nil {
			return 0, 0, err
		}
		if sum, _, err = reduceStep(g, it, h.fo, sum, n); err != nil {
			return 0, 0, err
		}
	}
	return h.update(ds, foStep, sum, total, lr)
}

// update applies a step's updates, zeroth order with its constant rate and
// first order with the scheduled one, and returns the step's loss.
func (h *lohoMethod) update(ds []mezo.Draw, foStep bool, sum float64, total int, lr float64) (float64, int, error) {
	if h.zo != nil {
		if h.gpu != nil && h.complement {
			if err := h.gpu.updateDense(h.zo, ds); err != nil {
				return 0, 0, err
			}
		} else {
			h.zo.Update(ds)
		}
	}
	if foStep {
		if h.cfg.MaxGradNorm > 0 {
			optim.ClipGradNorm(h.fo, h.cfg.MaxGradNorm)
		}
		if err := h.opt.Step(h.fo, lr); err != nil {
			return 0, 0, err
		}
		return sum, total, nil
	}
	return drawsLoss(ds, total), total, nil
}

func (h *lohoMethod) Eval() (model.StepOptions, func()) {
	return model.StepOptions{Adapters: h.ad}, func() {}
}

func (h *lohoMethod) Tensors() []checkpoint.Tensor {
	var ts []checkpoint.Tensor
	for _, l := range h.setLayers() {
		ts = append(ts,
			checkpoint.Tensor{Name: l.Target + ".lora_a", Shape: []int{l.R, l.In}, Data: l.A},
			checkpoint.Tensor{Name: l.Target + ".lora_b", Shape: []int{l.Out, l.R}, Data: l.B})
	}
	for _, s := range h.sp {
		ts = append(ts, checkpoint.Tensor{Name: s.Target + ".sparse", Shape: []int{len(s.Val)}, Data: s.Val})
	}
	for _, d := range h.dense {
		ts = append(ts, checkpoint.Tensor{Name: d.Target + ".zo_delta", Shape: []int{d.Out, d.In}, Data: d.Val})
	}
	return append(ts, optimTensors(h.opt)...)
}

func (h *lohoMethod) Load(ts []checkpoint.Tensor) error {
	by := map[string][]float32{}
	for _, t := range ts {
		by[t.Name] = t.Data
	}
	for _, l := range h.setLayers() {
		a, b := by[l.Target+".lora_a"], by[l.Target+".lora_b"]
		if len(a) != len(l.A) || len(b) != len(l.B) {
			return fmt.Errorf("adapter %s does not match this run's shapes (rank or targets changed?)", l.Target)
		}
		copy(l.A, a)
		copy(l.B, b)
	}
	for _, s := range h.sp {
		v := by[s.Target+".sparse"]
		if len(v) != len(s.Val) {
			return fmt.Errorf("sparse delta %s does not match this run's mask (seed or --fo-ratio changed?)", s.Target)
		}
		copy(s.Val, v)
	}
	for _, d := range h.dense {
		v := by[d.Target+".zo_delta"]
		if len(v) != len(d.Val) {
			return fmt.Errorf("dense delta %s does not match this run's shapes", d.Target)
		}
		copy(d.Val, v)
	}
	if h.gpu != nil {
		h.gpu.denseHost, h.gpu.denseDev = len(h.dense) > 0, false // copied over at the next push
	}
	// Finite values can still overflow the forward (1e38 passes the NaN
	// check): every delta is held to the bound of the saved outputs.
	if err := checkLoRARange(h.setLayers()); err != nil {
		return err
	}
	for _, s := range h.sp {
		if err := checkSparse(s); err != nil {
			return err
		}
	}
	for _, d := range h.dense {
		if err := mezo.CheckRows(d.Target+".zo_delta", d.Val, d.Out, d.In); err != nil {
			return err
		}
	}
	return loadOptim(h.opt, ts)
}

// setLayers is the LoRA layers the run trains (none when the zeroth-order
// part is the dense complement).
func (h *lohoMethod) setLayers() []*lora.Layer {
	if h.set == nil {
		return nil
	}
	return h.set.Layers
}

// pullGPU brings the values the device trained in place back to the host.
func (h *lohoMethod) pullGPU() error { return h.gpu.pullDense() }

func (h *lohoMethod) Save(dir string) error {
	if err := h.pullGPU(); err != nil {
		return err
	}
	if h.set != nil {
		if err := WriteAdapters(dir, h.m, h.set, h.cfg); err != nil {
			return err
		}
	} else if err := writeConfig(dir, h.cfg); err != nil {
		return err
	}
	if !h.intra {
		return nil
	}
	meta := map[string]string{"mask_seed": strconv.FormatUint(h.cfg.Seed, 10), "fo_ratio": strconv.FormatFloat(h.cfg.FORatio, 'g', -1, 64)}
	if err := loho.WriteSparse(filepath.Join(dir, loho.SparseFile), h.sp, meta); err != nil {
		return err
	}
	if len(h.dense) == 0 {
		return nil
	}
	ts := make([]mezo.Tensor, len(h.dense))
	for i, d := range h.dense {
		ts[i] = mezo.Tensor{Name: d.Target + ".zo_delta", Data: d.Val, Shape: []int{d.Out, d.In}}
	}
	meta["format"] = "qtune-zo-delta"
	return mezo.WriteTensors(filepath.Join(dir, loho.DenseFile), ts, meta)
}
