// Package adapter reads and writes LoRA adapters in the formats other tools
// load (docs/formats.md §4): Hugging Face PEFT folders
// (adapter_model.safetensors + adapter_config.json), llama.cpp GGUF LoRA
// adapters, and MLX-LM adapter folders. It also holds the merge step
// W += scale·B·A (LoRA.Delta) that export --merge uses.
//
// Dimension legend: R rank, In input features (columns of W), Out output
// features (rows of W). A layer adapts W (Out, In) with A (R, In) and
// B (Out, R), both row-major float32.
//
// What it is for: one in-memory form, Adapter, in qtune's own conventions
// (GGUF base tensor names such as "blk.3.attn_q.weight", rows of q and k in
// GGUF's interleaved RoPE order), and exact conversions between it and each
// file format: tensor names, shapes, element types, the Q/K row permutation
// of lora_B to and from Hugging Face's rotate-half order (formats.md §3.2),
// the scale convention (alpha/R, alpha/√R with rsLoRA; MLX's plain scale) and
// the config files.
//
// What it is not: training code. It knows nothing of optimizers, budgets or
// models; it does not check an adapter against a base model (the caller
// compares In/Out with its own tensors) and it never logs.
//
// The trade-off: adapters are small next to their base (a few MiB to a few
// hundred), so files are read whole and converted to float32 eagerly, which
// keeps the readers simple and lets them validate everything (pairs, shapes,
// one rank, known modules, element types) before returning. Only what qtune
// can apply faithfully is accepted: DoRA, bias training, per-module ranks,
// LoRA on embeddings or the output head and similar features are refused
// with ErrUnsupported rather than silently dropped (the one exception:
// GGUF *_norm.weight tensors are skipped, as llama.cpp skips them). Writers build the whole
// file in memory and write it to a temporary file that is fsynced and
// renamed, so a crash leaves the previous file intact.
//
// Errors start with "adapter: ", wrap the error of the layer below (os,
// format/gguf, format/safetensors) with %w, and match ErrFormat (malformed
// input), ErrUnsupported (valid but not handled) or ErrInvalid (an Adapter or
// argument a writer refuses).
package adapter
