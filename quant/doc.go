// Package quant holds qtune's tensor element types and their reference
// codecs: the type table (ids, block sizes, byte sizes), dequantization of
// every block format qtune reads, and quantization for the formats it writes.
//
// # What it is
//
// Pure Go, allocation-free per call, bit-exact with ggml. Dequantize and
// DequantizeRange reproduce ggml's to_float bit for bit (f32 bit patterns,
// sign of zero included) for F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
// Q8_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS and MXFP4; Quantize reproduces
// the bytes of ggml's reference quantizers (the path ggml_quantize_chunk takes
// without an importance matrix) for F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
// Q8_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS and MXFP4. The golden files in
// ../shared/golden are the authority and the tests check every type there;
// IQ4_XS, which they lack, has ggml-made blocks in testdata/iq4_xs. The ggml
// types qtune does not read (the IQ1/IQ2/IQ3 codebook formats, TQ1_0/TQ2_0,
// NVFP4 …) are refused by name with ErrUnsupported, never as a bare number.
//
// Numerics follow ggml's C: every operation in float32, each rounded
// separately, left to right, and never fused: where ggml computes x*y then
// adds z, the Go code writes float32(x*y) + z, which the Go spec guarantees is
// not contracted into an FMA (Go may fuse on arm64, ppc64, s390x and amd64 v3;
// the golden tests pass with GOAMD64=v3, which catches a missed conversion).
// C's float-to-int casts are emulated as x86-64 performs them (cInt32), so
// NaN and out-of-range inputs give ggml's bytes, never a panic.
//
// # What it is not
//
// Not the matmul: kernels/ calls DequantizeRange a row or tile at a time and
// owns the fast paths (assembly, GPU); the loops here are the generic
// reference those fast paths are tested against. Not a file format: GGUF
// reading lives in format/gguf. It never allocates tensors, logs or reserves
// memory; callers own every buffer.
//
// # Trade-offs
//
// Clarity and exactness over speed: the per-block loops are plain Go with one
// type switch per call, array-pointer conversions to drop bounds checks, and
// no lookup tables beyond the 16-entry code books. K-quant quantization keeps
// ggml's scale search verbatim (deterministic but slow: about 0.1 µs per
// weight for Q4_K, 0.4 µs for IQ4_NL, some 30 times the legacy formats)
// because quantized bytes are compared against ggml's.
// Q8_K (activations only) is not handled.
//
// # NF4 (qtune's own type, id 4096)
//
// NF4 is QLoRA's 4-bit NormalFloat with double-quantized block absmax
// (methods.md §1.2–1.3). It is not a ggml type; qtune stores it in GGUF
// containers under type id 4096. A tensor of n elements (n a multiple of 64,
// B = n/64 blocks, G = ceil(B/256) groups) occupies Bytes(NF4, n) bytes:
//
//	[n/2 bytes]  nibbles, 32 bytes per 64-weight block, blocks in order
//	[B bytes]    int8 absmax code per block
//	[4·G bytes]  f32 LE group scale c2, one per 256 blocks
//	[4 bytes]    f32 LE tensor mean μ
//
// Packing (Q4_0-style split): in a block's 32 bytes, byte j holds element j in
// its LOW nibble and element j+32 in its HIGH nibble. A nibble indexes
// NF4Table. Block b decodes as y = NF4Table[q] · s with
//
//	c1'[b] = float32(float32(float32(code8[b]) / 127) * c2[b/256]) + μ   (NF4Absmax)
//	s      = c1'[b] if c1'[b] > 0, else +0
//
// each operation rounded to f32 in that order, in both directions.
// Quantization: c1 = max|w| over the block (f32); μ = mean of all c1, summed
// in float64 and rounded to f32 once; c2 = max |c1 − μ| over the group (f32,
// computed as float32(c1 − μ)); code8 = round-half-away(float32((c1−μ)/c2)·127)
// clamped to ±127 (0 when c2 = 0). The nibbles are chosen against the decoded
// c1' — the scale the decoder will use — as argmin_k |NF4Table[k] − w/c1'|
// with ties to the lower index; a block whose c1' is not positive stores all
// codes 7 (the exact zero). Quantize rejects NaN and Inf for NF4.
package quant
