// Package llama2c reads llama2.c checkpoints (the legacy "v0" .bin layout of
// karpathy/llama2.c's run.c) and tokenizer.bin files (docs/formats.md §5).
//
// What it is for: turning the bytes of a memory-mapped checkpoint into the
// model's configuration and its float32 weights, one view per tensor, named
// and shaped as in GGUF (blk.N.attn_q.weight, ne order [in, out]), so the rest
// of qtune treats a llama2.c model like a GGUF one.
//
// What it is not: a writer, nor a reader of the later int8 "v1/v2" exports
// (they start with a magic number, which Parse rejects as an absurd dim).
//
// The trade-off: the format has no magic and no sizes beyond the seven-int
// header, so Parse validates the header hard (positive, bounded, divisible,
// even head size) and requires the file to hold every array the header
// implies, computed in overflow-checked 64-bit arithmetic. Like run.c, it
// ignores bytes after the last array. Tensor data is never copied; the
// layer-stacked arrays are split into per-layer views.
//
// Errors are one line, start with "llama2c: " and match
// errors.Is(err, ErrFormat).
package llama2c
