// Package optim applies parameter updates: AdamW with decoupled weight decay,
// SGD with (Nesterov) momentum, learning-rate schedules with warmup, clipping
// by global gradient norm and gradient accumulation. It works on flat float32
// parameters ([Param]: a weight slice and its gradient slice, named), so it is
// the same code for LoRA adapters, LoReML masks, scales or full weights.
//
// What it is not: it does not compute gradients (methods/ and nn/ do), it
// does not know shapes or tensors, it does not decide which parameters are
// trainable (a Param with a nil gradient is skipped), and it does not save
// anything: [Optimizer.State] hands named float32 buffers to the caller, which
// gives them to checkpoint/ together with the hyper-parameters it chose.
//
// Numerics follow torch.optim: AdamW is torch.optim.AdamW (bias-corrected
// moments, eps added after the bias-corrected square root, weight decay
// w -= lr*wd*w applied before the moment update), SGD is torch.optim.SGD
// (weight decay added to the gradient, momentum buffer initialised to the
// first gradient, dampening 0). Schedules follow Hugging Face transformers'
// get_{constant,linear,cosine}_schedule_with_warmup, with a floor Min as in
// get_cosine_with_min_lr_schedule_with_warmup.
//
// The trade-off: moments are stored in float32 (half the memory of float64,
// the same as PyTorch), while every element update is computed in float64 and
// rounded once when stored. The update order is a plain sequential loop with
// no goroutines, so the same inputs give bit-identical weights and state on
// every run of the same binary (architectures whose compiler fuses
// multiply-adds, such as arm64, may differ from amd64 in the last bit), and a
// run resumed from [Optimizer.State] continues bit-identically.
// It is not the fastest possible loop; the optimizer touches only the
// trainable parameters, which are small next to the frozen model.
//
// State tensors are named "<optimizer>.<buffer>/<param name>":
//
//	adamw.m/<p>     first moment, len(W) float32
//	adamw.v/<p>     second moment, len(W) float32
//	adamw.step/<p>  step count t of this parameter as two exact float32
//	                values {t >> 24, t & 0xFFFFFF}
//	sgd.momentum/<p>  momentum buffer (only when Momentum != 0)
//
// Steps are counted per parameter, as torch does, so a parameter that joins
// training later gets its own bias correction.
package optim
