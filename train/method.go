package train

import (
	"context"
	"fmt"
	"strings"
	"time"
	"unsafe"

	"github.com/qtune/qtune/budget"
	"github.com/qtune/qtune/checkpoint"
	"github.com/qtune/qtune/data"
	"github.com/qtune/qtune/methods/lora"
	"github.com/qtune/qtune/model"
	"github.com/qtune/qtune/offload"
	"github.com/qtune/qtune/offload/comm"
	"github.com/qtune/qtune/optim"
)

// Method is an update rule as the loop sees it: what is trainable and how
// one iteration changes it. Each method lives in methods/<name>; its glue to
// the loop is a file of this package, listed in newMethod.
type Method interface {
	// Describe is a line for the log: what is trained, how many parameters.
	Describe() string
	// Trainable is the number of trainable values.
	Trainable() int64
	// StateBytes is the memory the method keeps besides the model (its
	// parameters, gradients, optimizer state), for the plan.
	StateBytes() int64
	// Step runs iteration it (1-based) over the micro-batches of one
	// optimizer step with learning rate lr, updates the parameters, and
	// returns the summed loss and the number of predicted tokens. It checks
	// ctx before every forward pass; cancelled, it returns an error wrapping
	// ctx.Err() and leaves the parameters and optimizer state as they were
	// before the step (zeroth-order perturbations are undone, which is exact
	// up to float rounding), so that the state of iteration it-1 can be
	// saved and resumed.
	Step(ctx context.Context, it int, batches []data.Batch, lr float64) (loss float64, n int, err error)
	// Eval prepares the model for evaluation (adapters applied, no
	// dropout) and returns the options LossGrad needs; done undoes it.
	Eval() (o model.StepOptions, done func())
	// Tensors and Load are the resumable state (parameters and optimizer
	// moments) under stable names.
	Tensors() []checkpoint.Tensor
	Load(ts []checkpoint.Tensor) error
	// Save writes the result in the formats other tools read.
	Save(dir string) error
}

// newMethod builds the method cfg names (an explicit table, no registry).
func newMethod(m *model.Model, cfg Config) (Method, error) {
	switch cfg.Method {
	case "lora", "qlora":
		return newLoRAMethod(m, cfg)
	case "mezo":
		return newMeZOMethod(m, cfg)
	case "loho", "loho-inter":
		return newLoHOMethod(m, cfg, false)
	case "loho-intra":
		return newLoHOMethod(m, cfg, true)
	case "loreml":
		return newLoReMLMethod(m, cfg)
	}
	return nil, fmt.Errorf("train: method %q is not available (%s)", cfg.Method, strings.Join(Methods, ", "))
}

// Methods lists the methods Run accepts.
var Methods = []string{"lora", "qlora", "mezo", "loho", "loho-inter", "loho-intra", "loreml"}

func newOptimizer(cfg Config) optim.Optimizer {
	if cfg.Optimizer == "sgd" {
		o := optim.NewSGD(cfg.Momentum, cfg.WeightDecay, false)
		if cfg.moments != nil {
			o.Store = cfg.moments
		}
		return o
	}
	a := optim.NewAdamW(0.9, 0.999, 1e-8, cfg.WeightDecay)
	if cfg.moments != nil {
		a.Store = cfg.moments
	}
	return a
}

// slabMoments keeps the optimizer's state (AdamW's moments, SGD's momentum)
// in one slab of the model's accountant instead of on the Go heap, carved
// into each parameter's buffers. left bytes of it are made at the first
// Alloc: the plan's "optimizer state" booking, which becomes the slab
// (booked), or, for a method whose plan counts its moments with the rest
// of its state (LoHO, LoReML), the size the method gives with want. free
// returns the slab when the run ends or a method changes stage.
type slabMoments struct {
	m      *model.Model
	left   int64     // bytes not yet a slab
	booked bool      // left is booked as optimizer state until the slab is made
	buf    []float32 // the slab's values not handed out yet
	held   slabSet
}

// want sets the state's size for a method that books it with its tensors:
// n bytes, made at the first Alloc.
func (s *slabMoments) want(n int64) {
	if s != nil && !s.booked {
		s.left = n
	}
}

