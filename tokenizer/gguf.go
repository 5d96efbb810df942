package tokenizer

import (
	"fmt"
	"strings"

	"github.com/qtune/qtune/format/gguf"
)

// FromGGUF builds the tokenizer described by a GGUF file's tokenizer.ggml.*
// metadata: model "llama" is SPM, "gpt2" is byte-level BPE. A file without
// tokenizer.ggml.model (or with "none"/"no") gives an error wrapping
// ErrNoTokenizer; other models (bert, t5, rwkv, ...) ErrUnsupported. Special
// ids outside the vocabulary (llama.cpp writes 0xFFFFFFFF for "none") read as
// absent. add_bos_token and add_space_prefix default to true for SPM and
// false for BPE, as in llama.cpp.
func FromGGUF(f *gguf.File) (*Tokenizer, error) {
	if f == nil {
		return nil, fmt.Errorf("%w: nil GGUF file", ErrNoTokenizer)
	}
	model, ok := f.String("tokenizer.ggml.model")
	if !ok {
		return nil, fmt.Errorf("%w: GGUF has no tokenizer.ggml.model", ErrNoTokenizer)
	}
	var v Vocab
	switch model {
	case "llama":
		v.Kind = SPM
	case "gpt2", "gemma4":
		v.Kind = BPE
	case "none", "no":
		return nil, fmt.Errorf("%w: GGUF tokenizer.ggml.model is %q", ErrNoTokenizer, model)
	default:
		return nil, fmt.Errorf("%w: GGUF tokenizer.ggml.model %q", ErrUnsupported, model)
	}
	tokens, ok := f.Strings("tokenizer.ggml.tokens")
	if !ok {
		return nil, fmt.Errorf("%w: GGUF tokenizer.ggml.tokens missing or not a string array", ErrFormat)
	}
	v.Tokens = tokens
	if _, present := f.Get("tokenizer.ggml.scores"); present {
		if v.Scores, ok = f.Float32s("tokenizer.ggml.scores"); !ok {
			return nil, fmt.Errorf("%w: GGUF tokenizer.ggml.scores is not a float array", ErrFormat)
		}
	}
	if _, present := f.Get("tokenizer.ggml.token_type"); present {
		if v.Types, ok = f.Int32s("tokenizer.ggml.token_type"); !ok {
			return nil, fmt.Errorf("%w: GGUF tokenizer.ggml.token_type is not an integer array", ErrFormat)
		}
	}
	if _, present := f.Get("tokenizer.ggml.merges"); present {
		if v.Merges, ok = f.Strings("tokenizer.ggml.merges"); !ok {
			return nil, fmt.Errorf("%w: GGUF tokenizer.ggml.merges is not a string array", ErrFormat)
		}
	}
	id := func(key string) int {
		i, ok := f.Int("tokenizer.ggml." + key)
		if !ok || i < 0 || i >= int64(len(tokens)) {
			return -1
		}
		return int(i)
	}
	v.BOS, v.EOS, v.UNK, v.PAD = id("bos_token_id"), id("eos_token_id"), id("unknown_token_id"), id("padding_token_id")
	for _, key := range []string{"eot_token_id", "eom_token_id", "fim_pad_token_id", "fim_rep_token_id", "fim_sep_token_id"} {
		if i := id(key); i >= 0 {
			v.EOG = append(v.EOG, i)
		}
	}
	flag := func(key string, def bool) bool {
		u, ok := f.Uint("tokenizer.ggml." + key)
		if !ok {
			return def
		}
		return u != 0
	}
	v.AddBOS = flag("add_bos_token", v.Kind == SPM)
	v.AddEOS = flag("add_eos_token", false)
	v.AddSpacePrefix = flag("add_space_prefix", v.Kind == SPM)
	v.Pre, _ = f.String("tokenizer.ggml.pre")
	if model == "gemma4" {
		// Gemma 4: BPE over raw UTF-8 with spaces as "▁"; llama.cpp always
		// adds BOS for it.
		v.Pre, v.AddBOS = "gemma4", true
	}
	v.ChatTemplate, _ = f.String("tokenizer.chat_template")
	// llama.cpp strips the whitespace after Phi-3's special tokens, by the
	// model's name.
	name, _ := f.String("general.name")
	name = strings.ToLower(name)
	v.RStripSpecial = strings.Contains(name, "phi-3") || strings.Contains(name, "phi3")
	return New(v)
}
