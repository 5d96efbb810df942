package train

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/qtune/qtune/budget"
	"github.com/qtune/qtune/checkpoint"
	"github.com/qtune/qtune/data"
	"github.com/qtune/qtune/internal/fsx"
	"github.com/qtune/qtune/kernels"
	"github.com/qtune/qtune/methods/lora"
	"github.com/qtune/qtune/model"
	"github.com/qtune/qtune/offload"
	"github.com/qtune/qtune/offload/comm"
	"github.com/qtune/qtune/optim"
	"github.com/qtune/qtune/quant"
)

// Config is a training run. Field names follow MLX-LM's flags where one
// exists (json tags are the --config keys).
type Config struct {
	Model     string `json:"model"`
	Tokenizer string `json:"tokenizer,omitempty"`
	Data      string `json:"data"`
	// ChatTemplate is a Jinja chat template file for {"messages"} data,
	// overriding the model's own (see LoadChatTemplate).
	ChatTemplate string `json:"chat_template,omitempty"`
	// ChatTemplateKwargs are further chat-template variables
	// (enable_thinking, ...), as llama.cpp's --chat-template-kwargs.
	ChatTemplateKwargs map[string]any `json:"chat_template_kwargs,omitempty"`
	Method             string         `json:"method"` // lora | qlora
	Iters              int            `json:"iters"`
	BatchSize          int            `json:"batch_size"`
	MaxSeqLength       int            `json:"max_seq_length"`
	LearningRate       float64        `json:"learning_rate"`
	NumLayers          int            `json:"num_layers"` // adapt the last N blocks; ≤0 all
	AdapterPath        string         `json:"adapter_path"`
	StepsPerReport     int            `json:"steps_per_report"`
	StepsPerEval       int            `json:"steps_per_eval"`
	ValBatches         int            `json:"val_batches"` // ≤0: the whole validation split
	SaveEvery          int            `json:"save_every"`
	GradCheckpoint     bool           `json:"grad_checkpoint"`
	Seed               uint64         `json:"seed"`
	Rank               int            `json:"rank"`
	Alpha              float64        `json:"alpha"`
	Dropout            float64        `json:"dropout"`
	Targets            string         `json:"targets"`
	Optimizer          string         `json:"optimizer"` // adamw | sgd
	WeightDecay        float64        `json:"weight_decay"`
	Momentum           float64        `json:"momentum"`
	LRSchedule         string         `json:"lr_schedule"` // constant | linear | cosine
	Warmup             int            `json:"warmup"`
	MinLR              float64        `json:"min_lr"`
	GradAccum          int            `json:"grad_accumulation_steps"`
	MaxGradNorm        float64        `json:"max_grad_norm"` // ≤0: no clipping
	Pack               bool           `json:"pack"`
	Resume             bool           `json:"resume"`
	// Restart starts over in an AdapterPath that holds a saved state (what
	// a run without Resume does, saying so unless Restart is set).
	Restart bool `json:"restart,omitempty"`
	// CacheDir holds the NF4 base, the token caches and scratch files ("":
	// LibraryCacheDir, a temporary folder; the qtune command gives
	// DefaultCacheDir, the user's cache folder).
	CacheDir string `json:"cache_dir,omitempty"`

	// Zeroth-order and hybrid methods (methods.md §2–4).
	ZOLearningRate float64 `json:"zo_learning_rate"` // MeZO/LoHO ZO step size (constant)
	Epsilon        float64 `json:"epsilon"`          // SPSA perturbation scale
	Perturbations  int     `json:"perturbations"`    // n-SPSA draws per step
	ZOTarget       string  `json:"zo_target"`        // mezo: lora | float | scales; loho-intra: complement | lora; "": the method's default
	FOLayers       string  `json:"fo_layers"`        // loho inter: N deepest blocks first-order, or "auto"
	FORatio        float64 `json:"fo_ratio"`         // loho intra: share of entries trained first-order
	FOEvery        int     `json:"fo_every"`         // loho: first-order update every k steps
	KeepRatio      float64 `json:"keep_ratio"`       // loreml: share of weights kept trainable
	Stage1Iters    int     `json:"stage1_iters"`     // loreml: iterations of score learning
	WarmStart      float64 `json:"warm_start"`       // loreml: γ of W ← W + γ·S
	MaxMem         string  `json:"max_mem,omitempty"`
	// Device runs the micro-batches on "cpu" (the default), "cuda" /
	// "cuda:N" (an NVIDIA GPU, an error without one) or "auto" (the GPU
	// when there is one and the run is one it takes, else the CPU).
	Device string `json:"device,omitempty"`
	// MaxVRAM caps what the run allocates on the GPU ("": the GPU's
	// memory); GPUPrecision is the products' input type there: bf16
	// (default) or f32.
	MaxVRAM      string `json:"max_vram,omitempty"`
	GPUPrecision string `json:"gpu_precision,omitempty"`
	// Comm, with more than one rank, makes the run data-parallel
	// (parallel.go): the qtune command sets it under mpirun.
	Comm comm.Comm `json:"-"`
	// OverlapSums says when a data-parallel LoRA step sums its gradients:
	// "on", block by block during the backward pass; "off", after it;
	// "auto" or "" (default), during it when this machine has a core
	// beyond those its ranks compute on (overlapSums).
	OverlapSums string `json:"overlap_sums,omitempty"`
	// DryRun stops after the memory plan (qtune plan train).
	DryRun bool `json:"-"`
	// PhaseReports adds KindPhase and KindMicroBatch reports to Run's
	// progress (for a UI; the CLI prints only steps and validations).
	PhaseReports bool `json:"-"`

	// dataBytes is what the run's data holds in memory (DataMem.Bytes), set
	// by Run once the token caches are open, for plans made before its own.
	dataBytes int64
	// moments, when set, keeps AdamW's moments in slabs of the model's
	// accountant (newOptimizer); Run sets it.
	moments *slabMoments
	// tensors, when set, holds LoRA's values and gradients as slabs of the
	// model's accountant (newLoRAMethod, zoLoRA); Run sets it for lora,
	// qlora and MeZO on LoRA factors, whose whole state they are.
	tensors *slabSet
	// onGPU: the steps run on the GPU (Run decides before the plan), so the
	// host plan books none of their activations and workspace.
	onGPU bool
}

