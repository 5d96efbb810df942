// Package tokenizer turns text into token ids and back for Llama-family
// models. It implements the two algorithms those models use:
//
//   - SPM: SentencePiece-style BPE (Llama 2, TinyLlama, llama2.c models such
//     as stories260K). The text gets a dummy-prefix space, spaces become "▁"
//     (U+2581), every code point starts as its own symbol and adjacent symbols
//     are merged greedily, highest-scoring resulting piece first (leftmost on
//     ties). Code points that are not pieces fall back to <0xNN> byte tokens.
//     This is the behaviour of SentencePiece, llama.cpp's llm_tokenizer_spm and
//     llama2.c's encode.
//   - BPE: byte-level BPE (GPT-2, Llama 3, Qwen2, SmolLM). The text is
//     pre-split by the model's pre-tokenizer (hand-written scanners equivalent
//     to the published regular expressions, since Go's regexp has no
//     lookahead), every byte is mapped to a printable code point and adjacent
//     symbols are merged by merge rank, lowest first.
//
// Both merge loops run on a linked list of symbols with a binary heap of
// candidate pairs, so encoding is O(n log n) in the length of a
// pre-tokenizer word (for SPM, of the whole text).
//
// Vocabularies come from GGUF metadata (FromGGUF), llama2.c tokenizer.bin
// files (FromLlama2C), SentencePiece tokenizer.model files
// (FromSentencePiece, a small bounded protobuf decoder) and Hugging Face
// folders (FromHFDir), or are built by hand (Vocab, New).
//
// What it is not: a full Hugging Face tokenizers clone. Unicode
// normalization (NFKC charsmaps), Unigram and WordPiece models are not
// supported and are reported as errors or ignored as documented on the
// loaders. Special tokens written in the text are never parsed as specials:
// "<s>" in the input is encoded as plain text, like llama.cpp with
// parse_special=false. User-defined tokens (type 4) are matched in the text
// as whole tokens, as SentencePiece and llama.cpp do.
//
// The trade-off: the loaders accept only what these models need and keep
// every decoder bounded by the input size, so any byte string can be fed to
// them without panics; all errors start with "tokenizer: " and wrap
// ErrFormat, ErrInvalid, ErrNoTokenizer or ErrUnsupported.
package tokenizer
