package llama2c

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"os"
	"strings"
	"testing"

	"github.com/qtune/qtune/format/gguf"
	"github.com/qtune/qtune/internal/shared"
	"github.com/qtune/qtune/quant"
)

func read(t *testing.T, elem ...string) []byte {
	t.Helper()
	b, err := os.ReadFile(shared.Path(t, elem...))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestStories260K(t *testing.T) {
	b := read(t, "assets", "models", "llama2c", "stories260K.bin")
	m, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	want := Config{Dim: 64, HiddenDim: 172, NLayers: 5, NHeads: 8, NKVHeads: 4, VocabSize: 512, SeqLen: 512, SharedClassifier: true}
	if m.Config != want {
		t.Fatalf("config %+v, want %+v", m.Config, want)
	}
	if len(m.Tensors) != 2+9*5 {
		t.Fatalf("%d tensors", len(m.Tensors))
	}
	if _, ok := m.Tensor("output.weight"); ok {
		t.Error("shared classifier has an output.weight")
	}

	gb := read(t, "assets", "models", "stories260K.gguf")
	g, err := gguf.Parse(gb)
	if err != nil {
		t.Fatal(err)
	}
	for _, lt := range m.Tensors {
		gt, ok := g.Tensor(lt.Name)
		if !ok {
			t.Errorf("%s: not in the GGUF", lt.Name)
			continue
		}
		if gt.Type != quant.F32 || !equalShape(gt.Shape, lt.Shape) {
			t.Errorf("%s: GGUF %s %v, llama2c F32 %v", lt.Name, gt.Type, gt.Shape, lt.Shape)
		}
		if !bytes.Equal(g.Data(gb, gt), lt.Data) {
			t.Errorf("%s: bytes differ from the GGUF", lt.Name)
		}
		if cap(lt.Data) != len(lt.Data) {
			t.Errorf("%s: view not capped", lt.Name)
		}
	}
	// The GGUF's output.weight is the tied embedding.
	out, _ := g.Tensor("output.weight")
	emb, _ := m.Tensor("token_embd.weight")
	if !bytes.Equal(g.Data(gb, out), emb.Data) {
		t.Error("GGUF output.weight differs from the llama2.c embedding")
	}
	// Trailing bytes are ignored (as run.c does); one byte short is an error.
	if _, err := Parse(append(bytes.Clone(b), 1, 2, 3)); err != nil {
		t.Errorf("trailing bytes: %v", err)
	}
	if _, err := Parse(b[:len(b)-1]); err == nil || !errors.Is(err, ErrFormat) {
		t.Errorf("one byte short: %v", err)
	}

	tok := read(t, "assets", "models", "llama2c", "tok512.bin")
	v, err := ParseTokenizer(tok, m.Config.VocabSize)
	if err != nil {
		t.Fatal(err)
	}
	if v.MaxTokenLength != 7 || len(v.Pieces) != 512 || len(v.Scores) != 512 ||
		v.Pieces[0] != "<unk>" || v.Pieces[1] != "\n<s>\n" || v.Pieces[2] != "\n</s>\n" || v.Pieces[3] != "<0x00>" || v.Pieces[258] != "<0xFF>" {
		t.Errorf("vocab: max %d, pieces %q", v.MaxTokenLength, v.Pieces[:4])
	}
	// Pieces and scores agree with the GGUF's tokenizer (▁ stored as a space).
	toks, _ := g.Strings("tokenizer.ggml.tokens")
	scores, _ := g.Float32s("tokenizer.ggml.scores")
	for i := 3; i < 512; i++ {
		if strings.ReplaceAll(toks[i], "▁", " ") != v.Pieces[i] || scores[i] != v.Scores[i] {
			t.Errorf("token %d: llama2c %q %v, GGUF %q %v", i, v.Pieces[i], v.Scores[i], toks[i], scores[i])
			break
		}
	}
}

func TestLlama2Tokenizer(t *testing.T) {
	b := read(t, "assets", "tokenizers", "llama2", "tokenizer.bin")
	v, err := ParseTokenizer(b, 32000)
	if err != nil {
		t.Fatal(err)
	}
	if v.MaxTokenLength != 27 || len(v.Pieces) != 32000 {
		t.Errorf("max %d, %d pieces", v.MaxTokenLength, len(v.Pieces))
	}
	if _, err := ParseTokenizer(b, 32001); err == nil {
		t.Error("one token too many: no error")
	}
}

func equalShape(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// synth builds a checkpoint for cfg; value k of the file is float32(k).
func synth(c Config) []byte {
	h := []int32{int32(c.Dim), int32(c.HiddenDim), int32(c.NLayers), int32(c.NHeads), int32(c.NKVHeads), int32(c.VocabSize), int32(c.SeqLen)}
	if !c.SharedClassifier {
		h[5] = -h[5]
	}
	var b []byte
	for _, x := range h {
		b = binary.LittleEndian.AppendUint32(b, uint32(x))
	}
	C, F, L, V, KV, S, hs := c.Dim, c.HiddenDim, c.NLayers, c.VocabSize, c.Dim/c.NHeads*c.NKVHeads, c.SeqLen, c.Dim/c.NHeads
	n := V*C + L*(C+C*C+2*KV*C+C*C+C+3*F*C) + C + S*hs
	if !c.SharedClassifier {
		n += V * C
	}
	for k := 0; k < n; k++ {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(float32(k)))
	}
	return b
}

func first(t Tensor) float32 { return math.Float32frombits(binary.LittleEndian.Uint32(t.Data)) }

func TestLayout(t *testing.T) {
	// dim 4, hidden 6, 2 layers, 2 heads, 1 kv head (kv_dim 2), vocab 3, seq 5, separate classifier.
	c := Config{Dim: 4, HiddenDim: 6, NLayers: 2, NHeads: 2, NKVHeads: 1, VocabSize: 3, SeqLen: 5}
	m, err := Parse(synth(c))
	if err != nil {
		t.Fatal(err)
	}
	if m.Config != c {
		t.Fatalf("config %+v", m.Config)
	}
	// Expected first element (float index into the arrays) and shape of each tensor, worked by hand:
	// emb 0..11; rms_att 12 (+4/layer); wq 20 (+16); wk 52 (+8); wv 68 (+8); wo 84 (+16);
	// rms_ffn 116 (+4); w1 124 (+24); w2 172 (+24); w3 220 (+24); rms_final 268; freq_cis 272..281 (2 × seq 5 × head_size/2 1); wcls 282.
	want := []struct {
		name  string
		first float32
		shape []int64
	}{
		{"token_embd.weight", 0, []int64{4, 3}},
		{"blk.0.attn_norm.weight", 12, []int64{4}}, {"blk.0.attn_q.weight", 20, []int64{4, 4}},
		{"blk.0.attn_k.weight", 52, []int64{4, 2}}, {"blk.0.attn_v.weight", 68, []int64{4, 2}},
		{"blk.0.attn_output.weight", 84, []int64{4, 4}}, {"blk.0.ffn_norm.weight", 116, []int64{4}},
		{"blk.0.ffn_gate.weight", 124, []int64{4, 6}}, {"blk.0.ffn_down.weight", 172, []int64{6, 4}},
		{"blk.0.ffn_up.weight", 220, []int64{4, 6}},
		{"blk.1.attn_norm.weight", 16, []int64{4}}, {"blk.1.attn_q.weight", 36, []int64{4, 4}},
		{"blk.1.attn_k.weight", 60, []int64{4, 2}}, {"blk.1.attn_v.weight", 76, []int64{4, 2}},
		{"blk.1.attn_output.weight", 100, []int64{4, 4}}, {"blk.1.ffn_norm.weight", 120, []int64{4}},
		{"blk.1.ffn_gate.weight", 148, []int64{4, 6}}, {"blk.1.ffn_down.weight", 196, []int64{6, 4}},
		{"blk.1.ffn_up.weight", 244, []int64{4, 6}},
		{"output_norm.weight", 268, []int64{4}},
		{"output.weight", 282, []int64{4, 3}},
	}
	if len(m.Tensors) != len(want) {
		t.Fatalf("%d tensors, want %d", len(m.Tensors), len(want))
	}
	for i, w := range want {
		g := m.Tensors[i]
		n := int64(4)
		for _, d := range w.shape {
			n *= d
		}
		if g.Name != w.name || first(g) != w.first || !equalShape(g.Shape, w.shape) || int64(len(g.Data)) != n {
			t.Errorf("tensor %d: %s first %v shape %v (%d bytes); want %s %v %v", i, g.Name, first(g), g.Shape, len(g.Data), w.name, w.first, w.shape)
		}
	}
	c.SharedClassifier = true
	if m, err := Parse(synth(c)); err != nil || len(m.Tensors) != len(want)-1 {
		t.Errorf("shared: %v", err)
	}
}

func header(h ...int32) []byte {
	var b []byte
	for _, x := range h {
		b = binary.LittleEndian.AppendUint32(b, uint32(x))
	}
	return b
}

func TestDamaged(t *testing.T) {
	for name, c := range map[string]struct {
		data []byte
		want string
	}{
		"empty":         {nil, "header is 28 bytes"},
		"short header":  {header(64, 172, 5), "header is 28 bytes"},
		"zero dim":      {header(0, 172, 5, 8, 4, 512, 512), "dim = 0"},
		"negative dim":  {header(-64, 172, 5, 8, 4, 512, 512), "dim = -64"},
		"huge dim":      {header(1<<21, 172, 5, 8, 4, 512, 512), "dim = 2097152"},
		"zero layers":   {header(64, 172, 0, 8, 4, 512, 512), "n_layers = 0"},
		"zero heads":    {header(64, 172, 5, 0, 4, 512, 512), "n_heads = 0"},
		"zero kv heads": {header(64, 172, 5, 8, 0, 512, 512), "n_kv_heads = 0"},
		"zero vocab":    {header(64, 172, 5, 8, 4, 0, 512), "vocab_size = 0"},
		"min vocab":     {header(64, 172, 5, 8, 4, math.MinInt32, 512), "vocab_size"},
		"zero seq":      {header(64, 172, 5, 8, 4, 512, 0), "seq_len = 0"},
		"heads split":   {header(64, 172, 5, 7, 7, 512, 512), "not a multiple of n_heads 7"},
		"kv split":      {header(64, 172, 5, 8, 3, 512, 512), "not a multiple of n_kv_heads 3"},
		"kv > heads":    {header(64, 172, 5, 8, 16, 512, 512), "not a multiple of n_kv_heads 16"},
		"odd head":      {header(24, 172, 5, 8, 4, 512, 512), "head size 3 is odd"},
		"v1 magic":      {append(header(0x616b3432, 1), make([]byte, 256)...), "dim = 1634415666"},
		"too short":     {header(64, 172, 5, 8, 4, 512, 512), "too short"},
		"overflow":      {header(1<<20, 1<<20, 1<<20, 2, 2, 1<<20, 1<<20), "sizes overflow"},
		"huge sizes":    {header(1<<20, 1<<20, 1<<10, 2, 2, -(1 << 20), 1<<20), "too short"},
	} {
		_, err := Parse(c.data)
		if err == nil {
			t.Errorf("%s: no error", name)
			continue
		}
		msg := err.Error()
		if !errors.Is(err, ErrFormat) || !strings.HasPrefix(msg, "llama2c: ") || strings.Contains(msg, "\n") || !strings.Contains(msg, c.want) {
			t.Errorf("%s: %q, want %q", name, msg, c.want)
		}
	}
	good := synth(Config{Dim: 4, HiddenDim: 6, NLayers: 2, NHeads: 2, NKVHeads: 1, VocabSize: 3, SeqLen: 5})
	for n := 0; n < len(good); n++ {
		if _, err := Parse(good[:n]); err == nil {
			t.Fatalf("truncated to %d bytes: no error", n)
		}
	}
}

// tokFile builds a tokenizer.bin.
func tokFile(maxLen uint32, pieces ...string) []byte {
	b := binary.LittleEndian.AppendUint32(nil, maxLen)
	for i, p := range pieces {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(float32(-i)))
		b = binary.LittleEndian.AppendUint32(b, uint32(len(p)))
		b = append(b, p...)
	}
	return b
}