// Defaults returns MLX-LM's defaults where they exist, QLoRA's otherwise.
func Defaults() Config {
	return Config{Method: "lora", Iters: 1000, BatchSize: 4, MaxSeqLength: 2048, LearningRate: 1e-5, NumLayers: 16,
		AdapterPath: "adapters", StepsPerReport: 10, StepsPerEval: 200, ValBatches: 25, SaveEvery: 100, Seed: 0,
		Rank: 8, Alpha: 16, Dropout: 0, Targets: "all", Optimizer: "adamw", WeightDecay: 0, Momentum: 0.9,
		LRSchedule: "constant", GradAccum: 1, MaxGradNorm: 1,
		ZOLearningRate: 1e-4, Epsilon: 1e-3, Perturbations: 1, ZOTarget: "", FOLayers: "auto", FORatio: 0.5, FOEvery: 1,
		KeepRatio: 0.005, Stage1Iters: 0, WarmStart: 1}
}

// Validate checks the configuration before any work.
func (c *Config) Validate() error {
	switch {
	case c.Model == "":
		return errors.New("train: a model is required")
	case c.Data == "":
		return errors.New("train: data is required")
	case !slices.Contains(Methods, c.Method):
		return fmt.Errorf("train: method %q is not available (%s)", c.Method, strings.Join(Methods, ", "))
	case c.Iters <= 0 || c.Iters > 1e9:
		return fmt.Errorf("train: --iters %d: want 1..%d", c.Iters, int(1e9))
	case c.BatchSize <= 0 || c.BatchSize > 1<<16:
		return fmt.Errorf("train: --batch-size %d: want 1..%d", c.BatchSize, 1<<16)
	case c.MaxSeqLength < 2 || c.MaxSeqLength > 1<<20:
		return fmt.Errorf("train: --max-seq-length %d: want 2..%d", c.MaxSeqLength, 1<<20)
	case !(c.LearningRate > 0) || c.LearningRate > 10:
		return fmt.Errorf("train: --learning-rate %g: want a number in (0, 10]", c.LearningRate)
	case c.GradAccum <= 0:
		return fmt.Errorf("train: --grad-accumulation-steps %d: want 1..%d", c.GradAccum, 1<<16)
	case c.Optimizer != "adamw" && c.Optimizer != "sgd":
		return fmt.Errorf("train: optimizer %q is not available (adamw, sgd)", c.Optimizer)
	case c.AdapterPath == "":
		return errors.New("train: an adapter path is required")
	}
	if err := c.checkRanges(); err != nil {
		return err
	}
	if c.StepsPerReport == 0 {
		c.StepsPerReport = 10
	}
	if c.ZOTarget == "" {
		c.ZOTarget = DefaultZOTarget(c.Method)
	}
	return nil
}

// checkRanges refuses every numeric setting outside what it means: NaN and
// infinities anywhere, negative counts, shares outside [0, 1], a budget that
// does not parse. (Each used to be found late or not at all: --max-grad-norm
// nan trained every step and failed writing JSON.)
func (c *Config) checkRanges() error {
	finite := func(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }
	type check struct {
		flag string
		ok   bool
		val  any
		want string
	}
	for _, k := range []check{
		{"--num-layers", c.NumLayers >= -1 && c.NumLayers <= 1<<20, c.NumLayers, "-1 (all) or a count of blocks"},
		{"--steps-per-report", c.StepsPerReport >= 0 && c.StepsPerReport <= 1e9, c.StepsPerReport, "≥ 0"},
		{"--steps-per-eval", c.StepsPerEval >= 0 && c.StepsPerEval <= 1e9, c.StepsPerEval, "≥ 0 (0: no validation)"},
		{"--val-batches", c.ValBatches >= -1 && c.ValBatches <= 1e9, c.ValBatches, "-1 (all) or a count"},
		{"--save-every", c.SaveEvery >= 0 && c.SaveEvery <= 1e9, c.SaveEvery, "≥ 0 (0: only at the end)"},
		{"--rank", c.Rank >= 1 && c.Rank <= 1<<16, c.Rank, "1..65536"},
		{"--alpha", finite(c.Alpha) && c.Alpha > 0 && c.Alpha <= 1e6, c.Alpha, "a positive number up to 1e6"},
		{"--dropout", finite(c.Dropout) && c.Dropout >= 0 && c.Dropout < 1, c.Dropout, "in [0, 1)"},
		{"--weight-decay", finite(c.WeightDecay) && c.WeightDecay >= 0 && c.WeightDecay <= 1e3, c.WeightDecay, "in [0, 1000]"},
		{"--momentum", finite(c.Momentum) && c.Momentum >= 0 && c.Momentum < 1, c.Momentum, "in [0, 1)"},
		{"--warmup", c.Warmup >= 0 && c.Warmup <= 1e9, c.Warmup, "≥ 0"},
		{"--min-lr", finite(c.MinLR) && c.MinLR >= 0 && c.MinLR <= c.LearningRate, c.MinLR, "in [0, --learning-rate]"},
		{"--max-grad-norm", finite(c.MaxGradNorm) && c.MaxGradNorm <= 1e9, c.MaxGradNorm, "a finite number (≤ 0: no clipping)"},
		{"--grad-accumulation-steps", c.GradAccum <= 1<<16, c.GradAccum, "1..65536"},
		{"--zo-learning-rate", finite(c.ZOLearningRate) && c.ZOLearningRate > 0, c.ZOLearningRate, "a positive number"},
		{"--epsilon", finite(c.Epsilon) && c.Epsilon > 0 && c.Epsilon <= 1, c.Epsilon, "in (0, 1]"},
		{"--perturbations", c.Perturbations >= 1 && c.Perturbations <= 1<<10, c.Perturbations, "1..1024"},
		{"--fo-ratio", finite(c.FORatio) && c.FORatio >= 0 && c.FORatio <= 1, c.FORatio, "in [0, 1]"},
		{"--fo-every", c.FOEvery >= 1 && c.FOEvery <= 1e9, c.FOEvery, "≥ 1"},
		{"--keep-ratio", finite(c.KeepRatio) && c.KeepRatio > 0 && c.KeepRatio <= 1, c.KeepRatio, "in (0, 1]"},
		{"--stage1-iters", c.Stage1Iters >= 0 && c.Stage1Iters <= c.Iters, c.Stage1Iters, "in [0, --iters]"},
		{"--warm-start", finite(c.WarmStart) && math.Abs(c.WarmStart) <= 1e3, c.WarmStart, "a finite number"},
	} {
		if !k.ok {
			return fmt.Errorf("train: %s %v: want %s", k.flag, k.val, k.want)
		}
	}
	if c.FOLayers != "" && c.FOLayers != "auto" { // the upper bound is the model's, checked when it is open
		if n, err := strconv.Atoi(c.FOLayers); err != nil || n < 0 || n > 1<<20 {
			return fmt.Errorf("train: --fo-layers %q: want auto or a count of blocks", c.FOLayers)
		}
	}
	switch c.LRSchedule {
	case "constant", "linear", "cosine":
	default:
		return fmt.Errorf("train: --lr-schedule %q: want constant, linear or cosine", c.LRSchedule)
	}
	switch c.OverlapSums {
	case "", "auto", "on", "off":
	default:
		return fmt.Errorf("train: --overlap-sums %q: want auto, on or off", c.OverlapSums)
	}
	if c.MaxMem != "" {
		if _, err := budget.ParseSize(c.MaxMem); err != nil {
			return fmt.Errorf("train: --max-mem: %w", err)
		}
	}
	if err := c.checkParallel(); err != nil {
		return err
	}
	return c.checkGPUConfig()
}

