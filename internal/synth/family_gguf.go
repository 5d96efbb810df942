package synth

import (
	"fmt"
	"io"
	"os"

	"github.com/qtune/qtune/format/gguf"
	"github.com/qtune/qtune/quant"
)

// SentencePiece piece types, which are also llama.cpp's token types.
const (
	pieceNormal  int32 = 1
	pieceUnknown int32 = 2
	pieceControl int32 = 3
	pieceByte    int32 = 6
)

// pieces lays out the vocabulary (Tokenizer's doc): the pieces, their scores
// (0 for specials and bytes, minus the rank for the others, so that shorter
// merges come first) and their types. (V)
func (t Tokenizer) pieces(vocab int) (toks []string, scores []float32, types []int32) {
	toks = make([]string, 0, vocab)
	for i, s := range t.Specials {
		toks = append(toks, s)
		if i == t.UNK {
			types = append(types, pieceUnknown)
		} else {
			types = append(types, pieceControl)
		}
	}
	for b := 0; b < 256; b++ {
		toks = append(toks, fmt.Sprintf("<0x%02X>", b))
		types = append(types, pieceByte)
	}
	scores = make([]float32, len(toks), vocab)
	normal := []string{"▁"}
	for c := 'a'; c <= 'z'; c++ {
		normal = append(normal, string(c))
	}
	for c := 'a'; c <= 'z'; c++ {
		normal = append(normal, "▁"+string(c))
	}
	for len(toks) < vocab {
		s := fmt.Sprintf("▁t%d", len(toks)) // filler: no merge path reaches it
		if len(normal) > 0 {
			s, normal = normal[0], normal[1:]
		}
		scores = append(scores, -float32(len(scores)-len(t.Specials)-256))
		toks = append(toks, s)
		types = append(types, pieceNormal)
	}
	return toks, scores, types
}

// fileType is llama.cpp's general.file_type for a file whose matrices are in
// t (as model/quantize.go writes it); other types get no key.
var fileType = map[quant.Type]uint32{quant.F32: 0, quant.F16: 1, quant.Q4_0: 2, quant.Q4_1: 3, quant.Q8_0: 7, quant.Q5_0: 8, quant.Q5_1: 9, quant.Q4_K: 14, quant.Q6_K: 18, quant.BF16: 32}

