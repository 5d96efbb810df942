// Package nn holds the Llama building blocks as plain functions on float32
// slices: RMSNorm, rotary embeddings, causal attention, SwiGLU, softmax and
// cross-entropy. Forward and backward of an op live side by side (backward
// arrives with training); outputs come first in argument lists.
//
// The ops are generic over Float. The []float32 instantiations, the ones
// the engine runs, call the vectorised kernels of package kernels (RMSNorm,
// SwiGLU, CrossEntropy, Softmax, Rope; AttentionSeq and its backward through
// kernels.AttentionSeq, blocked GEMMs over query blocks; the cached decode
// Attention through kernels.Gemv and GemvT), whose float32 error bounds
// kernels/doc.go states. The float64 instantiations keep the loops written here: they are
// the reference, validated by finite differences, that the float32 path is
// tested against (kernels_test.go). LogSumExp stays a float64 loop: it is
// the evaluation's exact figure.
//
// Rope precomputes cos/sin tables for the first positions (≤ 1 MiB) and
// rotates all heads of a position from one table row (ApplyHeads,
// RotateBackHeads).
//
// Not here: weights, files or model structure (model/), or tiled matmuls
// over quantized data (kernels/).
package nn
