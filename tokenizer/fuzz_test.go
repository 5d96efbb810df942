package tokenizer

import (
	"os"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	"github.com/qtune/qtune/internal/shared"
)

var (
	fuzzOnce sync.Once
	fuzzToks map[string]*Tokenizer
)

// fuzzTokenizers: the real vocabularies, plus GPT-2's vocabulary run with the
// other pre-tokenizers so that every scanner meets real merges.
func fuzzTokenizers(t testing.TB) map[string]*Tokenizer {
	fuzzOnce.Do(func() {
		fuzzToks = map[string]*Tokenizer{
			"stories": loadGGUF(t, "assets", "models", "stories260K.gguf"),
			"llama2":  loadFile(t, FromSentencePiece, "assets", "tokenizers", "llama2", "tokenizer.model"),
			"gpt2":    loadGGUF(t, "assets", "tokenizers", "gpt2", "vocab-gpt2.gguf"),
		}
		for _, pre := range []string{"llama-bpe", "qwen2", "smollm"} {
			v := fuzzToks["gpt2"].Vocab()
			v.Pre = pre
			tk, err := New(v)
			if err != nil {
				t.Fatal(err)
			}
			fuzzToks["gpt2-"+pre] = tk
		}
	})
	return fuzzToks
}

func FuzzEncode(f *testing.F) {
	texts, _ := vectors(f, "llama2")
	for _, s := range texts {
		f.Add(s)
	}
	f.Add("\xff\xfe\x00 ▁▁ <s></s><|endoftext|> it's IT'S 12345\r\n\n\t")
	toks := fuzzTokenizers(f)
	f.Fuzz(func(t *testing.T, s string) {
		for name, tk := range toks {
			ids := tk.Encode(s, true)
			for _, id := range ids {
				if id < 0 || id >= tk.VocabSize() {
					t.Fatalf("%s: id %d out of range", name, id)
				}
			}
			if d := tk.Decode(ids); d != expectDecode(tk, s) {
				t.Fatalf("%s: Decode(Encode(%q)) = %q", name, s, d)
			}
			if len(s) <= 256 {
				want := ref(tk, s)
				if tk.BOS() >= 0 {
					want = append([]int{tk.BOS()}, want...)
				}
				if !equalIDs(ids, want) {
					t.Fatalf("%s %q: %v, reference %v", name, s, ids, want)
				}
			}
		}
	})
}

// TestRoundTripRandom: Decode(Encode(s)) for random valid UTF-8 and random
// bytes.
func TestRoundTripRandom(t *testing.T) {
	toks := fuzzTokenizers(t)
	var texts []string
	for i := range 200 {
		b := make([]byte, i%37)
		for j := range b {
			b[j] = byte(i*131 + j*71 + j*j)
		}
		texts = append(texts, string(b), strings.ToValidUTF8(string(b), "?"))
	}
	for _, s := range texts {
		for name, tk := range toks {
			ids := tk.Encode(s, false)
			if d := tk.Decode(ids); d != expectDecode(tk, s) {
				t.Fatalf("%s: Decode(Encode(%q)) = %q", name, s, d)
			}
		}
		_ = utf8.ValidString(s)
	}
}

func FuzzSentencePiece(f *testing.F) {
	pieces, scores, types := toySPM()
	f.Add(spModelBytes(pieces, scores, types, 2, true, true))
	f.Add(spModelBytes(pieces[:5], scores[:5], types[:5], 2, false, false))
	f.Add(spModelBytes(pieces, scores, types, 1, true, true))
	if data, err := os.ReadFile(shared.Path(f, "assets", "tokenizers", "llama2", "tokenizer.model")); err == nil {
		f.Add(data[:4096])
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		tk, err := FromSentencePiece(data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "tokenizer: ") {
				t.Fatalf("error without prefix: %v", err)
			}
			return
		}
		for _, s := range []string{"", "hello world", "  a\xff\u2581"} {
			roundTrip(t, tk, s)
		}
		tk.Decode([]int{0, 1, 2, 3, 1 << 30, -1})
	})
}

