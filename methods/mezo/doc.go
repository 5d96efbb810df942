// Package mezo implements MeZO (Malladi et al., 2023): zeroth-order
// fine-tuning by SPSA with the seed trick (methods.md §2). One step draws a
// direction z, evaluates the loss at θ+εz and θ−εz with two forward passes,
// puts θ back, and moves θ by −η·(L+ − L−)/(2ε)·z. z is never stored: a
// counter-based generator (splitmix64 + Box–Muller, keyed by seed, tensor
// index and element index) regenerates it in parallel chunks, so the memory
// is that of inference plus one chunk buffer per worker.
//
// What is trainable is a list of float32 tensors the caller builds:
//   - LoRA factors on a frozen (quantized) base — methods/lora makes them,
//     train/ hands A and B here;
//   - float tensors of the model (FloatTensors): the RMSNorm weights in place
//     and, on request, every matrix stored as F32/F16/BF16 through a writable
//     F32 copy (full-parameter MeZO; the copy is the extra memory);
//   - per-block quantization scales with the codes kept (Scales, the QZO
//     extension of methods.md §5), an adapter that adds (R∘W)·x.
//
// Not here: the loss (the caller's closure runs the model), LoRA itself, the
// training loop, and first-order updates. Quantized codes are never moved.
//
// Trade-off: two forward passes per draw and no activations, gradients or
// optimizer state, against a gradient estimate whose variance grows with the
// number of trainable values — MeZO needs many more steps than first-order
// training. The +ε, −2ε, +ε sequence restores θ only up to float32 rounding
// (a few ulps per step); z is bit-reproducible on one platform (Go may fuse
// multiply-adds differently on other architectures).
package mezo
