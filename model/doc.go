// Package model is the Llama-family network: its configuration, its frozen
// weights as views into memory-mapped files, the forward pass with a KV cache,
// and sampling.
//
// Loading never copies a weight matrix: GGUF, safetensors and llama2.c
// tensors stay in their file's bytes and the kernels dequantize them a tile
// at a time. Only the small vectors (norm weights) are decoded to float32 at
// load. Hugging Face checkpoints keep their rotate-half Q/K row order; the
// model then applies RoPE in the half-split ("NeoX") convention instead of
// permuting rows, which gives the same result without a copy.
//
// Not here: file parsing (format/), tokenization (tokenizer/), training
// (methods/, train/).
package model
