package synth

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"

	"github.com/qtune/qtune/format/safetensors"
)

// WriteHF writes the family's model, drawn from seed (the same weights as
// WriteGGUF with that seed), as a Hugging Face folder in dir (created if
// needed): config.json with the family's real keys, model.safetensors in F32
// with HF names and layout (Q/K rows in rotate-half order, Gemma norms
// without the +1, Phi-3's fused qkv_proj and gate_up_proj), and a
// SentencePiece tokenizer.model with tokenizer_config.json.
func (f Family) WriteHF(dir string, seed uint64) error {
	if err := f.check(); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("synth: %w", err)
	}
	var sts []safetensors.Tensor
	for _, t := range f.hfTensors(seed) {
		b := make([]byte, 4*len(t.data))
		for i, v := range t.data {
			binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
		}
		shape := make([]int64, len(t.shape))
		for i, d := range t.shape {
			shape[i] = int64(d)
		}
		sts = append(sts, safetensors.Tensor{Name: t.name, DType: "F32", Shape: shape, Data: b})
	}
	if err := safetensors.WriteFile(filepath.Join(dir, "model.safetensors"), sts, map[string]string{"format": "pt"}); err != nil {
		return err
	}
	for _, file := range []struct {
		name string
		v    any
	}{
		{"config.json", f.hfConfig()},
		{"tokenizer_config.json", f.hfTokenizerConfig()},
	} {
		b, err := json.MarshalIndent(file.v, "", "  ")
		if err != nil {
			return fmt.Errorf("synth: %s: %w", file.name, err)
		}
		if err := os.WriteFile(filepath.Join(dir, file.name), append(b, '\n'), 0o644); err != nil {
			return fmt.Errorf("synth: %w", err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "tokenizer.model"), f.sentencePiece(), 0o644); err != nil {
		return fmt.Errorf("synth: %w", err)
	}
	return nil
}

// idOrNull is a token id for JSON: null when absent.
func idOrNull(id int) any {
	if id < 0 {
		return nil
	}
	return id
}

// hfConfig is config.json as transformers writes it for the family.
func (f Family) hfConfig() map[string]any {
	c := map[string]any{
		"architectures":           []string{f.HFClass},
		"model_type":              f.ModelType,
		"hidden_size":             f.Dim,
		"intermediate_size":       f.Hidden,
		"num_hidden_layers":       f.Layers,
		"num_attention_heads":     f.Heads,
		"num_key_value_heads":     f.KVHeads,
		"vocab_size":              f.Vocab,
		"max_position_embeddings": f.Context,
		"rms_norm_eps":            f.Eps,
		"rope_theta":              f.RopeTheta,
		"tie_word_embeddings":     f.Tied,
		"torch_dtype":             "float32",
		"bos_token_id":            idOrNull(f.Tok.BOS),
		"eos_token_id":            idOrNull(f.Tok.EOS),
		"initializer_range":       0.02,
		"attention_dropout":       0.0,
		"use_cache":               true,
		"rope_scaling":            nil,
	}
	if f.Tok.PAD >= 0 {
		c["pad_token_id"] = f.Tok.PAD
	}
	if f.HeadDimKey {
		c["head_dim"] = f.HeadDim
	}
	if f.Gemma {
		c["hidden_activation"] = "gelu_pytorch_tanh"
	} else {
		c["hidden_act"] = "silu"
	}
	switch f.Rope.Type {
	case "llama3":
		c["rope_scaling"] = map[string]any{
			"rope_type":                        "llama3",
			"factor":                           f.Rope.Factor,
			"low_freq_factor":                  f.Rope.LowFreqFactor,
			"high_freq_factor":                 f.Rope.HighFreqFactor,
			"original_max_position_embeddings": f.Rope.OrigContext,
		}
	case "longrope":
		long, short := f.longropeFactors()
		c["rope_scaling"] = map[string]any{"type": "longrope", "long_factor": long, "short_factor": short}
		c["original_max_position_embeddings"] = f.Rope.OrigContext
	}
	switch f.ModelType {
	case "llama":
		c["attention_bias"], c["mlp_bias"], c["pretraining_tp"] = false, false, 1
	case "mistral":
		c["sliding_window"] = nil
	case "qwen2", "qwen3":
		c["use_sliding_window"], c["sliding_window"], c["max_window_layers"] = false, nil, f.Layers
		if f.ModelType == "qwen3" {
			c["attention_bias"] = false
		}
	case "gemma3_text":
		types := make([]string, f.Layers)
		for l := range types {
			types[l] = "full_attention"
			if f.IsLocal(l) {
				types[l] = "sliding_attention"
			}
		}
		c["query_pre_attn_scalar"] = f.QueryPreAttnScalar
		c["sliding_window"] = f.SlidingWindow
		c["sliding_window_pattern"] = f.SWAPattern
		c["layer_types"] = types
		c["rope_local_base_freq"] = f.LocalRopeTheta
		c["final_logit_softcapping"] = nil
		c["attn_logit_softcapping"] = nil
		c["attention_bias"] = false
	case "phi3":
		c["sliding_window"] = nil
		c["attention_bias"] = false
		if f.PartialRotary > 0 {
			c["partial_rotary_factor"] = f.PartialRotary
		}
	case "smollm3":
		use := make([]int, f.Layers)
		for l := range use {
			if f.UsesRope(l) {
				use[l] = 1
			}
		}
		c["no_rope_layers"] = use
		c["no_rope_layer_interval"] = f.NoRopeInterval
		c["use_sliding_window"], c["sliding_window"] = false, nil
		c["attention_bias"], c["mlp_bias"] = false, false
	}
	return c
}

