// Package nn holds the Llama building blocks as plain functions on float32
// slices: RMSNorm, rotary embeddings, causal attention, SwiGLU, softmax and
// cross-entropy. Forward and backward of an op live side by side (backward
// arrives with training); outputs come first in argument lists.
//
// Not here: weights, files or model structure (model/), or tiled matmuls
// over quantized data (kernels/).
package nn