func (s *slabMoments) Alloc(n int) ([]float32, error) {
	if s.buf == nil && s.left >= 4*int64(n) && s.m.Acct != nil {
		if s.booked {
			s.m.Acct.Release(budget.OptimizerState, -1, s.left)
		}
		v, err := s.m.Acct.Floats(budget.OptimizerState, -1, int(s.left/4))
		if err != nil {
			if s.booked {
				s.m.Acct.Reserve(budget.OptimizerState, -1, s.left) // as it was (the step fails)
			}
			return nil, err
		}
		s.held.add(s.m.Acct, v)
		s.buf, s.left, s.booked = v, 0, false
	}
	if n > len(s.buf) {
		return make([]float32, n), nil
	}
	v := s.buf[:n:n]
	s.buf = s.buf[min((n+15)&^15, len(s.buf)):]
	return v, nil
}

// Evict does nothing: the moments stay in memory.
func (s *slabMoments) Evict([]float32) {}

func (s *slabMoments) free() {
	s.held.free()
	s.buf = nil
	if s.booked {
		s.m.Acct.Release(budget.OptimizerState, -1, s.left)
	}
	s.left, s.booked = 0, false
}

// stateBytes is what opt's state takes in a slabMoments for params of
// these lengths (each buffer 64-byte aligned, as Alloc carves them).
func stateBytes(opt optim.Optimizer, lens ...int) int64 {
	var n int64
	for _, l := range lens {
		n += int64((l + 15) &^ 15)
	}
	return opt.StateBytes(n)
}

// slabSet is the slabs a run holds until it ends, each with the accountant
// it came from (a buffer made without one is heap memory, left to the
// collector), and what must happen before they go (a model put back as it
// was, since its matrices were copies in them).
type slabSet struct {
	held []struct {
		a *budget.Accountant
		v []float32
	}
	before []func()
}

func (s *slabSet) add(a *budget.Accountant, v []float32) {
	s.held = append(s.held, struct {
		a *budget.Accountant
		v []float32
	}{a, v})
}

// onFree runs f before the slabs go (last added first).
func (s *slabSet) onFree(f func()) { s.before = append(s.before, f) }

func (s *slabSet) free() {
	if s == nil {
		return
	}
	for i := len(s.before) - 1; i >= 0; i-- {
		s.before[i]()
	}
	s.before = nil
	for _, h := range s.held {
		h.a.Free(h.v) // a nil accountant's heap buffer is left to the collector
	}
	s.held = nil
}

// drop frees the slab that holds v's first value (a stage's tensors that
// the method no longer uses); a v the set does not hold is left alone.
func (s *slabSet) drop(v []float32) {
	if s == nil || len(v) == 0 {
		return
	}
	p := uintptr(unsafe.Pointer(unsafe.SliceData(v)))
	for i, h := range s.held {
		lo := uintptr(unsafe.Pointer(unsafe.SliceData(h.v)))
		if len(h.v) > 0 && p >= lo && p < lo+4*uintptr(len(h.v)) {
			h.a.Free(h.v)
			s.held = append(s.held[:i], s.held[i+1:]...)
			return
		}
	}
}

// count is the number of slabs held: each books up to a page more than
// its values (the plan adds it).
func (s *slabSet) count() int {
	if s == nil {
		return 0
	}
	return len(s.held)
}

// alloc gives a method's tensors slabs of the model's accountant (booked
// to cat while held) in place of the Go heap; nil (no set) takes the heap.
func (s *slabSet) alloc(m *model.Model) model.Alloc {
	if s == nil {
		return nil
	}
	return func(cat budget.Category, n int) ([]float32, error) {
		v, err := m.Acct.Floats(cat, -1, n)
		if err != nil {
			return nil, err
		}
		s.add(m.Acct, v)
		return v, nil
	}
}

// slabTensors is alloc in the form lora.Config.Alloc takes: values booked
// as trainable parameters, gradients as gradients.
func (s *slabSet) slabTensors(m *model.Model) func(n int, grads bool) ([]float32, error) {
	if s == nil {
		return nil
	}
	a := s.alloc(m)
	return func(n int, grads bool) ([]float32, error) {
		if grads {
			return a(budget.Gradients, n)
		}
		return a(budget.Trainable, n)
	}
}

