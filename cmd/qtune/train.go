package main

import (
	"context"
	"flag"
	"fmt"
	"math"
	"os"
	"time"

	"github.com/qtune/qtune/internal/fsx"
	"github.com/qtune/qtune/offload/mpi"
	"github.com/qtune/qtune/train"
)

// trainFlags binds every train.Config field to its MLX-LM-style flag.
func trainFlags(fs *flag.FlagSet, c *train.Config) *string {
	fs.StringVar(&c.Model, "model", c.Model, "model file or folder")
	fs.StringVar(&c.Tokenizer, "tokenizer", c.Tokenizer, "tokenizer file (llama2.c models)")
	fs.StringVar(&c.Data, "data", c.Data, "folder with train.jsonl/valid.jsonl/test.jsonl, or one file")
	fs.StringVar(&c.ChatTemplate, "chat-template", c.ChatTemplate, "Jinja chat template file for {\"messages\"} data (default: the model's own, else qtune's default)")
	fs.Func("chat-template-kwargs", `further chat-template variables as a JSON object, e.g. '{"enable_thinking": false}'`, func(v string) error {
		kw, err := train.ParseTemplateKwargs(v)
		c.ChatTemplateKwargs = kw
		return err
	})
	fs.StringVar(&c.Method, "method", c.Method, "lora, qlora (float bases quantized to NF4 once, cached), mezo, loho (loho-inter), loho-intra, loreml")
	fs.IntVar(&c.Iters, "iters", c.Iters, "training iterations")
	fs.IntVar(&c.BatchSize, "batch-size", c.BatchSize, "sequences per micro-batch")
	fs.IntVar(&c.MaxSeqLength, "max-seq-length", c.MaxSeqLength, "tokens per sequence (longer examples are truncated)")
	fs.Float64Var(&c.LearningRate, "learning-rate", c.LearningRate, "peak learning rate")
	fs.IntVar(&c.NumLayers, "num-layers", c.NumLayers, "adapt the last N blocks (-1: all)")
	fs.StringVar(&c.AdapterPath, "adapter-path", c.AdapterPath, "folder for adapters, state and the loss curve")
	fs.IntVar(&c.StepsPerReport, "steps-per-report", c.StepsPerReport, "iterations between progress lines")
	fs.IntVar(&c.StepsPerEval, "steps-per-eval", c.StepsPerEval, "iterations between validation losses (0: none)")
	fs.IntVar(&c.ValBatches, "val-batches", c.ValBatches, "validation batches per evaluation (-1: all)")
	fs.IntVar(&c.SaveEvery, "save-every", c.SaveEvery, "iterations between resumable state saves (0: only at the end)")
	fs.BoolVar(&c.GradCheckpoint, "grad-checkpoint", c.GradCheckpoint, "recompute each block's activations in the backward pass")
	fs.Uint64Var(&c.Seed, "seed", c.Seed, "random seed (data order, adapter init, dropout)")
	fs.IntVar(&c.Rank, "rank", c.Rank, "LoRA rank")
	fs.Float64Var(&c.Alpha, "alpha", c.Alpha, "LoRA alpha (scale alpha/rank)")
	fs.Float64Var(&c.Dropout, "dropout", c.Dropout, "LoRA dropout")
	fs.StringVar(&c.Targets, "targets", c.Targets, "adapted modules: all, or a list of q,k,v,o,gate,up,down")
	fs.StringVar(&c.Optimizer, "optimizer", c.Optimizer, "adamw or sgd")
	fs.Float64Var(&c.WeightDecay, "weight-decay", c.WeightDecay, "decoupled weight decay (AdamW) / L2 (SGD)")
	fs.Float64Var(&c.Momentum, "momentum", c.Momentum, "SGD momentum")
	fs.StringVar(&c.LRSchedule, "lr-schedule", c.LRSchedule, "constant, linear or cosine")
	fs.IntVar(&c.Warmup, "warmup", c.Warmup, "linear warm-up iterations")
	fs.Float64Var(&c.MinLR, "min-lr", c.MinLR, "final learning rate of linear/cosine schedules")
	fs.IntVar(&c.GradAccum, "grad-accumulation-steps", c.GradAccum, "micro-batches per optimizer step")
	fs.Float64Var(&c.MaxGradNorm, "max-grad-norm", c.MaxGradNorm, "clip gradients to this global norm (0: off)")
	fs.BoolVar(&c.Pack, "pack", c.Pack, "pack examples into full sequences instead of padding")
	fs.BoolVar(&c.Resume, "resume", c.Resume, "continue from the state saved in --adapter-path")
	fs.BoolVar(&c.Restart, "restart", c.Restart, "start over in an --adapter-path that holds a saved state, replacing it (without --resume a run does so anyway, with a note)")
	fs.StringVar(&c.CacheDir, "cache-dir", c.CacheDir, "folder for the NF4 base and token caches (default: user cache)")
	fs.Float64Var(&c.ZOLearningRate, "zo-learning-rate", c.ZOLearningRate, "mezo/loho: zeroth-order step size (constant)")
	fs.Float64Var(&c.Epsilon, "epsilon", c.Epsilon, "mezo/loho: SPSA perturbation scale")
	fs.IntVar(&c.Perturbations, "perturbations", c.Perturbations, "mezo: SPSA draws per step")
	fs.StringVar(&c.ZOTarget, "zo-target", c.ZOTarget, "what the zeroth-order part perturbs (default: the method's). mezo, loho: lora (default), float (norms, float matrices) or scales (quantization scales); loho-intra: complement (default: the entries outside the first-order mask, as dense float32 deltas) or lora (the same matrices' LoRA factors: far less memory)")
	fs.StringVar(&c.FOLayers, "fo-layers", c.FOLayers, "loho: deepest N blocks trained first-order, or auto (largest N within --max-mem)")
	fs.Float64Var(&c.FORatio, "fo-ratio", c.FORatio, "loho-intra: share of each matrix's entries trained first-order")
	fs.IntVar(&c.FOEvery, "fo-every", c.FOEvery, "loho: first-order update every k steps")
	fs.Float64Var(&c.KeepRatio, "keep-ratio", c.KeepRatio, "loreml: share of weights kept trainable in stage 2")
	fs.IntVar(&c.Stage1Iters, "stage1-iters", c.Stage1Iters, "loreml: iterations of stage 1 (score learning); 0: a tenth of --iters")
	fs.Float64Var(&c.WarmStart, "warm-start", c.WarmStart, "loreml: γ of the warm start W ← W + γ·S")
	fs.StringVar(&c.MaxMem, "max-mem", c.MaxMem, "memory budget (512MiB, 2GB, 1.5GiB or bytes)")
	fs.StringVar(&c.Device, "device", c.Device, "where micro-batches run: cpu, cuda, cuda:N (an NVIDIA GPU) or auto (the GPU when there is one and the run is one it takes)")
	fs.StringVar(&c.OverlapSums, "overlap-sums", "auto", "under mpirun: sum LoRA's gradients during the backward pass (on), after it (off), or on when a core is free for MPI (auto)")
	fs.StringVar(&c.MaxVRAM, "max-vram", c.MaxVRAM, "GPU memory budget for the run's own allocations (the CUDA context is apart; default: what the GPU has free, less a margin)")
	fs.StringVar(&c.GPUPrecision, "gpu-precision", c.GPUPrecision, "input type of the GPU's products: bf16 (default, tensor cores) or f32")
	return fs.String("config", "", "YAML or JSON file of these settings (flags override it)")
}