// hfTokenizerConfig is tokenizer_config.json for the SentencePiece
// tokenizer: the special tokens by content and the add_bos/add_eos flags.
func (f Family) hfTokenizerConfig() map[string]any {
	tok := func(id int) any {
		if id < 0 {
			return nil
		}
		return f.Tok.Specials[id]
	}
	return map[string]any{
		"tokenizer_class":              f.Tok.Class,
		"add_bos_token":                f.Tok.AddBOS,
		"add_eos_token":                false,
		"bos_token":                    tok(f.Tok.BOS),
		"eos_token":                    tok(f.Tok.EOS),
		"unk_token":                    tok(f.Tok.UNK),
		"pad_token":                    tok(f.Tok.PAD),
		"model_max_length":             f.Context,
		"clean_up_tokenization_spaces": false,
		"legacy":                       false,
	}
}

// pb appends protobuf wire-format fields.
type pb struct{ b []byte }

func (p *pb) key(field, wire int) { p.b = binary.AppendUvarint(p.b, uint64(field<<3|wire)) }

// varint writes an int32/enum/bool field; negative values take ten bytes,
// as protobuf sign-extends int32.
func (p *pb) varint(field int, v int64) {
	p.key(field, 0)
	p.b = binary.AppendUvarint(p.b, uint64(v))
}

func (p *pb) bytes(field int, b []byte) {
	p.key(field, 2)
	p.b = binary.AppendUvarint(p.b, uint64(len(b)))
	p.b = append(p.b, b...)
}

func (p *pb) float(field int, v float32) {
	p.key(field, 5)
	p.b = binary.LittleEndian.AppendUint32(p.b, math.Float32bits(v))
}

func b2i(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// sentencePiece is tokenizer.model: a SentencePiece ModelProto of type BPE
// with byte fallback over the family's pieces, an identity normalizer and
// the family's add_dummy_prefix.
func (f Family) sentencePiece() []byte {
	toks, scores, types := f.Tok.pieces(f.Vocab)
	var m pb
	for i, s := range toks {
		var p pb
		p.bytes(1, []byte(s))
		p.float(2, scores[i])
		p.varint(3, int64(types[i]))
		m.bytes(1, p.b)
	}
	var tr pb
	tr.varint(3, 2) // model_type BPE
	tr.varint(4, int64(f.Vocab))
	tr.varint(35, 1) // byte_fallback
	tr.varint(40, int64(f.Tok.UNK))
	tr.varint(41, int64(f.Tok.BOS))
	tr.varint(42, int64(f.Tok.EOS))
	tr.varint(43, int64(f.Tok.PAD))
	for _, s := range []struct {
		field, id int
	}{{45, f.Tok.UNK}, {46, f.Tok.BOS}, {47, f.Tok.EOS}, {48, f.Tok.PAD}} {
		if s.id >= 0 {
			tr.bytes(s.field, []byte(f.Tok.Specials[s.id]))
		}
	}
	m.bytes(2, tr.b)
	var n pb
	n.bytes(1, []byte("identity"))
	n.varint(3, b2i(f.Tok.AddSpacePrefix)) // add_dummy_prefix
	n.varint(4, 0)                         // remove_extra_whitespaces
	n.varint(5, 1)                         // escape_whitespaces
	m.bytes(3, n.b)
	return m.b
}