// loraMethod is first-order LoRA (QLoRA on an NF4 base): backward through
// the frozen base, gradients for A and B, an optimizer step.
type loraMethod struct {
	m      *model.Model
	cfg    Config
	set    *lora.Set
	params []*optim.Param
	opt    optim.Optimizer
	gpu    *gpuRun // the device side with --device cuda; nil on the CPU
	// Data-parallel: whether the CPU step's sums start in its backward
	// pass (overlapSums, decided once), the time steps waited for their
	// sums after the backward pass, and how many steps (sumsLine).
	overlap  bool
	sumWait  time.Duration
	sumSteps int
}

// sumsLine says, after a data-parallel run on the CPU, how long a step
// waited for the ranks' sums once its backward pass was done: what
// --overlap-sums changes.
func (l *loraMethod) sumsLine() string {
	if l.sumSteps == 0 {
		return ""
	}
	_, why := l.cfg.overlapSums()
	return fmt.Sprintf("data-parallel: a step waited %.1f ms for the sums after its backward pass (mean of %d steps); gradients summed %s",
		float64(l.sumWait.Microseconds())/1e3/float64(l.sumSteps), l.sumSteps, why)
}

// reduce sums a step's LoRA gradients over the ranks block by block (the
// sums the backward pass began finish here; the GPU step starts them all
// now), so that every rank, on the CPU or a GPU, overlapping or not, makes
// the same collectives; then the loss and token count.
func (l *loraMethod) reduce(g comm.Comm, it int, sums *blockSums, loss float64, n int) (float64, int, error) {
	if g == nil {
		return loss, n, nil
	}
	t0 := time.Now()
	if sums == nil && l.set.Grads() != nil {
		sums = newBlockSums(g, l.set.BlockGrads, l.m.Config.Layers)
	}
	if sums != nil {
		if err := sums.finish(it); err != nil {
			return 0, 0, err
		}
	}
	loss, n, err := reduceStep(g, it, nil, loss, n)
	l.sumWait += time.Since(t0)
	l.sumSteps++
	return loss, n, err
}

func newLoRAMethod(m *model.Model, cfg Config) (*loraMethod, error) {
	targets, err := lora.ParseTargets(cfg.Targets)
	if err != nil {
		return nil, err
	}
	lc := lora.Config{Rank: cfg.Rank, Alpha: cfg.Alpha, Dropout: cfg.Dropout, Targets: targets, Layers: cfg.NumLayers, Seed: cfg.Seed,
		Alloc: cfg.tensors.slabTensors(m)}
	set, err := lora.New(m, lc)
	if err != nil {
		return nil, err
	}
	lm := &loraMethod{m: m, cfg: cfg, set: set, opt: newOptimizer(cfg)}
	lm.overlap, _ = cfg.overlapSums()
	lm.params = loraParams(set)
	// Run books the plan's optimizer-state item in place of this (the same
	// size, or none when the moments go to disk).
	cfg.moments.want(stateBytes(lm.opt, paramLens(lm.params)...))
	return lm, nil
}

// loraParams lists a set's A and B as optimizer parameters.
func loraParams(set *lora.Set) []*optim.Param {
	ps := make([]*optim.Param, 0, 2*len(set.Layers))
	for _, l := range set.Layers {
		ps = append(ps, &optim.Param{Name: l.Target + ".lora_a", W: l.A, G: l.GA, Decay: true},
			&optim.Param{Name: l.Target + ".lora_b", W: l.B, G: l.GB, Decay: true})
	}
	return ps
}

func (l *loraMethod) Describe() string {
	c := l.m.Config
	return fmt.Sprintf("%s: %d trainable parameters (%.3f%% of %d) in %d adapted matrices, rank %d, scale %.3g, %s",
		l.cfg.Method, l.set.Params(), 100*float64(l.set.Params())/float64(c.Params()), c.Params(), len(l.set.Layers),
		l.cfg.Rank, l.cfg.Alpha/float64(l.cfg.Rank), l.opt.Name())
}

func (l *loraMethod) Trainable() int64 { return l.set.Params() }

func (l *loraMethod) StateBytes() int64 {
	return 8*l.set.Params() + l.opt.StateBytes(l.set.Params())
}