// DefaultZOTarget is what a method perturbs when --zo-target is not given:
// the complementary entries of each matrix for loho-intra (the paper's
// split), LoRA factors otherwise.
func DefaultZOTarget(method string) string {
	if method == "loho-intra" {
		return "complement"
	}
	return "lora"
}

// Progress is one report of a running training.
//
// Kind says what it is: KindTrain (an optimizer step's loss, rate and
// memory) and KindVal (a validation loss) as the CLI prints them;
// with Config.PhaseReports, also KindPhase when a phase of the run begins
// (Phase: converting base, tokenizing, training, validating, saving) and
// KindMicroBatch before every micro-batch (every forward pass: MicroBatch
// of MicroBatches of iteration Iter), the points where a cancellation is
// seen.
type Progress struct {
	Iter         int
	Kind         string // KindTrain, KindVal, KindPhase or KindMicroBatch
	Phase        string // the phase the report belongs to
	MicroBatch   int    // KindMicroBatch: 1-based
	MicroBatches int    // KindMicroBatch: in this pass over the step's batches
	Loss         float64
	LearningRate float64
	ItPerSec     float64
	TokPerSec    float64
	Trained      int64 // tokens trained on so far
	PeakMem      int64 // bytes (VmHWM)
	Took         time.Duration
}

// String renders the report in MLX-LM's format.
func (p Progress) String() string {
	if p.Kind == "val" {
		return fmt.Sprintf("Iter %d: Val loss %.3f, Val took %.3fs", p.Iter, p.Loss, p.Took.Seconds())
	}
	return fmt.Sprintf("Iter %d: Train loss %.3f, Learning Rate %.3e, It/sec %.3f, Tokens/sec %.3f, Trained Tokens %d, Peak mem %.3f GB",
		p.Iter, p.Loss, p.LearningRate, p.ItPerSec, p.TokPerSec, p.Trained, float64(p.PeakMem)/1e9)
}

// Result summarises a finished run.
type Result struct {
	Iters         int
	FirstValLoss  float64
	FinalValLoss  float64
	FinalTrain    float64
	Plan          *budget.Plan
	Trained       int64
	TrainableSize int64
	Took          time.Duration
	Curve         []Point
	ValCurve      []Point
}

// runMeta is the JSON part of the training state.
type runMeta struct {
	Step     int      `json:"step"`
	Pos      data.Pos `json:"pos"`
	Trained  int64    `json:"trained"`
	Curve    []Point  `json:"curve"`
	ValCurve []Point  `json:"val_curve"`
	Config   Config   `json:"config"`
	// Identity is what the state was trained on (nil in states saved
	// before it was recorded).
	Identity *runIdentity `json:"identity,omitempty"`
}

const stateFile = "training_state.qtck"

// Logger receives the run's lines (progress, plan, notes).
type Logger func(line string)