// ggufKV is the metadata the converter writes for this family, in its order:
// ModelBase's general keys, the family's set_gguf_parameters, the
// quantization version, then the SentencePiece vocabulary and SpecialVocab's
// ids and flags (from config.json and tokenizer_config.json). Two keys
// differ from the converter's output for WriteHF's folder: the unknown-token
// id is written too (the converter finds it only in a tokenizer.json, and
// llama.cpp would otherwise take id 0, Gemma's <pad>), and general.size_label
// is not.
func (f Family) ggufKV(typ quant.Type) []gguf.KV {
	a := f.Arch + "."
	u := func(v int) uint32 { return uint32(v) }
	kv := []gguf.KV{gguf.KVOf("general.architecture", f.Arch)}
	if f.Rope.Type == "longrope" {
		// Phi3MiniModel writes it while generating the factor tensors,
		// before the general metadata.
		kv = append(kv, gguf.KVOf(a+"rope.scaling.attn_factor", float32(f.longropeAttnFactor())))
	}
	kv = append(kv,
		gguf.KVOf("general.type", "model"),
		gguf.KVOf("general.name", "synthetic-"+f.Name))
	ft, hasFT := fileType[typ]
	if f.Fused {
		// Phi3MiniModel.set_gguf_parameters, then generate_extra_tensors.
		kv = append(kv,
			gguf.KVOf(a+"context_length", u(f.Context)),
			gguf.KVOf(a+"rope.scaling.original_context_length", u(f.Rope.OrigContext)),
			gguf.KVOf(a+"embedding_length", u(f.Dim)),
			gguf.KVOf(a+"feed_forward_length", u(f.Hidden)),
			gguf.KVOf(a+"block_count", u(f.Layers)),
			gguf.KVOf(a+"attention.head_count", u(f.Heads)),
			gguf.KVOf(a+"attention.head_count_kv", u(f.KVHeads)),
			gguf.KVOf(a+"attention.layer_norm_rms_epsilon", float32(f.Eps)),
			gguf.KVOf(a+"rope.dimension_count", u(f.RopeDims())),
			gguf.KVOf(a+"rope.freq_base", float32(f.RopeTheta)))
		if hasFT {
			kv = append(kv, gguf.KVOf("general.file_type", ft))
		}
		kv = append(kv, gguf.KVOf(a+"attention.sliding_window", uint32(0))) // config.json sliding_window null
	} else {
		// TextModel.set_gguf_parameters.
		kv = append(kv,
			gguf.KVOf(a+"block_count", u(f.Layers)),
			gguf.KVOf(a+"context_length", u(f.Context)),
			gguf.KVOf(a+"embedding_length", u(f.Dim)),
			gguf.KVOf(a+"feed_forward_length", u(f.Hidden)),
			gguf.KVOf(a+"attention.head_count", u(f.Heads)),
			gguf.KVOf(a+"attention.head_count_kv", u(f.KVHeads)),
			gguf.KVOf(a+"rope.freq_base", float32(f.RopeTheta)))
		if f.Gemma {
			kv = append(kv, gguf.KVOf(a+"rope.freq_base_swa", float32(f.LocalRopeTheta)))
		}
		kv = append(kv, gguf.KVOf(a+"attention.layer_norm_rms_epsilon", float32(f.Eps)))
		if f.HeadDimKey {
			kv = append(kv,
				gguf.KVOf(a+"attention.key_length", u(f.HeadDim)),
				gguf.KVOf(a+"attention.value_length", u(f.HeadDim)))
		}
		if hasFT {
			kv = append(kv, gguf.KVOf("general.file_type", ft))
		}
		if f.Arch == "llama" || f.Arch == "smollm3" { // LlamaModel
			kv = append(kv,
				gguf.KVOf(a+"vocab_size", u(f.Vocab)),
				gguf.KVOf(a+"rope.dimension_count", u(f.RopeDims())))
		}
		if f.Gemma { // Gemma3Model; the keys it writes again keep their values
			kv = append(kv, gguf.KVOf(a+"attention.sliding_window", u(f.SlidingWindow)))
		}
	}
	kv = append(kv, gguf.KVOf("general.quantization_version", uint32(2)))

	toks, scores, types := f.Tok.pieces(f.Vocab)
	kv = append(kv,
		gguf.KVOf("tokenizer.ggml.model", "llama"),
		gguf.KVOf("tokenizer.ggml.pre", "default"),
		gguf.KVOf("tokenizer.ggml.tokens", toks),
		gguf.KVOf("tokenizer.ggml.scores", scores),
		gguf.KVOf("tokenizer.ggml.token_type", types))
	for _, s := range []struct {
		key string
		id  int
	}{
		{"tokenizer.ggml.bos_token_id", f.Tok.BOS},
		{"tokenizer.ggml.eos_token_id", f.Tok.EOS},
		{"tokenizer.ggml.unknown_token_id", f.Tok.UNK},
		{"tokenizer.ggml.padding_token_id", f.Tok.PAD},
	} {
		if s.id >= 0 {
			kv = append(kv, gguf.KVOf(s.key, u(s.id)))
		}
	}
	kv = append(kv,
		gguf.KVOf("tokenizer.ggml.add_bos_token", f.Tok.AddBOS),
		gguf.KVOf("tokenizer.ggml.add_eos_token", false))
	if !f.Tok.AddSpacePrefix {
		kv = append(kv, gguf.KVOf("tokenizer.ggml.add_space_prefix", false))
	}
	return kv
}

// tensorType is the type the converter gives a tensor when the output type
// is typ: norms and 1-D tensors stay F32, and so (as in model.TargetType)
// do rows that do not fill whole blocks of typ.
func tensorType(t ggufTensor, typ quant.Type) (quant.Type, error) {
	in, err := quant.Lookup(typ)
	if err != nil {
		return 0, fmt.Errorf("synth: %w", err)
	}
	if len(t.shape) < 2 || t.norm || t.shape[0]%int64(in.BlockSize) != 0 {
		return quant.F32, nil
	}
	return typ, nil
}

// WriteGGUF writes the family's model, drawn from seed, to path as
// llama.cpp's converter would write it from the folder WriteHF makes (see
// ggufTensors for the transforms and ggufKV for the metadata), with matrices
// in typ: F32, F16, BF16, Q8_0, Q4_K, … (1-D tensors, norms and rows that are
// not a whole number of typ's blocks stay F32). llama.cpp reads every ggml
// type; quant.NF4 gives qtune's own container.
func (f Family) WriteGGUF(path string, typ quant.Type, seed uint64) error {
	if err := f.check(); err != nil {
		return err
	}
	if !quant.CanQuantize(typ) {
		return fmt.Errorf("synth: cannot write tensors in %s", typ)
	}
	ts, err := f.ggufTensors(f.hfTensors(seed))
	if err != nil {
		return err
	}
	var wts []gguf.WriteTensor
	for _, t := range ts {
		tt, err := tensorType(t, typ)
		if err != nil {
			return err
		}
		size, err := quant.Bytes(tt, int64(len(t.data)))
		if err != nil {
			return fmt.Errorf("synth: %s: %w", t.name, err)
		}
		data := t.data
		wts = append(wts, gguf.WriteTensor{Name: t.name, Type: tt, Shape: t.shape, Size: size, Write: func(w io.Writer) error {
			b := make([]byte, size)
			if err := quant.Quantize(tt, b, data); err != nil {
				return err
			}
			_, err := w.Write(b)
			return err
		}})
	}
	out, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("synth: %w", err)
	}
	err = gguf.Write(out, 3, f.ggufKV(typ), wts, 0)
	if cerr := out.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("synth: %w", cerr)
	}
	return err
}