func TestTokenizerDamaged(t *testing.T) {
	good := tokFile(3, "a", "", "abc")
	v, err := ParseTokenizer(good, 3)
	if err != nil || v.Pieces[2] != "abc" || v.Scores[2] != -2 || v.Pieces[1] != "" {
		t.Fatalf("%+v %v", v, err)
	}
	neg := bytes.Clone(good)
	binary.LittleEndian.PutUint32(neg[8:], 0xFFFFFFFF)
	for name, c := range map[string]struct {
		data  []byte
		vocab int
		want  string
	}{
		"empty":          {nil, 3, "unexpected EOF"},
		"zero vocab":     {good, 0, "vocab size 0"},
		"negative vocab": {good, -1, "vocab size -1"},
		"too many":       {good, 4, "cannot hold 4 tokens"},
		"long piece":     {tokFile(2, "a", "", "abc"), 3, "length 3 outside"},
		"negative len":   {neg, 3, "length -1 outside"},
		"huge max":       {tokFile(1<<30, "a"), 1, "max_token_length"},
		"past end":       {good[:len(good)-1], 3, "unexpected EOF"},
	} {
		_, err := ParseTokenizer(c.data, c.vocab)
		if err == nil || !errors.Is(err, ErrFormat) || !strings.HasPrefix(err.Error(), "llama2c: tokenizer: ") || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
	}
	for n := 0; n < len(good); n++ {
		if _, err := ParseTokenizer(good[:n], 3); err == nil {
			t.Fatalf("truncated to %d bytes: no error", n)
		}
	}
}