// Run trains adapters as configured. It reports every StepsPerReport
// iterations, evaluates every StepsPerEval, saves resumable state every
// SaveEvery into AdapterPath, and writes the adapters and a loss curve at
// the end. Cancelling ctx stops promptly with an error wrapping ctx.Err():
// tokenizing the data stops at the next record, a conversion of the base
// at the next tensor, a step or a validation before its next forward pass.
// A resumable state of the iterations completed is saved first (a step cut
// short is not applied; a validation cut short is run again at --resume).
func Run(ctx context.Context, cfg Config, log Logger, onProgress func(Progress)) (*Result, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = func(string) {}
	}
	if onProgress == nil {
		onProgress = func(Progress) {}
	} else if cfg.PhaseReports {
		ctx = withReporter(ctx, onProgress)
	}
	if cfg.CacheDir == "" {
		cfg.CacheDir = LibraryCacheDir()
	}
	// Data-parallel ranks start training together: a rank that fails
	// before (a plan refused, a file missing) still makes the start's one
	// collective, saying so, and the others stop at once with a message
	// instead of waiting in their first sum until the group's timeout.
	g, started := cfg.parallel(), false
	defer func() {
		if g != nil && !started {
			g.AllReduceSum64([]float64{1})
		}
	}()
	cleanup, err := rankFolder(&cfg)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	statePath := filepath.Join(cfg.AdapterPath, stateFile)
	if cfg.Resume && cfg.Restart {
		return nil, errors.New("train: --resume and --restart: choose one")
	}
	if !cfg.DryRun { // one run writes an adapter folder at a time
		unlock, err := fsx.Lock(cfg.AdapterPath)
		if err != nil {
			return nil, fmt.Errorf("train: adapter path: %w", err)
		}
		defer unlock()
	}
	files, err := data.FindSplits(cfg.Data)
	if err != nil {
		return nil, err
	}
	var limit int64
	if cfg.MaxMem != "" {
		if limit, err = budget.ParseSize(cfg.MaxMem); err != nil {
			return nil, err
		}
	}
	m, note, err := OpenBaseLimit(ctx, cfg.Model, cfg.Method, cfg.CacheDir, model.Options{Tokenizer: cfg.Tokenizer}, limit)
	if err != nil {
		return nil, err
	}
	defer m.Close()
	if note != "" {
		log(note)
	}
	if cfg.MaxSeqLength > m.Config.Context {
		log(fmt.Sprintf("max sequence length %d capped at the model's context %d", cfg.MaxSeqLength, m.Config.Context))
		cfg.MaxSeqLength = m.Config.Context
	}
	// The accountant exists before anything large is allocated: the
	// method's tensors are booked (from their shapes) before it is built,
	// and the limit tightens to the plan's heap share once there is a plan.
	// Without a budget it has no limit, but the method's tensors and the
	// step's buffers are still its slabs: the heap's soft limit leaves
	// them out either way.
	if limit > 0 {
		m.Acct = budget.NewAccountant(limit - runtimeBytes(m))
	} else if m.Acct == nil {
		m.Acct = budget.NewAccountant(0)
	}
	// The data: the train and valid splits through the token cache on disk,
	// streamed record by record (the test split is not a training run's, the
	// valid split only when it evaluates). What stays in memory is per
	// example, counted before the plan.
	tokOpt, err := ChatTokenizeOptions(m, cfg.Model, cfg.ChatTemplate, cfg.ChatTemplateKwargs)
	if err != nil {
		return nil, err
	}
	if limit > 0 { // tokenizing a record holds about a dozen bytes per byte of it
		tokOpt.MaxRecord = max(limit/32, 256<<10)
	}
	tokDir, tokID := filepath.Join(cfg.CacheDir, "tokens"), tokenizerID(m)
	reportPhase(ctx, PhaseTokenizing, 0)
	// Tokenizing comes before the plan, so no plan limits the heap yet: its
	// garbage is held to what the budget leaves beside the binary and the
	// mapped weights (stories260K under 16 MiB peaked at 16.1 MiB while
	// tokenizing, with the heap left to double between collections).
	restoreHeap := func() {}
	if limit > 0 {
		prev := debug.SetMemoryLimit(tokenizingHeap(m, limit))
		restoreHeap = sync.OnceFunc(func() { debug.SetMemoryLimit(prev) })
	}
	defer restoreHeap()
	trainTF, hit, err := data.CachedTokenFileContext(ctx, tokDir, data.CacheKey{Tokenizer: tokID, Name: splitName(files.Train)}, m.Tokenizer, files.Train, tokOpt)
	if err != nil {
		return nil, err
	}
	defer trainTF.Close()
	if hit {
		log("training tokens from the cache")
	}
	var validTF *data.TokenFile
	if files.Valid != "" && cfg.StepsPerEval > 0 {
		if validTF, _, err = data.CachedTokenFileContext(ctx, tokDir, data.CacheKey{Tokenizer: tokID, Name: splitName(files.Valid)}, m.Tokenizer, files.Valid, tokOpt); err != nil {
			return nil, err
		}
		defer validTF.Close()
	}
	restoreHeap()
	dm := dataMem(cfg, trainTF, validTF)
	cfg.dataBytes = dm.Bytes
	// Refused before there is a plan: name a budget these parts fit in (the
	// plan at that budget names the smallest that fits the whole run).
	atLeast := func(n int64) string {
		need := (runtimeBytes(m) + n + (1 << 20) - 1) >> 20
		return fmt.Sprintf("try at least %d MiB (--max-mem %dMiB)", need, need)
	}
	state := stateEstimate(m, cfg)
	if err := m.Acct.Reserve(budget.TokenCache, -1, dm.Bytes); err != nil {
		return nil, fmt.Errorf("train: the token cache's index alone exceeds --max-mem %s: %w; %s", cfg.MaxMem, err, atLeast(dm.Bytes+state))
	}
	used := m.Acct.Used() // before the method's tensors
	// Every method's tensors (values, gradients, index arrays, copies) are
	// slabs, booked by the accountant as the method is built; its optimizer
	// state is one slab made at the first step.
	cfg.tensors = &slabSet{}
	defer cfg.tensors.free()
	cfg.moments = &slabMoments{m: m}
	defer cfg.moments.free()
	meth, err := newMethod(m, cfg)
	if err != nil {
		if errors.Is(err, budget.ErrOverBudget) {
			return nil, fmt.Errorf("train: the trainable tensors alone exceed --max-mem %s: %w; %s", cfg.MaxMem, err, atLeast(used+state))
		}
		return nil, err
	}
	cfg.onGPU = gpuLikely(m, cfg.Device)
	plan, perr := PlanTrain(m, cfg, meth, dm, limit)
	if perr == nil && !cfg.DryRun {
		perr = budget.CheckAvailable(plan)
	}
	for _, line := range strings.Split(plan.String(), "\n") {
		log(line)
	}
	if perr != nil {
		return &Result{Plan: plan}, perr
	}
	if cfg.DryRun {
		err := planDeviceDry(m, cfg, meth, plan)
		if plan.Device != "" {
			log(plan.Device)
		}
		return &Result{Plan: plan}, err
	}
	// A method that sizes itself to the budget (LoHO's automatic N) may
	// choose differently with checkpointing or a smaller micro-batch: the
	// run is planned again as it will be made, until the plan and the
	// method agree, so that the accountant's limit is this method's.
	for again := 0; plan.Checkpoint != cfg.GradCheckpoint || plan.MicroBatch != cfg.BatchSize; again++ {
		if again == 4 {
			return &Result{Plan: plan}, fmt.Errorf("train: the plan and %s do not settle under --max-mem %s: give --grad-checkpoint and a smaller --batch-size, or a larger budget", cfg.Method, cfg.MaxMem)
		}
		cfg.GradCheckpoint = plan.Checkpoint
		cfg.GradAccum *= plan.Accum
		cfg.BatchSize = plan.MicroBatch
		// the last method's tensors; the new one makes its own
		cfg.tensors.free()
		if meth, err = newMethod(m, cfg); err != nil { // same seed: same initial state
			return nil, err
		}
		next, err := PlanTrain(m, cfg, meth, dm, limit)
		if err != nil || next.Peak != plan.Peak {
			log("planned again for " + meth.Describe() + ":")
			for _, line := range strings.Split(next.String(), "\n") {
				log(line)
			}
		}
		if err != nil {
			return &Result{Plan: next}, err
		}
		plan = next
	}
	if plan.SpillActivations {
		sp, err := offload.NewScratch(cfg.CacheDir, 4*int64(m.Config.Layers*cfg.BatchSize*cfg.MaxSeqLength*m.Config.Dim)+int64(64*m.Config.Layers)+4096)
		if err != nil {
			return nil, err
		}
		defer sp.Close()
		m.Spill = sp
		log("checkpointed activations spill to a scratch file under " + cfg.CacheDir)
	}
	if plan.OptimizerOnDisk {
		if err := meth.(optimizerOnDisk).MoveOptimizerToDisk(cfg.CacheDir); err != nil {
			return nil, err
		}
		log("optimizer state on disk: moments in a scratch file under " + cfg.CacheDir)
	}
	defer ApplyPlan(m, plan)()
	gr, err := openGPU(m, cfg, meth, plan, log)
	if err != nil {
		return &Result{Plan: plan}, err
	}
	if gr == nil && cfg.onGPU {
		return &Result{Plan: plan}, fmt.Errorf("train: %w", errPlannedForGPU)
	}
	if gr != nil {
		defer gr.close()
		defer func() { log(gr.peakLine()) }()
	}
	// The method's state as planned (optimizer moments come at the first
	// step) and the token cache replace the early estimates.
	m.Acct.Release(budget.TokenCache, -1, dm.Bytes)
	// (Trainable parameters and gradients are the method's slabs, booked
	// when it was made or as it makes them.)
	for _, it := range plan.Items {
		switch it.Category {
		case budget.OptimizerState, budget.TokenCache:
			if it.Category == budget.OptimizerState && plan.OptimizerOnDisk {
				continue // file-backed scratch: outside the accountant's limit, as planned
			}
			if err := m.Acct.Reserve(it.Category, -1, it.Bytes); err != nil {
				return nil, err
			}
			if it.Category == budget.OptimizerState {
				cfg.moments.left, cfg.moments.booked = it.Bytes, true // the moments: a slab in place of this booking
			}
		}
	}
	sched := optim.Schedule{Kind: cfg.LRSchedule, Peak: cfg.LearningRate, Min: cfg.MinLR, Warmup: cfg.Warmup, Total: cfg.Iters}
	if err := sched.Validate(); err != nil {
		return nil, err
	}
	batcher, err := data.NewBatcher(trainTF, data.BatchOptions{BatchSize: cfg.BatchSize, MaxSeqLen: cfg.MaxSeqLength, Pack: cfg.Pack, Seed: cfg.Seed})
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.AdapterPath, 0o755); err != nil {
		return nil, fmt.Errorf("train: adapter path: %w", err)
	}
	res := &Result{Plan: plan, TrainableSize: meth.Trainable(), FirstValLoss: math.NaN(), FinalValLoss: math.NaN()}
	start := 0
	sum := trainTF.Sum()
	ident := &runIdentity{Base: baseID(m), Tokenizer: tokID, Data: hex.EncodeToString(sum[:])}
	if !cfg.Resume && !cfg.Restart {
		if _, err := os.Stat(statePath); err == nil {
			log(fmt.Sprintf("note: %s holds an earlier run's state; this run starts over and replaces it at its first save (--resume continues it instead)", statePath))
		}
	}
	if cfg.Resume {
		meta, err := loadState(statePath, meth, func(meta runMeta) error {
			return checkResume(statePath, meta, cfg, *ident, m)
		})
		if err != nil {
			return nil, err
		}
		start = meta.Step
		if err := batcher.Seek(meta.Pos); err != nil {
			return nil, fmt.Errorf("train: resuming: %w", err)
		}
		res.Trained, res.Curve, res.ValCurve = meta.Trained, meta.Curve, meta.ValCurve
		log(fmt.Sprintf("resumed from %s at iteration %d", statePath, start))
	}
	log(meth.Describe())
	if lm, ok := meth.(*loraMethod); ok && g != nil {
		defer func() {
			if s := lm.sumsLine(); s != "" && lm.gpu == nil {
				log(s)
			}
		}()
	}
	if g != nil {
		started = true
		failed := []float64{0}
		if err := g.AllReduceSum64(failed); err != nil {
			return nil, fmt.Errorf("train: starting with %d ranks: %w", g.Size(), err)
		}
		if failed[0] > 0 {
			return nil, fmt.Errorf("train: %d of %d ranks could not start (their messages say why)", int(failed[0]), g.Size())
		}
	}
	if gr != nil {
		log(fmt.Sprintf("memory: weights %.1f MiB to the GPU (resident there or streamed; the file's pages dropped once copied), the steps' buffers there (above), trainable state %.1f MiB in host memory",
			float64(m.WeightBytes())/(1<<20), float64(meth.StateBytes())/(1<<20)))
	} else if _, ok := meth.(scoring); ok {
		log(fmt.Sprintf("memory: weights %.1f MiB mapped, forward passes ≤ %.1f MiB per micro-batch (no gradients), trainable state %.1f MiB",
			float64(m.WeightBytes())/(1<<20), float64(m.Config.ScoreBytes(cfg.BatchSize*cfg.MaxSeqLength))/(1<<20), float64(meth.StateBytes())/(1<<20)))
	} else {
		act := m.Config.ActivationBytes(cfg.BatchSize, cfg.MaxSeqLength, cfg.GradCheckpoint)
		other := m.Config.ActivationBytes(cfg.BatchSize, cfg.MaxSeqLength, !cfg.GradCheckpoint)
		log(fmt.Sprintf("memory: weights %.1f MiB mapped, activations ≤ %.1f MiB per micro-batch (%.1f MiB %s checkpointing), adapters+grads+optimizer %.1f MiB",
			float64(m.WeightBytes())/(1<<20), float64(act)/(1<<20), float64(other)/(1<<20), map[bool]string{true: "without", false: "with"}[cfg.GradCheckpoint],
			float64(meth.StateBytes())/(1<<20)))
	}
	evalVal := func(iter int) error {
		if validTF == nil || validTF.NumExamples() == 0 {
			return nil
		}
		t0 := time.Now()
		reportPhase(ctx, PhaseValidating, iter)
		l, err := evalLoss(ctx, m, meth, validTF, cfg)
		if err != nil {
			return err
		}
		if iter == 0 || math.IsNaN(res.FirstValLoss) {
			res.FirstValLoss = l
		}
		res.FinalValLoss = l
		res.ValCurve = append(res.ValCurve, Point{iter, l})
		onProgress(Progress{Iter: iter, Kind: KindVal, Phase: PhaseValidating, Loss: l, Took: time.Since(t0)})
		reportPhase(ctx, PhaseTraining, iter)
		return nil
	}
	// interrupted saves the state after iteration done (the batcher at pos)
	// when it is more than the run started from, and returns the error that
	// says so; where says what was cut short.
	interrupted := func(done int, pos data.Pos, where string, cause error) error {
		if done > start {
			reportPhase(ctx, PhaseSaving, done)
			meta := runMeta{Step: done, Pos: pos, Trained: res.Trained, Curve: res.Curve, ValCurve: res.ValCurve, Config: cfg, Identity: ident}
			if serr := saveState(statePath, meta, meth); serr != nil {
				return fmt.Errorf("train: interrupted after iteration %d%s, and saving its state failed: %w (%w)", done, where, serr, cause)
			}
			log(fmt.Sprintf("interrupted after iteration %d%s: state saved in %s; run the same command with --resume to continue", done, where, statePath))
		}
		return fmt.Errorf("train: interrupted after iteration %d%s: %w", done, where, cause)
	}
	cancelled := func(err error) bool { return ctx.Err() != nil && errors.Is(err, ctx.Err()) }
	// The validation due at the iteration the run starts from: at 0, and
	// on resuming from a run interrupted during its validation.
	due := start == 0
	if start > 0 && (start%max(cfg.StepsPerEval, 1) == 0 || start == cfg.Iters) {
		due = len(res.ValCurve) == 0 || res.ValCurve[len(res.ValCurve)-1].Iter != start
	}
	if cfg.StepsPerEval > 0 && due {
		if err := evalVal(start); err != nil {
			if cancelled(err) {
				return res, interrupted(start, batcher.Position(), ", during its validation", ctx.Err())
			}
			return res, err
		}
	}
	t0 := time.Now()
	lastReport, lastTokens := time.Now(), res.Trained
	var repLoss float64
	var repTok, repSteps int
	div := &divergence{uniform: math.Log(float64(m.Config.Vocab)), first: math.NaN(), hint: "lower --learning-rate"}
	if cfg.Method == "mezo" || strings.HasPrefix(cfg.Method, "loho") {
		div.hint = "lower --zo-learning-rate"
	}
	reportPhase(ctx, PhaseTraining, start)
	for it := start + 1; it <= cfg.Iters; it++ {
		// Interrupted: what was trained is saved, to resume from.
		pos := batcher.Position() // of this iteration's batches
		if err := ctx.Err(); err != nil {
			return res, interrupted(it-1, pos, "", err)
		}
		batches := make([]data.Batch, cfg.GradAccum)
		for k := range batches {
			if batches[k], err = batcher.Next(); err != nil {
				return res, fmt.Errorf("train: training data: %w", err)
			}
		}
		lr := sched.LR(it - 1)
		stepLoss, stepTok, err := meth.Step(ctx, it, batches, lr)
		if err != nil {
			if cancelled(err) { // the step applied nothing: its batches come again
				return res, interrupted(it-1, pos, fmt.Sprintf(" (iteration %d was cut short and not applied)", it), ctx.Err())
			}
			return res, err
		}
		for _, b := range batches {
			res.Trained += int64(b.NumTokens())
		}
		repLoss += stepLoss
		repTok += stepTok
		repSteps++
		res.Curve = append(res.Curve, Point{it, stepLoss / float64(stepTok)})
		if err := div.check(it, stepLoss/float64(stepTok)); err != nil {
			return res, err
		}
		if it%cfg.StepsPerReport == 0 || it == cfg.Iters {
			el := time.Since(lastReport).Seconds()
			onProgress(Progress{Iter: it, Kind: KindTrain, Phase: PhaseTraining, Loss: repLoss / float64(repTok), LearningRate: lr,
				ItPerSec: float64(repSteps) / el, TokPerSec: float64(res.Trained-lastTokens) / el, Trained: res.Trained, PeakMem: PeakRSS()})
			lastReport, lastTokens = time.Now(), res.Trained
			repLoss, repTok, repSteps = 0, 0, 0
		}
		if cfg.StepsPerEval > 0 && (it%cfg.StepsPerEval == 0 || it == cfg.Iters) {
			if err := evalVal(it); err != nil {
				if cancelled(err) { // the step is complete: saved, its validation runs again at --resume
					return res, interrupted(it, batcher.Position(), ", during its validation", ctx.Err())
				}
				return res, err
			}
		}
		if cfg.SaveEvery > 0 && it%cfg.SaveEvery == 0 && it < cfg.Iters {
			reportPhase(ctx, PhaseSaving, it)
			meta := runMeta{Step: it, Pos: batcher.Position(), Trained: res.Trained, Curve: res.Curve, ValCurve: res.ValCurve, Config: cfg, Identity: ident}
			if err := saveState(statePath, meta, meth); err != nil {
				return res, err
			}
			reportPhase(ctx, PhaseTraining, it)
		}
	}
	res.Iters = cfg.Iters
	// The steps' buffers are dead: hand their pages back before the outputs
	// are written, so that writing them is not what sets the run's peak.
	// The adapters are encoded on the heap (a tensor's bytes at a time, a
	// few MiB in all): the accountant's room the steps no longer use is
	// booked for that and handed to the heap's soft limit while saving.
	m.Acct.Trim()
	debug.FreeOSMemory()
	if room := m.Acct.Room(); room > 0 && m.Acct.Reserve(budget.Workspace, -1, room) == nil {
		prev := debug.SetMemoryLimit(-1)
		debug.SetMemoryLimit(prev + room)
		defer func() { debug.SetMemoryLimit(prev); m.Acct.Release(budget.Workspace, -1, room) }()
	}
	res.Took = time.Since(t0)
	if n := len(res.Curve); n > 0 {
		res.FinalTrain = res.Curve[n-1].Loss
	}
	meta := runMeta{Step: cfg.Iters, Pos: batcher.Position(), Trained: res.Trained, Curve: res.Curve, ValCurve: res.ValCurve, Config: cfg, Identity: ident}
	reportPhase(ctx, PhaseSaving, cfg.Iters)
	// The outputs of the final save (state, adapters, loss curve) are one
	// unit: a crash leaves the previous save's files or these, never a mix.
	err = fsx.SaveDir(cfg.AdapterPath, func(stage string) error {
		if err := saveState(filepath.Join(stage, stateFile), meta, meth); err != nil {
			return err
		}
		if err := meth.Save(stage); err != nil {
			return err
		}
		return fsx.WriteFile(filepath.Join(stage, "loss.svg"), func(w io.Writer) error {
			return WriteLossSVG(w, fmt.Sprintf("qtune %s on %s", cfg.Method, filepath.Base(cfg.Data)), res.Curve, res.ValCurve)
		})
	})
	if err != nil {
		return res, fmt.Errorf("train: saving to %s: %w", cfg.AdapterPath, err)
	}
	return res, nil
}

