package train

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"

	"github.com/qtune/qtune/checkpoint"
	"github.com/qtune/qtune/data"
	"github.com/qtune/qtune/kernels/cuda"
	"github.com/qtune/qtune/methods/lora"
	"github.com/qtune/qtune/methods/loreml"
	"github.com/qtune/qtune/model"
	"github.com/qtune/qtune/optim"
)

// loremlMethod is LoReML (methods.md §4): iterations 1..stage1 train
// low-rank scores like LoRA; the first iteration after them forms the mask
// and the frozen warm start, and the rest train only the kept entries of a
// sparse delta and the norms with AdamW.
type loremlMethod struct {
	m      *model.Model
	cfg    Config
	lc     loreml.Config
	stage1 int             // iterations of stage 1
	plan   loreml.Estimate // sizes of both stages

	// stage 1 (nil once stage 2 has begun)
	scores *lora.Set
	p1     []*optim.Param
	opt1   optim.Optimizer

	// stage 2 (nil before)
	set  *loreml.Set
	p2   []*optim.Param
	opt2 optim.Optimizer

	// --device cuda: the passes run there; gpuStage is the stage whose
	// adapters the device holds (0: none yet).
	gpu      *gpuRun
	gpuStage int
}

// stage2DeviceBytes bounds what stage 2 puts on the device: per matrix its
// sparse delta (values, gradient, CSR and column indices: 20 bytes per
// kept entry and the offsets) and warm start factors (with the buffers a
// device LoRA keeps), the trained norms' gradients, and the warm start's
// product scratch.
func (l *loremlMethod) stage2DeviceBytes() int64 {
	var n int64
	for t := range l.m.Config.Layers {
		for mod := model.Module(0); mod < model.NumModules; mod++ {
			if l.scores != nil && l.scores.ByPos[t][mod] == nil || l.set != nil && l.set.ByPos[t][mod] == nil {
				continue
			}
			w := l.m.Layers[t].Matrix(mod)
			k := int64(float64(w.Rows) * float64(w.Cols) * l.lc.KeepRatio)
			n += 20*k + 4*int64(w.Rows+w.Cols+2) + 16*int64(l.lc.Rank)*int64(w.Rows+w.Cols)
		}
	}
	return n + 4*l.plan.NormValues + 8*int64(l.cfg.BatchSize*l.cfg.MaxSeqLength*l.lc.Rank)
}

func newLoReMLMethod(m *model.Model, cfg Config) (Method, error) {
	targets, err := lora.ParseTargets(cfg.Targets)
	if err != nil {
		return nil, err
	}
	lc := loreml.Config{Rank: cfg.Rank, Alpha: cfg.Alpha, Dropout: cfg.Dropout, Targets: targets, Layers: cfg.NumLayers,
		Seed: cfg.Seed, KeepRatio: cfg.KeepRatio, WarmStart: cfg.WarmStart, Alloc: cfg.tensors.alloc(m)}
	s1 := cfg.Stage1Iters
	if s1 <= 0 {
		s1 = max(1, cfg.Iters/10)
	}
	if s1 >= cfg.Iters {
		return nil, fmt.Errorf("train: loreml: stage 1 takes %d of %d iterations; stage 2 needs at least one (lower --stage1-iters)", s1, cfg.Iters)
	}
	plan, err := loreml.Plan(m, lc)
	if err != nil {
		return nil, err
	}
	scores, err := lora.New(m, lora.Config{Rank: lc.Rank, Alpha: lc.Alpha, Dropout: lc.Dropout, Targets: lc.Targets, Layers: lc.Layers, Seed: lc.Seed,
		Alloc: cfg.tensors.slabTensors(m)})
	if err != nil {
		return nil, err
	}
	loreml.InitScores(lc.Seed, scoreViews(scores))
	l := &loremlMethod{m: m, cfg: cfg, lc: lc, stage1: s1, plan: plan, scores: scores, p1: loraParams(scores), opt1: newOptimizer(cfg)}
	cfg.moments.want(stateBytes(l.opt1, paramLens(l.p1)...))
	return l, nil
}

// paramLens lists the parameters' lengths.
func paramLens(ps []*optim.Param) []int {
	lens := make([]int, len(ps))
	for i, p := range ps {
		lens[i] = len(p.W)
	}
	return lens
}

// laterSlabs: stage 1's optimizer state, then stage 2's delta and warm
// start per matrix, its gradients and its optimizer state.
func (l *loremlMethod) laterSlabs() int { return 3 + 2*l.plan.Matrices }

