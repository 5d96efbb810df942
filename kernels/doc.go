// Package kernels holds qtune's hot loops as pure functions on slices:
// dequantizing matrix multiplication, dot products, and the worker pool that
// spreads them over the cores.
//
// Each kernel is documented by its reference loop, and the plain Go version
// is always present; faster variants (assembly, GPU through purego) sit
// behind the same small functions and must pass the same tests.
//
// Quantized weights are never expanded whole. A matmul dequantizes a tile of
// a few weight rows into a per-worker scratch buffer, uses it against every
// activation row, and moves on, so the float32 working set is tile-sized.
//
// Determinism: every output element is produced by exactly one worker with a
// fixed summation order, so results are bit-identical whatever the number of
// threads.
//
// Not here: model structure (model/, nn/), quant formats (quant/).
package kernels
