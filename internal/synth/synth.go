// Package synth writes Llama-shaped GGUF files with random weights, for
// benchmarks and memory tests at realistic sizes (15M, 110M, 1B parameters)
// without downloading anything. The tokenizer is a byte-fallback SentencePiece
// vocabulary padded with filler pieces to the configured size.
package synth

import (
	"fmt"
	"io"
	"math/rand/v2"
	"os"

	"github.com/qtune/qtune/format/gguf"
	"github.com/qtune/qtune/quant"
)

// Config is the shape of a synthetic model.
type Config struct {
	Name                       string
	Dim, Hidden, Layers, Heads int
	KVHeads, Vocab, Context    int
}

// Presets are the shapes the benchmarks use (llama2.c's 15M and 110M, and
// Llama-3.2-1B's blocks with a 32k vocabulary).
var Presets = map[string]Config{
	"260K": {"260K", 64, 172, 5, 8, 4, 512, 512},
	"15M":  {"15M", 288, 768, 6, 6, 6, 32000, 256},
	"110M": {"110M", 768, 2048, 12, 12, 12, 32000, 1024},
	"1B":   {"1B", 2048, 8192, 16, 32, 8, 32000, 2048},
}

// Params is the parameter count (untied output).
func (c Config) Params() int64 {
	C, F, V := int64(c.Dim), int64(c.Hidden), int64(c.Vocab)
	kv := C / int64(c.Heads) * int64(c.KVHeads)
	per := 2*C*C + 2*C*kv + 3*C*F + 2*C
	return int64(c.Layers)*per + 2*V*C + C
}

// Write writes the model to path with matrices in typ (norms F32). Weights
// are drawn from N(0, 0.02²) with a fixed seed; each tensor is generated and
// quantized in turn, so memory stays at one tensor.
func Write(path string, c Config, typ quant.Type, seed uint64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	err = write(f, c, typ, seed)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// spec is one tensor to write: cols per row, rows (1 for a vector).
type spec struct {
	name       string
	cols, rows int
}

func write(w io.Writer, c Config, typ quant.Type, seed uint64) error {
	toks := make([]string, c.Vocab)
	scores := make([]float32, c.Vocab)
	types := make([]int32, c.Vocab)
	toks[0], toks[1], toks[2] = "<unk>", "<s>", "</s>"
	types[0], types[1], types[2] = 2, 3, 3
	for i := 0; i < 256 && i+3 < c.Vocab; i++ {
		toks[i+3] = fmt.Sprintf("<0x%02X>", i)
		types[i+3] = 6
	}
	for i := 259; i < c.Vocab; i++ {
		toks[i] = fmt.Sprintf("▁t%d", i)
		scores[i] = -float32(i)
		types[i] = 1
	}
	kv := []gguf.KV{
		gguf.KVOf("general.architecture", "llama"),
		gguf.KVOf("general.name", "synthetic-"+c.Name),
		gguf.KVOf("llama.context_length", uint32(c.Context)),
		gguf.KVOf("llama.embedding_length", uint32(c.Dim)),
		gguf.KVOf("llama.block_count", uint32(c.Layers)),
		gguf.KVOf("llama.feed_forward_length", uint32(c.Hidden)),
		gguf.KVOf("llama.attention.head_count", uint32(c.Heads)),
		gguf.KVOf("llama.attention.head_count_kv", uint32(c.KVHeads)),
		gguf.KVOf("llama.attention.layer_norm_rms_epsilon", float32(1e-5)),
		gguf.KVOf("llama.rope.dimension_count", uint32(c.Dim/c.Heads)),
		gguf.KVOf("tokenizer.ggml.model", "llama"),
		gguf.KVOf("tokenizer.ggml.tokens", toks),
		gguf.KVOf("tokenizer.ggml.scores", scores),
		gguf.KVOf("tokenizer.ggml.token_type", types),
		gguf.KVOf("tokenizer.ggml.bos_token_id", uint32(1)),
		gguf.KVOf("tokenizer.ggml.eos_token_id", uint32(2)),
		gguf.KVOf("tokenizer.ggml.unknown_token_id", uint32(0)),
	}
	kvd := c.Dim / c.Heads * c.KVHeads
	var ts []gguf.WriteTensor
	n := uint64(0)
	add := func(name string, cols, rows int) error {
		n++
		tt := typ
		if rows == 1 {
			tt = quant.F32
		} else if in, _ := quant.Lookup(typ); cols%in.BlockSize != 0 {
			tt = quant.F32
		}
		shape := []int64{int64(cols)}
		if rows > 1 {
			shape = append(shape, int64(rows))
		}
		size, err := quant.Bytes(tt, int64(cols)*int64(rows))
		if err != nil {
			return fmt.Errorf("synth: %s: %w", name, err)
		}
		s := seed*1000003 + n
		isNorm := rows == 1
		ts = append(ts, gguf.WriteTensor{Name: name, Type: tt, Shape: shape, Size: size, Write: func(w io.Writer) error {
			r := rand.New(rand.NewPCG(s, 7))
			v := make([]float32, cols*rows)
			for i := range v {
				if isNorm {
					v[i] = 1
				} else {
					v[i] = float32(r.NormFloat64() * 0.02)
				}
			}
			b := make([]byte, size)
			if err := quant.Quantize(tt, b, v); err != nil {
				return err
			}
			_, err := w.Write(b)
			return err
		}})
		return nil
	}
	steps := []spec{{"token_embd.weight", c.Dim, c.Vocab}}
	for l := 0; l < c.Layers; l++ {
		p := fmt.Sprintf("blk.%d.", l)
		steps = append(steps,
			spec{p + "attn_norm.weight", c.Dim, 1},
			spec{p + "attn_q.weight", c.Dim, c.Dim},
			spec{p + "attn_k.weight", c.Dim, kvd},
			spec{p + "attn_v.weight", c.Dim, kvd},
			spec{p + "attn_output.weight", c.Dim, c.Dim},
			spec{p + "ffn_norm.weight", c.Dim, 1},
			spec{p + "ffn_gate.weight", c.Dim, c.Hidden},
			spec{p + "ffn_up.weight", c.Dim, c.Hidden},
			spec{p + "ffn_down.weight", c.Hidden, c.Dim})
	}
	steps = append(steps, spec{"output_norm.weight", c.Dim, 1}, spec{"output.weight", c.Dim, c.Vocab})
	for _, s := range steps {
		if err := add(s.name, s.cols, s.rows); err != nil {
			return err
		}
	}
	return gguf.Write(w, 3, kv, ts, 0)
}
