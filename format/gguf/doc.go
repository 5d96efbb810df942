// Package gguf reads and writes GGUF files (versions 2 and 3), the container
// ggml and llama.cpp use for models and LoRA adapters (docs/formats.md §1).
//
// What it is for: turning the bytes of a memory-mapped file into a table of
// metadata (key/value pairs) and tensor descriptions whose data are views
// (sub-slices) of those same bytes, and writing such files back, streaming
// tensor data so that a file of any size can be produced without holding it in
// memory.
//
// What it is not: a model loader. It knows nothing of architectures, tensor
// roles or quantized block contents; it uses package quant only for the byte
// size of a tensor of a given type and shape.
//
// The trade-off: Parse validates everything it can see (every count and length
// against the bytes that remain, every tensor's data range against the file,
// alignment, overlaps, duplicate names, known types) before allocating, so a
// damaged or hostile file yields an error, never a panic or a huge
// allocation. Metadata values are decoded eagerly into Go values (strings are
// copied, arrays become typed slices) because they are small and read often;
// tensor data is never copied.
//
// Errors from Parse are one line, start with "gguf: ", and match
// errors.Is(err, ErrFormat); truncation also matches io.ErrUnexpectedEOF and an
// unknown tensor type quant.ErrUnknownType.
package gguf