func (l *loraMethod) Step(ctx context.Context, it int, batches []data.Batch, lr float64) (float64, int, error) {
	l.set.SetStep(it)
	if l.gpu != nil {
		return l.stepGPU(ctx, it, batches, lr)
	}
	optim.ZeroGrad(l.params)
	total, err := stepTargets(it, batches)
	if err != nil {
		return 0, 0, err
	}
	o := model.StepOptions{Adapters: l.set.ByPos, Checkpoint: l.cfg.GradCheckpoint}
	g := l.cfg.parallel()
	// Summed block by block whether or not during the backward pass, so
	// that ranks which decide the overlap differently (a free core on one
	// machine, none on another) still make the same collectives.
	var sums *blockSums
	if g != nil && l.set.Grads() != nil {
		sums = newBlockSums(g, l.set.BlockGrads, l.m.Config.Layers)
		if l.overlap {
			o.LayerDone = sums.done
		}
	}
	loss, n, err := batchGrad(ctx, l.m, it, myBatches(batches, g), o, total)
	if err != nil {
		return 0, 0, err
	}
	if loss, n, err = l.reduce(g, it, sums, loss, n); err != nil {
		return 0, 0, err
	}
	if l.cfg.MaxGradNorm > 0 {
		optim.ClipGradNorm(l.params, l.cfg.MaxGradNorm)
	}
	return loss, n, l.opt.Step(l.params, lr)
}

// stepAdapters are the adapters LossGrad runs (for the plan's scratch).
func (l *loraMethod) stepAdapters() []model.Adapters { return []model.Adapters{l.set.ByPos} }

func (l *loraMethod) Eval() (model.StepOptions, func()) {
	for _, ly := range l.set.Layers {
		ly.Dropout = 0
	}
	return model.StepOptions{Adapters: l.set.ByPos}, func() {
		for _, ly := range l.set.Layers {
			ly.Dropout = float32(l.set.Config.Dropout)
		}
	}
}

func (l *loraMethod) Tensors() []checkpoint.Tensor {
	var ts []checkpoint.Tensor
	for _, ly := range l.set.Layers {
		ts = append(ts,
			checkpoint.Tensor{Name: ly.Target + ".lora_a", Shape: []int{ly.R, ly.In}, Data: ly.A},
			checkpoint.Tensor{Name: ly.Target + ".lora_b", Shape: []int{ly.Out, ly.R}, Data: ly.B})
	}
	return append(ts, optimTensors(l.opt)...)
}

func (l *loraMethod) Load(ts []checkpoint.Tensor) error {
	by := map[string][]float32{}
	for _, t := range ts {
		by[t.Name] = t.Data
	}
	mine := map[string]bool{}
	for _, ly := range l.set.Layers {
		mine[ly.Target+".lora_a"], mine[ly.Target+".lora_b"] = true, true
	}
	for _, t := range ts { // a saved adapter this run would drop
		if !strings.HasPrefix(t.Name, "optim/") && !mine[t.Name] {
			return fmt.Errorf("saved adapter tensor %s is not trained by this run (targets or layers changed?)", t.Name)
		}
	}
	for _, ly := range l.set.Layers {
		a, b := by[ly.Target+".lora_a"], by[ly.Target+".lora_b"]
		if len(a) != len(ly.A) || len(b) != len(ly.B) {
			return fmt.Errorf("adapter %s does not match this run's shapes (rank or targets changed?)", ly.Target)
		}
		copy(ly.A, a)
		copy(ly.B, b)
	}
	if l.gpu != nil && l.gpu.opt != nil { // copied over at the next step
		l.gpu.opt.hostNewer, l.gpu.opt.devNewer = true, false
	}
	return loadOptim(l.opt, ts)
}

func (l *loraMethod) Save(dir string) error {
	if err := l.pullGPU(); err != nil {
		return err
	}
	return WriteAdapters(dir, l.m, l.set, l.cfg)
}

// pullGPU brings what the device's optimizer stepped (the factors, their
// moments) back to the host.
func (l *loraMethod) pullGPU() error {
	if l.gpu == nil {
		return nil
	}
	return l.gpu.opt.pull(l.gpu.d)
}