// dropTraining returns what stage 1 trains with: the scores' gradients
// (one slab) and the optimizer's state.
func (l *loremlMethod) dropTraining() {
	for i, ly := range l.scores.Layers {
		if i == 0 {
			l.cfg.tensors.drop(ly.GA)
		}
		ly.GA, ly.GB = nil, nil
	}
	l.opt1, l.p1 = nil, nil
	if l.cfg.moments != nil {
		l.cfg.moments.free()
	}
}

// dropScores returns the scores' values (one slab; a warm start has its
// copies): stage 1 is gone.
func (l *loremlMethod) dropScores() {
	if len(l.scores.Layers) > 0 {
		l.cfg.tensors.drop(l.scores.Layers[0].A)
	}
	l.scores = nil
}

// scoreViews shows LoRA layers as LoReML scores: B (Out, R) is U, A (R, In)
// is V (the slices are shared).
func scoreViews(set *lora.Set) []loreml.Score {
	sc := make([]loreml.Score, len(set.Layers))
	for i, l := range set.Layers {
		sc[i] = loreml.Score{Target: l.Target, Out: l.Out, In: l.In, R: l.R, U: l.B, V: l.A}
	}
	return sc
}

// stage2Optimizer is AdamW with the paper's weight decay 0.1 (or
// --weight-decay when set above 0); with --optimizer sgd, SGD as configured.
func (l *loremlMethod) stage2Optimizer() optim.Optimizer {
	if l.cfg.Optimizer == "sgd" {
		return newOptimizer(l.cfg)
	}
	wd := loreml.Stage2WeightDecay
	if l.cfg.WeightDecay > 0 {
		wd = l.cfg.WeightDecay
	}
	a := optim.NewAdamW(0.9, 0.999, 1e-8, wd)
	if l.cfg.moments != nil {
		a.Store = l.cfg.moments
	}
	return a
}

func (l *loremlMethod) stage1Bytes() int64 {
	return 8*l.plan.ScoreParams + newOptimizer(l.cfg).StateBytes(l.plan.ScoreParams)
}

func (l *loremlMethod) stage2Bytes() int64 {
	return l.plan.Stage2Bytes(l.lc.WarmStart > 0)
}

func (l *loremlMethod) Describe() string {
	c := l.m.Config
	mib := func(b int64) float64 { return float64(b) / (1 << 20) }
	now := "stage 1"
	if l.set != nil {
		now = "stage 2"
	}
	return fmt.Sprintf("loreml (now in %s): stage 1 (iterations 1–%d) trains rank-%d scores on %d matrices, %d parameters (%.3f%% of %d), scale %.3g, %s, %.2f MiB with grads and moments; "+
		"stage 2 (iterations %d–%d) keeps %d entries (%.3g%% of %d per matrix, top |U·V|) + %d norm values, frozen warm start %.3g·U·V, AdamW (wd %.3g), %.2f MiB (value+grad+2 moments+int32 column per entry, %d row offsets)",
		now, l.stage1, l.lc.Rank, l.plan.Matrices, l.plan.ScoreParams, 100*float64(l.plan.ScoreParams)/float64(c.Params()), c.Params(),
		l.lc.Alpha/float64(l.lc.Rank), newOptimizer(l.cfg).Name(), mib(l.stage1Bytes()),
		l.stage1+1, l.cfg.Iters, l.plan.Kept, 100*l.lc.KeepRatio, l.plan.Weights, l.plan.NormValues, l.lc.WarmStart,
		l.stage2WD(), mib(l.stage2Bytes()), l.plan.RowPtrs)
}

func (l *loremlMethod) stage2WD() float64 {
	if l.cfg.WeightDecay > 0 {
		return l.cfg.WeightDecay
	}
	return loreml.Stage2WeightDecay
}

// Trainable is the current stage's trainable values.
func (l *loremlMethod) Trainable() int64 {
	if l.set != nil {
		return l.set.Kept() + l.set.NormValues()
	}
	return l.plan.ScoreParams
}

// StateBytes is the larger of the two stages; at the transition the scores'
// factors (without grads and moments) briefly coexist with stage 2.
func (l *loremlMethod) StateBytes() int64 {
	return max(l.stage1Bytes(), 4*l.plan.ScoreParams+l.stage2Bytes())
}

// transition forms stage 2 from the scores and frees stage 1.
func (l *loremlMethod) transition() error {
	l.dropTraining()
	set, err := loreml.Build(l.m, l.lc, scoreViews(l.scores))
	if err != nil {
		return err
	}
	l.dropScores()
	return l.enterStage2(set)
}

