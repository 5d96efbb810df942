// Package safetensors reads and writes safetensors files and the pieces of a
// Hugging Face checkpoint folder around them: the shard index
// (model.safetensors.index.json), config.json, the HF ↔ GGUF tensor name map
// and the Q/K row permutation between the two RoPE layouts
// (docs/formats.md §3).
//
// What it is for: turning the bytes of a memory-mapped .safetensors file into
// a list of tensors whose Data are views of those bytes, and writing such
// files (adapters, exports).
//
// What it is not: a model loader or converter. It does not open folders, pick
// shards, convert dtypes or decide which tensors a model needs; it only gives
// the pieces for doing so.
//
// The trade-off: the JSON header is decoded with encoding/json (simple, and
// bounded by the 100 MB header limit) after a token walk that rejects
// duplicate keys, which encoding/json would otherwise silently resolve to the
// last one. Every tensor's offsets, size for its dtype and non-overlap are
// checked before Parse returns, so users can slice Data without further
// checks. Gaps between tensors and trailing bytes are tolerated (the format
// says buffers "should" cover the data; readers in the wild differ).
//
// Errors are one line, start with "safetensors: " and match
// errors.Is(err, ErrFormat) for malformed input.
package safetensors