// splitName names a split's token cache file: "train" for a folder's
// train.jsonl, "notes" for notes.txt.
func splitName(path string) string {
	b := filepath.Base(path)
	return strings.TrimSuffix(b, filepath.Ext(b))
}

// tokenizerID identifies the tokenizer for the token cache.
func tokenizerID(m *model.Model) string {
	b, _ := json.Marshal(m.Tokenizer.Vocab())
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// evalLoss is the mean loss over the validation examples (up to
// ValBatches batches), with the method's trainable part applied and no
// dropout. It checks ctx before each batch.
func evalLoss(ctx context.Context, m *model.Model, meth Method, ex data.Source, cfg Config) (float64, error) {
	b, err := data.NewBatcher(ex, data.BatchOptions{BatchSize: cfg.BatchSize, MaxSeqLen: cfg.MaxSeqLength, Pack: cfg.Pack, Seed: 1})
	if err != nil {
		return 0, err
	}
	o, done := meth.Eval()
	defer done()
	var sc *model.Scorer
	if s, ok := meth.(scoring); ok {
		sc = s.scorer()
	}
	gr := onGPU(meth)
	if gr != nil {
		if s, ok := meth.(interface{ syncGPU() error }); ok { // the device holds this stage's adapters
			if err := s.syncGPU(); err != nil {
				return 0, err
			}
		}
		if err := gr.push(); err != nil {
			return 0, err
		}
	}
	nb := b.BatchesPerEpoch()
	if cfg.ValBatches > 0 && cfg.ValBatches < nb {
		nb = cfg.ValBatches
	}
	var sum float64
	var n int
	for i := 0; i < nb; i++ {
		if err := ctx.Err(); err != nil {
			return 0, fmt.Errorf("train: validation stopped after %d of %d batches: %w", i, nb, err)
		}
		bt, err := b.Next()
		if err != nil {
			return 0, fmt.Errorf("train: validation data: %w", err)
		}
		var l float64
		var k int
		if gr != nil {
			l, k, err = gr.g.LossGrad(bt.Tokens, bt.Targets, bt.B, bt.T, gr.ad, false, 0)
		} else if sc != nil {
			l, k, err = sc.Loss(bt.Tokens, bt.Targets, bt.B, bt.T, o.Adapters)
		} else {
			l, k, err = m.LossGrad(bt.Tokens, bt.Targets, bt.B, bt.T, o, false, 0)
		}
		if err != nil {
			return 0, err
		}
		passDone("val")
		sum += l
		n += k
	}
	if n == 0 {
		return math.NaN(), nil
	}
	return sum / float64(n), nil
}

func saveState(path string, meta runMeta, meth Method) error {
	if p, ok := meth.(interface{ pullGPU() error }); ok { // values trained in place on the device
		if err := p.pullGPU(); err != nil {
			return err
		}
	}
	mb, err := json.Marshal(meta)
	if err != nil {
		return err
	}
	return checkpoint.Save(path, &checkpoint.State{Version: 1, Meta: mb, Tensors: meth.Tensors()})
}

func loadState(path string, meth Method, check func(runMeta) error) (runMeta, error) {
	var meta runMeta
	// The state holds this run's tensors and their optimizer moments (two
	// per value, AdamW) and a little metadata: a body declaring more is not
	// this run's, and is refused before it is inflated (a 109 KB file
	// declaring 3 GiB peaked at 5.1 GB before its checksum failed).
	var values int64
	for _, t := range meth.Tensors() {
		values += int64(len(t.Data))
	}
	limit := 4*3*values + 4*int64(len(meth.Tensors())*64) + 64<<20
	st, err := checkpoint.LoadLimit(path, limit)
	if err != nil {
		return meta, err
	}
	// A non-finite adapter value or moment is refused here, by name: resumed,
	// NaN surfaced iterations later as a loss naming no tensor, and +Inf in
	// AdamW's v silently froze its parameter.
	for _, t := range st.Tensors {
		for j, x := range t.Data {
			if f := float64(x); math.IsNaN(f) || math.IsInf(f, 0) {
				return meta, fmt.Errorf("train: %s: tensor %q: value %d is %v", path, t.Name, j, x)
			}
		}
	}
	if err := json.Unmarshal(st.Meta, &meta); err != nil {
		return meta, fmt.Errorf("train: %s: bad metadata: %w", path, err)
	}
	if check != nil {
		if err := check(meta); err != nil {
			return meta, err
		}
	}
	if err := meth.Load(st.Tensors); err != nil {
		return meta, fmt.Errorf("train: %s: %w", path, err)
	}
	return meta, nil
}

// stateEstimate bounds from above what a method's tensors take as it is
// built (values, gradients, index arrays, copies, and a page of rounding
// for each slab), from the shapes alone: a refusal before there is a plan
// names a budget at which the method can be built and planned.
func stateEstimate(m *model.Model, cfg Config) int64 {
	ws := adaptedMatrices(m, cfg)
	pages := 4096 * int64(2*len(ws)+4)
	lv := 4 * loraValues(m, cfg)
	switch cfg.Method {
	case "mezo":
		switch cfg.ZOTarget {
		case "float":
			return floatMatrixBytes(m) + 4096*int64(len(m.Tensors)) + pages
		case "scales":
			var n int64
			for l := range m.Layers {
				for mod := model.Module(0); mod < model.NumModules; mod++ {
					w := m.Layers[l].Matrix(mod)
					if in, err := quant.Lookup(w.Type); err == nil && in.Quantized {
						n += 4 * ((int64(w.Rows)*int64(w.Cols))/int64(in.BlockSize) + 1)
					}
				}
			}
			return n + 4096*int64(len(m.Layers))*int64(model.NumModules) + pages
		}
		return lv + pages
	case "loho-intra":
		n := lv // the LoRA factors name the matrices (freed for complement)
		for _, w := range ws {
			e := int64(w.Rows) * int64(w.Cols)
			// the mask's entries: about ratio·e, bounded 6σ above
			nnz := int64(cfg.FORatio*float64(e)+6*math.Sqrt(float64(e))) + 64
			n += 4 * (int64(w.Rows) + 1 + 3*min(nnz, e))
			if cfg.ZOTarget == "complement" && cfg.FORatio < 1 {
				n += 4 * e // the dense zeroth-order delta
			}
		}
		return n + pages
	}
	// lora, qlora, loreml's stage 1: values and gradients; loho: values
	// and the first-order blocks' gradients
	return 2*lv + pages
}

// loraValues counts the adapter values a LoRA-family method allocates when
// it is built (A and B on every adapted matrix), from the shapes alone.
func loraValues(m *model.Model, cfg Config) int64 {
	var n int64
	for _, w := range adaptedMatrices(m, cfg) {
		n += int64(cfg.Rank) * int64(w.Rows+w.Cols)
	}
	return n
}

// adaptedEntries is the number of weights in the matrices the run adapts.
func adaptedEntries(m *model.Model, cfg Config) int64 {
	var n int64
	for _, w := range adaptedMatrices(m, cfg) {
		n += int64(w.Rows) * int64(w.Cols)
	}
	return n
}

// adaptedMatrices are the matrices --targets and --num-layers select.
func adaptedMatrices(m *model.Model, cfg Config) []*kernels.Matrix {
	targets, err := lora.ParseTargets(cfg.Targets)
	if err != nil {
		return nil
	}
	first := 0
	if cfg.NumLayers > 0 && cfg.NumLayers < m.Config.Layers {
		first = m.Config.Layers - cfg.NumLayers
	}
	var ws []*kernels.Matrix
	for l := first; l < m.Config.Layers; l++ {
		for _, t := range targets {
			ws = append(ws, m.Layers[l].Matrix(t))
		}
	}
	return ws
}

// floatMatrixBytes is the size of float32 copies of the model's float
// (F32/F16/BF16) matrices, which MeZO's float target trains.
func floatMatrixBytes(m *model.Model) int64 {
	var n int64
	for _, t := range m.Tensors {
		switch t.Type {
		case quant.F32, quant.F16, quant.BF16:
			if len(t.Shape) == 2 {
				n += 4 * t.Elems()
			}
		}
	}
	return n
}
