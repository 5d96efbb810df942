package llama2c

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
)

// MaxDim bounds every header field.
const MaxDim = 1 << 20

// ErrFormat matches every error Parse and ParseTokenizer return.
var ErrFormat = errors.New("llama2c: malformed file")

type formatError struct{ err error }

func (e *formatError) Error() string   { return e.err.Error() }
func (e *formatError) Unwrap() []error { return []error{ErrFormat, e.err} }

func errf(format string, args ...any) error {
	return &formatError{fmt.Errorf("llama2c: "+format, args...)}
}

// Config is the checkpoint header. VocabSize is the absolute value of the
// stored field; SharedClassifier is true when it was positive (the output
// matrix is the token embedding).
type Config struct {
	Dim, HiddenDim, NLayers, NHeads, NKVHeads, VocabSize, SeqLen int
	SharedClassifier                                             bool
}

// HeadSize is Dim / NHeads.
func (c Config) HeadSize() int { return c.Dim / c.NHeads }

// KVDim is Dim · NKVHeads / NHeads.
func (c Config) KVDim() int { return c.Dim / c.NHeads * c.NKVHeads }

// Tensor is one weight: a GGUF name, the shape in ne order (Shape[0] is the
// row length, so a row-major (out, in) matrix has Shape [in, out]) and a view
// of the float32 little-endian data.
type Tensor struct {
	Name  string
	Shape []int64
	Data  []byte
}

// Model is a parsed checkpoint. Tensors are: token_embd.weight, then for each
// layer blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm,
// ffn_gate, ffn_down, ffn_up}.weight, then output_norm.weight, and
// output.weight only when the classifier is not shared.
type Model struct {
	Config  Config
	Tensors []Tensor
}

// Tensor returns the tensor with the given name.
func (m *Model) Tensor(name string) (Tensor, bool) {
	for _, t := range m.Tensors {
		if t.Name == name {
			return t, true
		}
	}
	return Tensor{}, false
}

const headerBytes = 7 * 4

// size accumulates a byte count, failing on overflow.
type size struct {
	n   int64
	bad bool
}

func (s *size) mul(xs ...int) int64 {
	p := int64(1)
	for _, x := range xs {
		if x != 0 && p > math.MaxInt64/int64(x) {
			s.bad = true
			return 0
		}
		p *= int64(x)
	}
	return p
}

// ParseConfig reads and validates the 28-byte header.
func ParseConfig(data []byte) (Config, error) {
	if len(data) < headerBytes {
		return Config{}, errf("file of %d bytes: %w (header is %d bytes)", len(data), io.ErrUnexpectedEOF, headerBytes)
	}
	var h [7]int32
	for i := range h {
		h[i] = int32(binary.LittleEndian.Uint32(data[4*i:]))
	}
	c := Config{Dim: int(h[0]), HiddenDim: int(h[1]), NLayers: int(h[2]), NHeads: int(h[3]), NKVHeads: int(h[4]),
		VocabSize: int(h[5]), SeqLen: int(h[6]), SharedClassifier: h[5] > 0}
	if c.VocabSize < 0 {
		c.VocabSize = -c.VocabSize
	}
	for _, f := range []struct {
		name string
		v    int
	}{{"dim", c.Dim}, {"hidden_dim", c.HiddenDim}, {"n_layers", c.NLayers}, {"n_heads", c.NHeads},
		{"n_kv_heads", c.NKVHeads}, {"vocab_size", c.VocabSize}, {"seq_len", c.SeqLen}} {
		if f.v <= 0 || f.v > MaxDim {
			return Config{}, errf("header: %s = %d, want 1..%d", f.name, f.v, MaxDim)
		}
	}
	if c.Dim%c.NHeads != 0 {
		return Config{}, errf("header: dim %d is not a multiple of n_heads %d", c.Dim, c.NHeads)
	}
	if c.NHeads%c.NKVHeads != 0 {
		return Config{}, errf("header: n_heads %d is not a multiple of n_kv_heads %d", c.NHeads, c.NKVHeads)
	}
	if c.HeadSize()%2 != 0 {
		return Config{}, errf("header: head size %d is odd", c.HeadSize())
	}
	return c, nil
}

