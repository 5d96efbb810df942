package tokenizer

import (
	"encoding/binary"
	"errors"
	"math"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/qtune/qtune/format/gguf"
	"github.com/qtune/qtune/internal/shared"
)

// The three llama2 files and the two stories files describe the same
// vocabularies.
func TestLoadersAgree(t *testing.T) {
	for _, set := range []map[string]*Tokenizer{llama2Tokenizers(t), storiesTokenizers(t)} {
		var ref *Tokenizer
		var refName string
		for name, tk := range set {
			if ref == nil {
				ref, refName = tk, name
				continue
			}
			a, b := ref.Vocab(), tk.Vocab()
			if len(a.Tokens) != len(b.Tokens) {
				t.Fatalf("%s vs %s: %d vs %d tokens", refName, name, len(a.Tokens), len(b.Tokens))
			}
			for i := range a.Tokens {
				if a.Tokens[i] != b.Tokens[i] || a.Scores[i] != b.Scores[i] || a.Types[i] != b.Types[i] {
					t.Fatalf("%s vs %s: token %d: %q %v %d vs %q %v %d", refName, name, i,
						a.Tokens[i], a.Scores[i], a.Types[i], b.Tokens[i], b.Scores[i], b.Types[i])
				}
			}
			if a.BOS != b.BOS || a.EOS != b.EOS || a.UNK != b.UNK || a.AddSpacePrefix != b.AddSpacePrefix {
				t.Errorf("%s vs %s: specials differ: %+v vs %+v", refName, name,
					[]any{a.BOS, a.EOS, a.UNK, a.AddSpacePrefix}, []any{b.BOS, b.EOS, b.UNK, b.AddSpacePrefix})
			}
		}
	}
	g := gpt2Tokenizers(t)
	a, b := g["gguf"].Vocab(), g["hf"].Vocab()
	if !reflect.DeepEqual(a.Tokens, b.Tokens) || !reflect.DeepEqual(a.Merges, b.Merges) || !reflect.DeepEqual(a.Types, b.Types) ||
		a.BOS != b.BOS || a.EOS != b.EOS {
		t.Error("gpt2: GGUF and vocab.json+merges.txt differ")
	}
}

func TestPieceAndDecode(t *testing.T) {
	tk := storiesTokenizers(t)["gguf"]
	if p := tk.Piece(1); p != "" {
		t.Errorf("Piece(BOS) = %q", p)
	}
	if p := tk.Piece(3 + 'A'); p != "A" {
		t.Errorf("Piece(<0x41>) = %q", p)
	}
	if p := tk.Piece(-1) + tk.Piece(1<<30); p != "" {
		t.Errorf("out of range pieces %q", p)
	}
	ids := tk.Encode("Once upon a time", true)
	var b strings.Builder
	for _, id := range ids {
		b.WriteString(tk.Piece(id))
	}
	if b.String() != " Once upon a time" {
		t.Errorf("pieces %q", b.String())
	}
	ids = append(ids, -5, 1<<40, 2)
	if d := tk.Decode(ids); d != "Once upon a time" {
		t.Errorf("Decode with junk ids = %q", d)
	}
	// byte tokens reassemble UTF-8
	if d := tk.Decode(tk.Encode("🦙 é", false)); d != "🦙 é" {
		t.Errorf("bytes: %q", d)
	}
	if tk.Encode("", true)[0] != 1 || len(tk.Encode("", false)) != 0 {
		t.Error("empty text")
	}
	g := gpt2Tokenizers(t)["gguf"]
	if g.Encode("x", true)[0] != 50256 || g.Kind() != BPE || g.Piece(50256) != "" {
		t.Error("gpt2 specials")
	}
	if p := g.Piece(g.Encode(" world", false)[0]); p != " world" {
		t.Errorf("gpt2 piece %q", p)
	}
}