func (l *loremlMethod) enterStage2(set *loreml.Set) error {
	if err := set.AllocGrads(); err != nil {
		return err
	}
	l.set = set
	l.p2 = nil
	for _, a := range set.Matrices {
		if a.Delta.K() > 0 {
			l.p2 = append(l.p2, &optim.Param{Name: a.Target + ".delta", W: a.Delta.Val, G: a.Delta.Grad, Decay: true})
		}
	}
	for _, n := range set.Norms {
		l.p2 = append(l.p2, &optim.Param{Name: n.Name, W: n.W, G: n.G})
	}
	l.opt2 = l.stage2Optimizer()
	l.cfg.moments.want(stateBytes(l.opt2, paramLens(l.p2)...))
	return nil
}

func (l *loremlMethod) Step(ctx context.Context, it int, batches []data.Batch, lr float64) (float64, int, error) {
	if it > l.stage1 && l.set == nil {
		// Not begun once cancelled: the state saved stays stage 1's.
		if err := stepCancelled(ctx, it, 0, len(batches)); err != nil {
			return 0, 0, err
		}
		if err := l.transition(); err != nil {
			return 0, 0, fmt.Errorf("train: iteration %d: %w", it, err)
		}
	}
	total, err := stepTargets(it, batches)
	if err != nil {
		return 0, 0, err
	}
	if l.gpu != nil {
		return l.stepGPU(ctx, it, batches, lr, total)
	}
	var o model.StepOptions
	var params []*optim.Param
	var opt optim.Optimizer
	if l.set == nil {
		l.scores.SetStep(it)
		o = model.StepOptions{Adapters: l.scores.ByPos, Checkpoint: l.cfg.GradCheckpoint}
		params, opt = l.p1, l.opt1
	} else {
		o = model.StepOptions{Adapters: l.set.ByPos, Checkpoint: l.cfg.GradCheckpoint, WeightGrads: l.set.NormGrads()}
		params, opt = l.p2, l.opt2
	}
	optim.ZeroGrad(params)
	// Data-parallel: the rank's share of the micro-batches, the gradients
	// (scores' or stage 2's) summed once per step; the mask is then formed
	// from equal scores on every rank.
	g := l.cfg.parallel()
	loss, n, err := batchGrad(ctx, l.m, it, myBatches(batches, g), o, total)
	if err != nil {
		return 0, 0, err
	}
	if loss, n, err = reduceStep(g, it, params, loss, n); err != nil {
		return 0, 0, err
	}
	if l.cfg.MaxGradNorm > 0 {
		optim.ClipGradNorm(params, l.cfg.MaxGradNorm)
	}
	return loss, n, opt.Step(params, lr)
}

// stepAdapters are the adapters LossGrad runs (for the plan's scratch):
// the mask scores until the mask is formed, then the stage-2 set.
func (l *loremlMethod) stepAdapters() []model.Adapters {
	var out []model.Adapters
	if l.scores != nil {
		out = append(out, l.scores.ByPos)
	}
	if l.set != nil {
		out = append(out, l.set.ByPos)
	}
	return out
}

// syncGPU makes the device hold the current stage's adapters: stage 1's
// scores as LoRA layers; stage 2's sparse deltas beside their frozen warm
// starts, and its trained norms with device gradients.
func (l *loremlMethod) syncGPU() error {
	stage := 1
	if l.set != nil {
		stage = 2
	}
	r := l.gpu
	if l.gpuStage == stage {
		return nil
	}
	r.freeAdapters()
	l.gpuStage = 0
	if stage == 1 {
		if err := r.adaptLoRA(l.scores); err != nil {
			return err
		}
		l.gpuStage = 1
		return nil
	}
	for t := range l.set.ByPos {
		for mod, a := range l.set.ByPos[t] {
			x, ok := a.(*loreml.Matrix)
			if !ok {
				continue
			}
			sp, err := model.NewGPUSparse(r.d, x.Out, x.In, x.Delta.RowPtr, x.Delta.Col, x.Delta.Val, x.Delta.Grad != nil)
			if err != nil {
				return err
			}
			r.sparse = append(r.sparse, sparsePair{x.Delta.Val, x.Delta.Grad, sp})
			stack := model.GPUStack{sp}
			if w := x.Warm; w != nil {
				wl, err := model.NewGPULoRA(r.d, w.In, w.Out, w.R, w.Scale, w.V, w.U)
				if err != nil {
					return err
				}
				wl.NoGrad = true // frozen: only its output and input gradient count
				r.pairs = append(r.pairs, gpuPair{&lora.Layer{Target: x.Target, A: w.V, B: w.U}, wl})
				stack = append(stack, wl)
			}
			r.ad[t][mod] = stack
		}
	}
	dw := map[string]*cuda.Buffer{}
	for _, n := range l.set.Norms {
		dev := r.g.NormWeight(n.Name)
		if dev == nil {
			return fmt.Errorf("train: loreml: the norm %s has no copy on the GPU", n.Name)
		}
		g, err := r.d.Alloc(int64(4 * len(n.W)))
		if err != nil {
			return err
		}
		r.norms = append(r.norms, normPair{n.W, n.G, dev, g})
		dw[n.Name] = g
	}
	r.g.SetNormGrads(dw)
	l.gpuStage = 2
	return nil
}