// FuzzParse: no panic; on success every view lies in the file and has the
// size its shape gives.
func FuzzParse(f *testing.F) {
	f.Add(synth(Config{Dim: 4, HiddenDim: 6, NLayers: 2, NHeads: 2, NKVHeads: 1, VocabSize: 3, SeqLen: 5}))
	f.Add(synth(Config{Dim: 2, HiddenDim: 1, NLayers: 1, NHeads: 1, NKVHeads: 1, VocabSize: 1, SeqLen: 1, SharedClassifier: true}))
	f.Add(header(64, 172, 5, 8, 4, 512, 512))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Parse(data)
		if err != nil {
			return
		}
		for _, tt := range m.Tensors {
			n := int64(4)
			for _, d := range tt.Shape {
				n *= d
			}
			if int64(len(tt.Data)) != n {
				t.Fatalf("%s: %d bytes for %v", tt.Name, len(tt.Data), tt.Shape)
			}
		}
	})
}

func FuzzParseTokenizer(f *testing.F) {
	f.Add(tokFile(3, "a", "", "abc"), 3)
	f.Add(tokFile(7, "<unk>", "\n<s>\n"), 2)
	f.Fuzz(func(t *testing.T, data []byte, vocab int) {
		v, err := ParseTokenizer(data, vocab)
		if err != nil {
			return
		}
		if len(v.Pieces) != vocab || len(v.Scores) != vocab {
			t.Fatalf("%d pieces for vocab %d", len(v.Pieces), vocab)
		}
		for _, p := range v.Pieces {
			if len(p) > v.MaxTokenLength {
				t.Fatalf("piece of %d bytes, max %d", len(p), v.MaxTokenLength)
			}
		}
	})
}