// optimTensors and loadOptim keep an optimizer's moments in a checkpoint
// under "optim/<name>".
func optimTensors(o optim.Optimizer) []checkpoint.Tensor {
	var ts []checkpoint.Tensor
	var store optim.MomentStore
	if a, ok := o.(*optim.AdamW); ok {
		store = a.Store
	}
	for _, s := range o.State() {
		t := checkpoint.Tensor{Name: "optim/" + s.Name, Shape: []int{len(s.Data)}, Data: s.Data}
		if store != nil { // moments on disk: back out of memory once saved
			d := s.Data
			t.Written = func() { store.Evict(d) }
		}
		ts = append(ts, t)
	}
	return ts
}

func loadOptim(o optim.Optimizer, ts []checkpoint.Tensor) error {
	var st []optim.StateTensor
	for _, t := range ts {
		if strings.HasPrefix(t.Name, "optim/") {
			st = append(st, optim.StateTensor{Name: t.Name[len("optim/"):], Data: t.Data})
		}
	}
	return o.LoadState(st)
}

// optimizerOnDisk is implemented by methods whose optimizer state can move
// to a file-backed scratch (the plan's "optimizer state on disk").
type optimizerOnDisk interface {
	// OptimizerBytes is the optimizer state in total and the largest share
	// one parameter needs at once.
	OptimizerBytes() (total, largest int64)
	// MoveOptimizerToDisk keeps the optimizer's moments in a scratch file
	// in dir from now on.
	MoveOptimizerToDisk(dir string) error
}

func (l *loraMethod) OptimizerBytes() (int64, int64) {
	if _, ok := l.opt.(*optim.AdamW); !ok {
		return 0, 0
	}
	var largest int64
	for _, p := range l.params {
		largest = max(largest, int64(len(p.W)))
	}
	return l.opt.StateBytes(l.set.Params()), 8 * largest
}

func (l *loraMethod) MoveOptimizerToDisk(dir string) error {
	a, ok := l.opt.(*optim.AdamW)
	if !ok {
		return fmt.Errorf("train: only AdamW state can move to disk")
	}
	total, _ := l.OptimizerBytes()
	s, err := offload.NewScratch(dir, total+int64(64*len(l.params))+4096)
	if err != nil {
		return err
	}
	a.Store = s
	return nil
}

// stepTargets is the number of predicted tokens in a step's micro-batches;
// a step with none is an error.
func stepTargets(it int, batches []data.Batch) (int, error) {
	total := 0
	for _, b := range batches {
		total += b.NumTargets()
	}
	if total == 0 {
		return 0, fmt.Errorf("train: iteration %d has no tokens to predict (check --max-seq-length and the data)", it)
	}
	return total, nil
}

// batchGrad runs the forward and backward pass of each micro-batch,
// accumulating gradients scaled by 1/total (so they sum to the step's
// mean), and returns the summed loss and predicted tokens. It checks ctx
// before each micro-batch; cancelled, the gradients are partial and the
// caller applies no update.
func batchGrad(ctx context.Context, m *model.Model, it int, batches []data.Batch, o model.StepOptions, total int) (float64, int, error) {
	var loss float64
	var n int
	for k, b := range batches {
		if err := stepCancelled(ctx, it, k, len(batches)); err != nil {
			return 0, 0, err
		}
		ob := o
		if k < len(batches)-1 {
			ob.LayerDone = nil // the gradients are whole after the last pass
		}
		s, c, err := m.LossGrad(b.Tokens, b.Targets, b.B, b.T, ob, true, 1/float64(total))
		if err != nil {
			return 0, 0, fmt.Errorf("train: iteration %d: %w", it, err)
		}
		passDone("step")
		loss += s
		n += c
	}
	return loss, n, nil
}

// stepCancelled is the check before micro-batch k of n of iteration it.
// It is also where a micro-batch's progress is reported.
func stepCancelled(ctx context.Context, it, k, n int) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("train: iteration %d stopped before micro-batch %d of %d: %w", it, k+1, n, err)
	}
	reportMicroBatch(ctx, it, k, n)
	return nil
}

// testHookPass, when set (by tests), is called after each forward pass of
// the long loops, with where it ran: "step" (a micro-batch of a training
// step; for zeroth-order methods, one of its perturbed evaluations), "val"
// (a validation batch) and "eval" (a window of EvalLM, a record of
// EvalClassify). Tests count the passes that run after a cancellation.
var testHookPass func(phase string)

func passDone(phase string) {
	if testHookPass != nil {
		testHookPass(phase)
	}
}