func FuzzLlama2C(f *testing.F) {
	if data, err := os.ReadFile(shared.Path(f, "assets", "models", "llama2c", "tok512.bin")); err == nil {
		f.Add(data, 512)
		f.Add(data[:200], 0)
		f.Add(data, 1<<20)
	}
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 'a'}, 1)
	f.Fuzz(func(t *testing.T, data []byte, n int) {
		tk, err := FromLlama2C(data, n)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "tokenizer: ") {
				t.Fatalf("error without prefix: %v", err)
			}
			return
		}
		roundTrip(t, tk, "Once upon a time \xff")
	})
}

func FuzzTokenizerJSON(f *testing.F) {
	for _, s := range []string{
		toyByteLevelJSON(reLlama3, true),
		toyByteLevelJSON(reQwen2, false),
		toyMetaspaceJSON(),
		`{"model":{"type":"BPE","vocab":{"a":0,"b":1,"ab":2},"merges":[["a","b"]]},"pre_tokenizer":{"type":"ByteLevel"}}`,
		`{"model":{"type":"Unigram"}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		v, err := parseTokenizerJSON(data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "tokenizer: ") {
				t.Fatalf("error without prefix: %v", err)
			}
			return
		}
		tk, err := New(v)
		if err != nil {
			return
		}
		roundTrip(t, tk, "Hello, y'all! 123 \xff")
	})
}

// roundTrip checks that s encodes to ids in range and, when the vocabulary
// can spell any text (a token for every byte) and no id is the unknown
// token, decodes back to s.
func roundTrip(t *testing.T, tk *Tokenizer, s string) {
	t.Helper()
	ids := tk.Encode(s, false)
	for _, id := range ids {
		if id < 0 || id >= tk.VocabSize() {
			t.Fatalf("id %d out of range", id)
		}
		if id == tk.UNK() || tk.Type(id) == TypeUnknown {
			return
		}
	}
	for _, b := range tk.byteTok {
		if b < 0 {
			return
		}
	}
	// A SentencePiece vocabulary without a "▁" piece spells a space with
	// the byte tokens of "▁", which decode (as in llama.cpp) to "▁".
	if _, ok := tk.TokenID("▁"); tk.Kind() == SPM && !ok && strings.ContainsRune(expectDecode(tk, s), ' ') {
		return
	}
	if d := tk.Decode(ids); d != expectDecode(tk, s) {
		t.Fatalf("Decode(Encode(%q)) = %q (ids %v)", s, d, ids)
	}
}

// FuzzPreSplit: every pre-tokenizer covers its input exactly with
// non-empty pieces, on any bytes.
func FuzzPreSplit(f *testing.F) {
	f.Add("<|im_start|>user\n日本語 it's  12345 ΩK\u3000。\r\n")
	f.Add("\xff\x00 \u0301a\u0915\u093f 😀")
	f.Fuzz(func(t *testing.T, s string) {
		for _, k := range []preKind{preGPT2, preLlama3, preQwen2, preQwen35, preDeepSeekLLM, preGemma4, preSmolLM} {
			var b strings.Builder
			preSplit(k, s, func(p string) {
				if p == "" {
					t.Fatalf("pre %d: empty piece of %q", k, s)
				}
				b.WriteString(p)
			})
			if b.String() != s {
				t.Fatalf("pre %d: %q reassembles to %q", k, s, b.String())
			}
		}
	})
}

// FuzzEncodeSpecial: special-token parsing never panics and gives ids in
// range on any input.
func FuzzEncodeSpecial(f *testing.F) {
	f.Add("<s>hi</s> <|endoftext|><unk>x")
	toks := fuzzTokenizers(f)
	f.Fuzz(func(t *testing.T, s string) {
		for name, tk := range toks {
			for _, id := range tk.EncodeSpecial(s, true) {
				if id < 0 || id >= tk.VocabSize() {
					t.Fatalf("%s: id %d out of range", name, id)
				}
			}
		}
	})
}