func TestNewValidates(t *testing.T) {
	good := func() Vocab {
		return Vocab{Kind: SPM, Tokens: []string{"<unk>", "a", "b", "ab"}, Scores: []float32{0, -1, -2, -3},
			BOS: -1, EOS: -1, UNK: 0, PAD: -1}
	}
	if _, err := New(good()); err != nil {
		t.Fatal(err)
	}
	bads := map[string]func(*Vocab){
		"empty":       func(v *Vocab) { v.Tokens, v.Scores = nil, nil },
		"scores":      func(v *Vocab) { v.Scores = v.Scores[:2] },
		"types":       func(v *Vocab) { v.Types = []int32{1} },
		"type value":  func(v *Vocab) { v.Types = []int32{1, 1, 9, 1} },
		"bos":         func(v *Vocab) { v.BOS = 4 },
		"eos":         func(v *Vocab) { v.EOS = -2 },
		"kind":        func(v *Vocab) { v.Kind = 7 },
		"bpe merge":   func(v *Vocab) { v.Kind = BPE; v.Merges = []string{"a c"} },
		"bpe result":  func(v *Vocab) { v.Kind = BPE; v.Merges = []string{"b a"} },
		"bpe nospace": func(v *Vocab) { v.Kind = BPE; v.Merges = []string{"ab"} },
		"bpe pre":     func(v *Vocab) { v.Kind = BPE; v.Pre = "klingon" },
	}
	for name, f := range bads {
		v := good()
		f(&v)
		_, err := New(v)
		if err == nil {
			t.Errorf("%s: no error", name)
			continue
		}
		if !strings.HasPrefix(err.Error(), "tokenizer: ") || !(errors.Is(err, ErrInvalid) || errors.Is(err, ErrUnsupported)) {
			t.Errorf("%s: error %v", name, err)
		}
	}
	v := good()
	v.Kind = BPE
	v.Merges = []string{"a b"}
	tk, err := New(v)
	if err != nil {
		t.Fatal(err)
	}
	// no byte tokens in this toy vocabulary: unknown bytes become UNK
	if got := tk.Encode("abz", false); !equalIDs(got, []int{3, 0}) {
		t.Errorf("toy BPE: %v", got)
	}
}

// A user-defined token is matched whole in the text, in both algorithms.
func TestUserDefined(t *testing.T) {
	spm := storiesTokenizers(t)["gguf"].Vocab()
	spm.Tokens = append(spm.Tokens, "<|im|>")
	spm.Scores = append(spm.Scores, 0)
	spm.Types = append(spm.Types, TypeUserDefined)
	tk, err := New(spm)
	if err != nil {
		t.Fatal(err)
	}
	ids := tk.Encode("a<|im|>b", false)
	if !equalIDs(ids[1:2], []int{512}) && !equalIDs(ids[2:3], []int{512}) {
		t.Errorf("SPM user-defined: %v", ids)
	}
	if d := tk.Decode(ids); d != "a<|im|>b" {
		t.Errorf("SPM user-defined decode %q", d)
	}
	bpe := gpt2Tokenizers(t)["gguf"].Vocab()
	bpe.Tokens = append(bpe.Tokens, "<|im|>")
	bpe.Types = append(bpe.Types, TypeUserDefined)
	bpe.Scores = append(bpe.Scores, 0)
	tk, err = New(bpe)
	if err != nil {
		t.Fatal(err)
	}
	ids = tk.Encode("Hello<|im|> world", false)
	if !equalIDs(ids, []int{15496, 50257, 995}) {
		t.Errorf("BPE user-defined: %v", ids)
	}
	if d := tk.Decode(ids); d != "Hello<|im|> world" {
		t.Errorf("BPE user-defined decode %q", d)
	}
	// control tokens in the text stay plain text
	g := gpt2Tokenizers(t)["gguf"]
	for _, id := range g.Encode("<|endoftext|>", false) {
		if id == 50256 {
			t.Error("control token parsed from text")
		}
	}
}