// stepGPU is Step with the passes on the device: the current stage's
// adapters (and in stage 2 the norms) copied over, their gradients pulled
// back, the optimizer the host's.
func (l *loremlMethod) stepGPU(ctx context.Context, it int, batches []data.Batch, lr float64, total int) (float64, int, error) {
	if err := l.syncGPU(); err != nil {
		return 0, 0, fmt.Errorf("train: iteration %d: %w", it, err)
	}
	params, opt := l.p2, l.opt2
	if l.set == nil {
		l.scores.SetStep(it)
		params, opt = l.p1, l.opt1
	}
	optim.ZeroGrad(params)
	r := l.gpu
	if err := r.push(); err != nil {
		return 0, 0, fmt.Errorf("train: iteration %d: %w", it, err)
	}
	g := l.cfg.parallel()
	loss, n, err := r.gradSteps(ctx, it, myBatches(batches, g), total)
	if err != nil {
		return 0, 0, err
	}
	if loss, n, err = reduceStep(g, it, params, loss, n); err != nil {
		return 0, 0, err
	}
	if l.cfg.MaxGradNorm > 0 {
		optim.ClipGradNorm(params, l.cfg.MaxGradNorm)
	}
	return loss, n, opt.Step(params, lr)
}

func (l *loremlMethod) Eval() (model.StepOptions, func()) {
	if l.set != nil {
		return model.StepOptions{Adapters: l.set.ByPos}, func() {}
	}
	for _, ly := range l.scores.Layers {
		ly.Dropout = 0
	}
	return model.StepOptions{Adapters: l.scores.ByPos}, func() {
		for _, ly := range l.scores.Layers {
			ly.Dropout = float32(l.lc.Dropout)
		}
	}
}

// Checkpoint names: "loreml/stage" holds 1 or 2. Stage 1 keeps the scores
// as <target>.lora_a (V) and .lora_b (U); stage 2 keeps per matrix
// <target>.delta.idx_hi / .idx_lo (the flat indices' upper and lower 16 bits,
// exact in float32), .delta.values, .warm.u / .warm.v, and the norms under
// their own names. Both add the optimizer's moments under "optim/".
const stageTensor = "loreml/stage"

func (l *loremlMethod) Tensors() []checkpoint.Tensor {
	if l.set == nil {
		ts := []checkpoint.Tensor{{Name: stageTensor, Shape: []int{1}, Data: []float32{1}}}
		for _, ly := range l.scores.Layers {
			ts = append(ts,
				checkpoint.Tensor{Name: ly.Target + ".lora_a", Shape: []int{ly.R, ly.In}, Data: ly.A},
				checkpoint.Tensor{Name: ly.Target + ".lora_b", Shape: []int{ly.Out, ly.R}, Data: ly.B})
		}
		return append(ts, optimTensors(l.opt1)...)
	}
	ts := []checkpoint.Tensor{{Name: stageTensor, Shape: []int{1}, Data: []float32{2}}}
	for _, a := range l.set.Matrices {
		idx := a.Delta.Indices()
		hi, lo := make([]float32, len(idx)), make([]float32, len(idx))
		for i, x := range idx {
			hi[i], lo[i] = float32(x>>16), float32(x&0xffff)
		}
		k := len(idx)
		if k > 0 { // a matrix too small to keep an entry has no delta tensors
			ts = append(ts,
				checkpoint.Tensor{Name: a.Target + ".delta.idx_hi", Shape: []int{k}, Data: hi},
				checkpoint.Tensor{Name: a.Target + ".delta.idx_lo", Shape: []int{k}, Data: lo},
				checkpoint.Tensor{Name: a.Target + ".delta.values", Shape: []int{k}, Data: a.Delta.Val})
		}
		if a.Warm != nil {
			ts = append(ts,
				checkpoint.Tensor{Name: a.Target + ".warm.u", Shape: []int{a.Out, a.Warm.R}, Data: a.Warm.U},
				checkpoint.Tensor{Name: a.Target + ".warm.v", Shape: []int{a.Warm.R, a.In}, Data: a.Warm.V})
		}
	}
	for _, n := range l.set.Norms {
		ts = append(ts, checkpoint.Tensor{Name: n.Name, Shape: []int{len(n.W)}, Data: n.W})
	}
	return append(ts, optimTensors(l.opt2)...)
}