// Parse reads a legacy llama2.c checkpoint held in data. Tensor data are
// views of data. Bytes after the last array are ignored, as run.c does.
func Parse(data []byte) (*Model, error) {
	c, err := ParseConfig(data)
	if err != nil {
		return nil, err
	}
	C, F, L, V, KV := c.Dim, c.HiddenDim, c.NLayers, c.VocabSize, c.KVDim()
	var s size
	// The arrays in file order: name pattern, per-layer ne shape, layers (0 = not stacked).
	type array struct {
		name   string
		shape  []int
		layers int
		skip   bool
	}
	arrays := []array{
		{"token_embd.weight", []int{C, V}, 0, false},
		{"attn_norm.weight", []int{C}, L, false},
		{"attn_q.weight", []int{C, C}, L, false},
		{"attn_k.weight", []int{C, KV}, L, false},
		{"attn_v.weight", []int{C, KV}, L, false},
		{"attn_output.weight", []int{C, C}, L, false},
		{"ffn_norm.weight", []int{C}, L, false},
		{"ffn_gate.weight", []int{C, F}, L, false}, // w1
		{"ffn_down.weight", []int{F, C}, L, false}, // w2
		{"ffn_up.weight", []int{C, F}, L, false},   // w3
		{"output_norm.weight", []int{C}, 0, false},
		{"freq_cis_real", []int{c.SeqLen, c.HeadSize() / 2}, 0, true},
		{"freq_cis_imag", []int{c.SeqLen, c.HeadSize() / 2}, 0, true},
	}
	if !c.SharedClassifier {
		arrays = append(arrays, array{"output.weight", []int{C, V}, 0, false})
	}
	type placed struct {
		array
		off, bytes int64 // per layer when stacked
	}
	var ps []placed
	off := int64(headerBytes)
	for _, a := range arrays {
		per := s.mul(append([]int{4}, a.shape...)...)
		total := per
		if a.layers > 0 {
			total = s.mul(int(per), a.layers)
		}
		if s.bad || off > math.MaxInt64-total {
			return nil, errf("header %+v: sizes overflow", c)
		}
		ps = append(ps, placed{a, off, per})
		off += total
	}
	if off > int64(len(data)) {
		return nil, errf("file of %d bytes is too short for %+v: need %d: %w", len(data), c, off, io.ErrUnexpectedEOF)
	}
	m := &Model{Config: c, Tensors: make([]Tensor, 0, 3+9*L)}
	view := func(name string, shape []int, off, n int64) {
		sh := make([]int64, len(shape))
		for i, d := range shape {
			sh[i] = int64(d)
		}
		m.Tensors = append(m.Tensors, Tensor{Name: name, Shape: sh, Data: data[off : off+n : off+n]})
	}
	byName := map[string]placed{}
	for _, p := range ps {
		byName[p.name] = p
	}
	emit := func(name string) {
		p := byName[name]
		view(name, p.shape, p.off, p.bytes)
	}
	emit("token_embd.weight")
	for l := 0; l < L; l++ {
		for _, p := range ps[1:10] {
			view(fmt.Sprintf("blk.%d.%s", l, p.name), p.shape, p.off+int64(l)*p.bytes, p.bytes)
		}
	}
	emit("output_norm.weight")
	if !c.SharedClassifier {
		emit("output.weight")
	}
	return m, nil
}

// Vocab is a llama2.c tokenizer.bin.
type Vocab struct {
	MaxTokenLength int
	Pieces         []string
	Scores         []float32
}

// ParseTokenizer reads a tokenizer.bin with vocabSize entries (the count is
// the model's, the file does not store it). Bytes after the last entry are
// ignored, as run.c does. Pieces are copied.
func ParseTokenizer(data []byte, vocabSize int) (*Vocab, error) {
	if vocabSize <= 0 || vocabSize > MaxDim {
		return nil, errf("tokenizer: vocab size %d, want 1..%d", vocabSize, MaxDim)
	}
	if len(data) < 4 {
		return nil, errf("tokenizer: file of %d bytes: %w", len(data), io.ErrUnexpectedEOF)
	}
	maxLen := binary.LittleEndian.Uint32(data)
	if maxLen > MaxDim {
		return nil, errf("tokenizer: max_token_length %d exceeds %d", maxLen, MaxDim)
	}
	// Each entry takes at least 8 bytes (score, length).
	if vocabSize > (len(data)-4)/8 {
		return nil, errf("tokenizer: file of %d bytes cannot hold %d tokens: %w", len(data), vocabSize, io.ErrUnexpectedEOF)
	}
	v := &Vocab{MaxTokenLength: int(maxLen), Pieces: make([]string, vocabSize), Scores: make([]float32, vocabSize)}
	pos := 4
	for i := 0; i < vocabSize; i++ {
		if len(data)-pos < 8 {
			return nil, errf("tokenizer: token %d at offset %d: %w", i, pos, io.ErrUnexpectedEOF)
		}
		v.Scores[i] = math.Float32frombits(binary.LittleEndian.Uint32(data[pos:]))
		n := int32(binary.LittleEndian.Uint32(data[pos+4:]))
		pos += 8
		if n < 0 || uint32(n) > maxLen {
			return nil, errf("tokenizer: token %d: length %d outside 0..max_token_length %d", i, n, maxLen)
		}
		if int(n) > len(data)-pos {
			return nil, errf("tokenizer: token %d at offset %d: %w (length %d)", i, pos, io.ErrUnexpectedEOF, n)
		}
		v.Pieces[i] = string(data[pos : pos+int(n)])
		pos += int(n)
	}
	return v, nil
}