func TestLlama2CErrors(t *testing.T) {
	data, err := os.ReadFile(shared.Path(t, "assets", "models", "llama2c", "tok512.bin"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		data []byte
		n    int
	}{{nil, 512}, {data[:3], 512}, {data[:100], 512}, {data, 513}, {data, 1 << 40}} {
		if _, err := FromLlama2C(c.data, c.n); !errors.Is(err, ErrFormat) {
			t.Errorf("%d bytes, %d tokens: %v", len(c.data), c.n, err)
		}
	}
	tk, err := FromLlama2C(data, 0) // read to the end
	if err != nil || tk.VocabSize() != 512 {
		t.Errorf("vocab 0: %v", err)
	}
	bad := append([]byte(nil), data...)
	binary.LittleEndian.PutUint32(bad[8:], math.MaxUint32) // length of token 0 = -1
	if _, err := FromLlama2C(bad, 512); !errors.Is(err, ErrFormat) {
		t.Errorf("negative length: %v", err)
	}
}

// --- SentencePiece ---

// pb is a tiny protobuf writer for synthetic models.
type pb []byte

func (p pb) varint(v uint64) pb {
	for v >= 0x80 {
		p = append(p, byte(v)|0x80)
		v >>= 7
	}
	return append(p, byte(v))
}
func (p pb) key(f, wt int) pb         { return p.varint(uint64(f<<3 | wt)) }
func (p pb) uint(f int, v uint64) pb  { return p.key(f, 0).varint(v) }
func (p pb) bytes(f int, b []byte) pb { return p.key(f, 2).varint(uint64(len(b))).append(b) }
func (p pb) append(b []byte) pb       { return append(p, b...) }
func (p pb) f32(f int, v float32) pb {
	p = p.key(f, 5)
	return binary.LittleEndian.AppendUint32(p, math.Float32bits(v))
}

func spModelBytes(pieces []string, scores []float32, types []int32, modelType int, dummy, removeWS bool) []byte {
	var m pb
	for i, s := range pieces {
		var e pb
		e = e.bytes(1, []byte(s)).f32(2, scores[i]).uint(3, uint64(types[i]))
		m = m.bytes(1, e)
	}
	var tr pb
	tr = tr.uint(3, uint64(modelType)).uint(35, 1).uint(40, 0).uint(41, 1).uint(42, 2).uint(43, math.MaxUint64) // pad -1
	tr = tr.bytes(1, []byte("corpus.txt"))                                                                      // unknown field, skipped
	m = m.bytes(2, tr)
	var n pb
	n = n.bytes(1, []byte("identity")).uint(3, b2u(dummy)).uint(4, b2u(removeWS))
	return m.bytes(3, n)
}

func b2u(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

func toySPM() ([]string, []float32, []int32) {
	pieces := []string{"<unk>", "<s>", "</s>"}
	types := []int32{TypeUnknown, TypeControl, TypeControl}
	for b := 0; b < 256; b++ {
		pieces = append(pieces, "<0x"+strings.ToUpper(string("0123456789abcdef"[b>>4])+string("0123456789abcdef"[b&15]))+">")
		types = append(types, TypeByte)
	}
	for _, s := range []string{"▁", "a", "b", "c", "▁a", "ab", "▁ab", "bc", "abc"} {
		pieces = append(pieces, s)
		types = append(types, TypeNormal)
	}
	scores := make([]float32, len(pieces))
	for i := range scores {
		if i >= 259 {
			scores[i] = -float32(i - 259)
		}
	}
	return pieces, scores, types
}

func TestSentencePieceSynthetic(t *testing.T) {
	pieces, scores, types := toySPM()
	tk, err := FromSentencePiece(spModelBytes(pieces, scores, types, 2, true, true))
	if err != nil {
		t.Fatal(err)
	}
	if tk.BOS() != 1 || tk.EOS() != 2 || tk.PAD() != -1 || tk.UNK() != 0 {
		t.Errorf("specials %d %d %d %d", tk.BOS(), tk.EOS(), tk.PAD(), tk.UNK())
	}
	// remove_extra_whitespaces: "  ab   c " -> "ab c"
	a, b := tk.Encode("  ab   c ", false), tk.Encode("ab c", false)
	if !equalIDs(a, b) || tk.Decode(a) != "ab c" {
		t.Errorf("extra whitespace: %v vs %v", a, b)
	}
	if got := tk.Encode("ab", false); !equalIDs(got, []int{265}) { // ▁ab
		t.Errorf("ab: %v", got)
	}
	tk2, err := FromSentencePiece(spModelBytes(pieces, scores, types, 2, false, false))
	if err != nil {
		t.Fatal(err)
	}
	if got := tk2.Encode("abc", false); !equalIDs(got, []int{267}) { // abc, no dummy prefix
		t.Errorf("no dummy prefix: %v", got)
	}
	if _, err := FromSentencePiece(spModelBytes(pieces, scores, types, 1, true, true)); !errors.Is(err, ErrUnsupported) {
		t.Errorf("unigram: %v", err)
	}
	for _, bad := range [][]byte{
		{0x0a, 0x05, 0x0a},       // piece past end
		{0x0a, 0x02, 0x18, 0x09}, // piece type 9
		{0x08},                   // varint past end
		{0x00, 0x01},             // field 0
		{0x0b},                   // group wire type
		{0x0a, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01}, // long varint
	} {
		if _, err := FromSentencePiece(bad); !errors.Is(err, ErrFormat) {
			t.Errorf("% x: %v", bad, err)
		}
	}
	if _, err := FromSentencePiece(nil); !errors.Is(err, ErrFormat) {
		t.Errorf("empty model: %v", err)
	}
}

// --- GGUF ---

func ggufFile(t *testing.T, kv ...gguf.KV) *gguf.File {
	t.Helper()
	return &gguf.File{KV: kv}
}

func TestGGUFErrors(t *testing.T) {
	if _, err := FromGGUF(ggufFile(t)); !errors.Is(err, ErrNoTokenizer) {
		t.Errorf("no tokenizer: %v", err)
	}
	if _, err := FromGGUF(nil); !errors.Is(err, ErrNoTokenizer) {
		t.Errorf("nil: %v", err)
	}
	if _, err := FromGGUF(ggufFile(t, gguf.KVOf("tokenizer.ggml.model", "bert"))); !errors.Is(err, ErrUnsupported) {
		t.Errorf("bert: %v", err)
	}
	if _, err := FromGGUF(ggufFile(t, gguf.KVOf("tokenizer.ggml.model", "llama"))); !errors.Is(err, ErrFormat) {
		t.Errorf("no tokens: %v", err)
	}
	_, err := FromGGUF(ggufFile(t, gguf.KVOf("tokenizer.ggml.model", "llama"),
		gguf.KVOf("tokenizer.ggml.tokens", []string{"a", "b"}), gguf.KVOf("tokenizer.ggml.scores", []float32{1})))
	if !errors.Is(err, ErrInvalid) {
		t.Errorf("short scores: %v", err)
	}
	tk, err := FromGGUF(ggufFile(t, gguf.KVOf("tokenizer.ggml.model", "gpt2"),
		gguf.KVOf("tokenizer.ggml.tokens", []string{"a", "b", "ab"}), gguf.KVOf("tokenizer.ggml.merges", []string{"a b"}),
		gguf.KVOf("tokenizer.ggml.bos_token_id", uint32(math.MaxUint32)), gguf.KVOf("tokenizer.ggml.pre", "qwen2"),
		gguf.KVOf("tokenizer.chat_template", "{{x}}")))
	if err != nil {
		t.Fatal(err)
	}
	if tk.BOS() != -1 || tk.ChatTemplate() != "{{x}}" || !equalIDs(tk.Encode("ab", true), []int{2}) {
		t.Errorf("gpt2 toy: bos %d template %q ids %v", tk.BOS(), tk.ChatTemplate(), tk.Encode("ab", true))
	}
}