// loadConfig reads a YAML or JSON config file into c (keys as train.Config's
// json tags; unknown keys are an error).
func loadConfig(path string, c *train.Config) error {
	b, err := fsx.ReadFile(path)
	if err != nil {
		return err
	}
	if err := train.ParseConfig(b, c); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// mpiTimeout bounds each collective of a data-parallel run: a rank that
// stops (killed, a node gone) makes the others fail after it instead of
// waiting for ever. $QTUNE_MPI_TIMEOUT (a duration) replaces the default.
func mpiTimeout() time.Duration {
	if d, err := time.ParseDuration(os.Getenv("QTUNE_MPI_TIMEOUT")); err == nil && d > 0 {
		return d
	}
	return 10 * time.Minute
}

func (a *app) train(ctx context.Context, args []string) error {
	cfg := train.Defaults()
	// First pass: find --config, so the file sets values the flags then override.
	probe := flag.NewFlagSet("train", flag.ContinueOnError)
	var scratch train.Config
	cfgPath := trainFlags(probe, &scratch)
	if _, err := a.parse(probe, args); err != nil {
		return err
	}
	if *cfgPath != "" {
		if err := loadConfig(*cfgPath, &cfg); err != nil {
			return fmt.Errorf("config: %w", err)
		}
	}
	fs := flag.NewFlagSet("train", flag.ContinueOnError)
	trainFlags(fs, &cfg)
	pos, err := a.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageErr("unexpected argument %q", pos[0])
	}
	if err := cfg.Validate(); err != nil {
		return usageErr("%v", err)
	}
	if cfg.CacheDir == "" { // the command's own default; the library's is a temporary folder
		cfg.CacheDir = train.DefaultCacheDir()
	}
	// Under mpirun (or another MPI launcher) the run is data-parallel over
	// the ranks; rank 0 speaks and writes, the others only report errors.
	// A plan is made the same way (it counts MPI's memory in a rank).
	if mpi.Launched() {
		g, err := mpi.Open(mpiTimeout())
		if err != nil {
			return err
		}
		defer g.Close()
		cfg.Comm = g
	}
	cfg.DryRun = a.planOnly
	if a.planOnly {
		res, err := train.Run(ctx, cfg, nil, nil)
		if res != nil && res.Plan != nil && (cfg.Comm == nil || cfg.Comm.Rank() == 0) {
			fmt.Fprintln(a.stdout, res.Plan.String())
		}
		if err != nil && cfg.Comm != nil && cfg.Comm.Rank() > 0 {
			return fmt.Errorf("rank %d: %w", cfg.Comm.Rank(), err)
		}
		return err
	}
	if g := cfg.Comm; g != nil {
		if g.Rank() > 0 {
			_, err := train.Run(ctx, cfg, nil, nil)
			if err != nil {
				return fmt.Errorf("rank %d: %w", g.Rank(), err)
			}
			return nil
		}
		a.log.Info().Msg("data-parallel: " + g.Name() + "; each step's micro-batches shared out over the ranks")
	}
	a.log.Info().Str("model", cfg.Model).Str("data", cfg.Data).Str("method", cfg.Method).Int("iters", cfg.Iters).
		Int("batch_size", cfg.BatchSize).Int("rank", cfg.Rank).Msg("training")
	res, err := train.Run(ctx, cfg, func(s string) { a.log.Info().Msg(s) }, func(p train.Progress) {
		switch {
		case a.json: // one JSON object per line, like every other line
			ev := a.log.Info().Str("event", "progress").Str("kind", p.Kind).Int("iter", p.Iter).Float64("loss", p.Loss)
			if p.Kind == "val" {
				ev = ev.Dur("took", p.Took)
			} else {
				ev = ev.Float64("learning_rate", p.LearningRate).Float64("it_per_s", p.ItPerSec).Float64("tokens_per_s", p.TokPerSec).
					Int64("trained_tokens", p.Trained).Int64("peak_mem", p.PeakMem)
			}
			ev.Msg(p.String())
		case a.quiet:
		default:
			fmt.Fprintln(a.stderr, p.String())
		}
	})
	if err != nil {
		return err
	}
	val := "no validation"
	if !math.IsNaN(res.FirstValLoss) {
		val = fmt.Sprintf("validation loss %.4f -> %.4f", res.FirstValLoss, res.FinalValLoss)
	}
	fmt.Fprintf(a.stdout, "trained %d iterations in %s: %s, train loss %.4f; adapters in %s\n",
		res.Iters, res.Took.Round(1e6), val, res.FinalTrain, cfg.AdapterPath)
	return nil
}