func (l *loremlMethod) Load(ts []checkpoint.Tensor) error {
	by := map[string][]float32{}
	for _, t := range ts {
		by[t.Name] = t.Data
	}
	st := by[stageTensor]
	if len(st) != 1 || (st[0] != 1 && st[0] != 2) {
		return fmt.Errorf("loreml: the state has no stage (not a loreml run?)")
	}
	if st[0] == 1 {
		if l.set != nil {
			return fmt.Errorf("loreml: cannot go back from stage 2 to a stage-1 state")
		}
		for _, ly := range l.scores.Layers {
			a, b := by[ly.Target+".lora_a"], by[ly.Target+".lora_b"]
			if len(a) != len(ly.A) || len(b) != len(ly.B) {
				return fmt.Errorf("loreml: scores of %s do not match this run's shapes (rank or targets changed?)", ly.Target)
			}
			copy(ly.A, a)
			copy(ly.B, b)
		}
		return loadOptim(l.opt1, ts)
	}
	var parts []loreml.Part
	for _, name := range l.targets() {
		hi, lo, vals := by[name+".delta.idx_hi"], by[name+".delta.idx_lo"], by[name+".delta.values"]
		if len(hi) != len(lo) || len(hi) != len(vals) {
			return fmt.Errorf("loreml: the state's delta of %s is missing or inconsistent", name)
		}
		p := loreml.Part{Target: name, Indices: make([]int32, len(hi)), Values: vals}
		for i := range hi {
			h, w := hi[i], lo[i]
			if h < 0 || h >= 1<<15 || w < 0 || w >= 1<<16 || h != float32(math.Trunc(float64(h))) || w != float32(math.Trunc(float64(w))) {
				return fmt.Errorf("loreml: the state's index %d of %s is not an integer", i, name)
			}
			p.Indices[i] = int32(h)<<16 | int32(w)
		}
		if u, v := by[name+".warm.u"], by[name+".warm.v"]; u != nil || v != nil {
			p.Rank, p.U, p.V = l.lc.Rank, u, v
		}
		if (p.Rank > 0) != (l.lc.WarmStart > 0) {
			return fmt.Errorf("loreml: the state's warm start of %s does not match --warm-start %g", name, l.lc.WarmStart)
		}
		parts = append(parts, p)
	}
	norms := map[string][]float32{}
	for _, n := range loreml.NormNames(l.m, l.lc) {
		v, ok := by[n]
		if !ok {
			return fmt.Errorf("loreml: the state lacks norm %s", n)
		}
		norms[n] = v
	}
	set, err := loreml.NewSet(l.m, l.lc, parts, norms)
	if err != nil {
		return err
	}
	if l.scores != nil {
		l.dropTraining()
		l.dropScores()
	}
	if err := l.enterStage2(set); err != nil {
		return err
	}
	return loadOptim(l.opt2, ts)
}

// targets lists the adapted matrices in (layer, module) order.
func (l *loremlMethod) targets() []string {
	var ns []string
	first := 0
	if nl := l.m.Config.Layers; l.lc.Layers > 0 && l.lc.Layers < nl {
		first = nl - l.lc.Layers
	}
	for li := first; li < l.m.Config.Layers; li++ {
		for _, mod := range l.lc.Targets {
			ns = append(ns, model.TensorName(li, mod))
		}
	}
	return ns
}

// Save writes loreml_delta.safetensors (methods/loreml.FileName) and
// qtune_config.json. A run that ends inside stage 1 saves the mask its scores
// give, with a zero delta (the warm start alone).
func (l *loremlMethod) Save(dir string) error {
	set := l.set
	if set == nil {
		// on the heap: a save's passing copy, beside stage 1's slabs
		lc := l.lc
		lc.Alloc = nil
		var err error
		if set, err = loreml.Build(l.m, lc, scoreViews(l.scores)); err != nil {
			return err
		}
	}
	if err := set.Save(dir, l.m, l.cfg.Model); err != nil {
		return err
	}
	b, err := json.MarshalIndent(l.cfg, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "qtune_config.json"), b, 0o644)
}
