// Package lora implements LoRA adapters (Hu et al., 2021) on frozen, possibly
// quantized linear layers — QLoRA when the base is NF4:
//
//	y = x·Wᵀ + s·(x·Aᵀ)·Bᵀ      A (R, in), B (out, R), s = alpha/R
//
// The base W is never touched or copied; only A and B (and their gradients)
// exist in float32. The backward recomputes h = x·Aᵀ instead of storing it,
// so an adapter keeps no activations of its own; dropout masks are derived
// from a per-step seed, so a recomputed forward (activation checkpointing)
// sees the same mask.
//
// Not here: the training loop (train/), optimizers (optim/), file formats
// (format/adapter).
package lora
