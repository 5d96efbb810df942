package llamacpp_test

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/qtune/qtune/format/gguf"
	"github.com/qtune/qtune/internal/llamacpp"
	"github.com/qtune/qtune/internal/shared"
	"github.com/qtune/qtune/tokenizer"
)

// vocabFiles are llama.cpp's vocabulary-only GGUFs in ../shared.
func vocabFiles(t *testing.T) []string {
	t.Helper()
	fs, err := filepath.Glob(shared.Path(t, "assets", "tokenizers", "llamacpp-vocab", "*.gguf"))
	if err != nil || len(fs) == 0 {
		t.Fatalf("no llamacpp-vocab GGUFs (%v)", err)
	}
	return fs
}

// unsupportedVocab are the vocabularies whose pre-tokenizer or tokenizer
// model qtune does not implement yet (FromGGUF refuses them by name).
var unsupportedVocab = map[string]bool{}

func ggufTokenizer(t *testing.T, path string) *tokenizer.Tokenizer {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	f, err := gguf.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	tk, err := tokenizer.FromGGUF(f)
	if unsupportedVocab[filepath.Base(path)] {
		if err == nil {
			t.Fatalf("%s loads now: take it off unsupportedVocab", filepath.Base(path))
		}
		t.Skipf("%s: %v", filepath.Base(path), err)
	}
	if err != nil {
		t.Fatalf("%s: %v", filepath.Base(path), err)
	}
	return tk
}

// TestEOGMatchesLlamaCpp: the ids generation stops on are llama.cpp's own
// (llama_vocab_is_eog over the whole vocabulary) for every real vocabulary.
func TestEOGMatchesLlamaCpp(t *testing.T) {
	llamacpp.Require(t)
	for _, path := range vocabFiles(t) {
		t.Run(filepath.Base(path), func(t *testing.T) {
			tk := ggufTokenizer(t, path)
			resp, err := llamacpp.Vocab(context.Background(), llamacpp.VocabRequest{Model: path, EOG: true})
			if err != nil {
				t.Fatal(err)
			}
			got := tk.EOG()
			if !slices.Equal(got, resp.EOG) {
				t.Fatalf("EOG ids %v, llama.cpp %v", got, resp.EOG)
			}
			for _, id := range got {
				if !tk.IsEOG(id) {
					t.Fatalf("IsEOG(%d) false for an EOG id", id)
				}
			}
			t.Logf("%d EOG ids: %v", len(got), got)
		})
	}
}

// chatTexts are texts with special-token text in them, as chat templates
// write them.
var chatTexts = []string{
	"<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there 👋<|im_end|>\n<|im_start|>assistant\n",
	"<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
	"<s>[INST] Bonjour, ça va ? [/INST] Oui.</s><s>[INST] Et toi? [/INST]",
	"<|user|>\nhello<|end|>\n<|assistant|>\n  spaced  <|end|>\n<|endoftext|>",
	"<start_of_turn>user\n日本語で<end_of_turn>\n<start_of_turn>model\n",
	"no specials at all, just text\n\n",
	"<|im_start|><|im_end|><|im_start|>x",
	"</s></s>a</s>",
}

// TestEncodeSpecialMatchesLlamaCpp: special-token text parsed into ids as
// llama.cpp's parse_special does, and kept as text without it, on every
// vocabulary qtune reads.
func TestEncodeSpecialMatchesLlamaCpp(t *testing.T) {
	llamacpp.Require(t)
	for _, path := range vocabFiles(t) {
		t.Run(filepath.Base(path), func(t *testing.T) {
			tk := ggufTokenizer(t, path)
			for _, special := range []bool{true, false} {
				resp, err := llamacpp.Vocab(context.Background(), llamacpp.VocabRequest{Model: path, Texts: chatTexts, Special: special})
				if err != nil {
					t.Fatal(err)
				}
				for i, text := range chatTexts {
					got := tk.Encode(text, false)
					if special {
						got = tk.EncodeSpecial(text, false)
					}
					if !slices.Equal(got, resp.Tokens[i]) {
						t.Errorf("special=%v %q:\n got %v\nwant %v", special, text, got, resp.Tokens[i])
					}
				}
			}
		})
	}
}

// randomTexts are strings over an alphabet that exercises the
// pre-tokenizers' classes: contractions, case, digits and other numbers,
// ASCII and Unicode spaces, newlines, Latin, Greek, Cyrillic, CJK, Hangul,
// combining marks, emoji, punctuation of both widths.
func randomTexts(n int, seed uint64) []string {
	alphabet := []string{"a", "Z", "é", "ß", "'s", "'LL", "'ve", " ", "  ", "\t", "\n", "\r\n", "\u3000", "\u00a0", "\u2028",
		"1", "23", "4567", "٣", "Ⅻ", "½", "λ", "Ω", "ж", "日本", "語", "한국", "\u0301", "\u0915\u093f", "😀", "👍🏽",
		",", ".", "!?", "(", "）", "。", "、", "“", "—", "-", "_", "$", "<", "Hello", " world", "don't", "\x7f"}
	r := rand.New(rand.NewPCG(seed, 5))
	out := make([]string, n)
	for i := range out {
		var sb strings.Builder
		for k := r.IntN(24) + 1; k > 0; k-- {
			sb.WriteString(alphabet[r.IntN(len(alphabet))])
		}
		out[i] = sb.String()
	}
	return out
}

// TestEncodeRandomMatchesLlamaCpp: plain tokenization equals llama.cpp's on
// random strings, beyond the fixed vectors, for every vocabulary qtune
// reads.
func TestEncodeRandomMatchesLlamaCpp(t *testing.T) {
	llamacpp.Require(t)
	texts := randomTexts(150, 11)
	for _, path := range vocabFiles(t) {
		t.Run(filepath.Base(path), func(t *testing.T) {
			tk := ggufTokenizer(t, path)
			resp, err := llamacpp.Vocab(context.Background(), llamacpp.VocabRequest{Model: path, Texts: texts})
			if err != nil {
				t.Fatal(err)
			}
			bad := 0
			for i, text := range texts {
				if got := tk.Encode(text, false); !slices.Equal(got, resp.Tokens[i]) {
					if bad++; bad <= 5 {
						t.Errorf("%q:\n got %v\nwant %v", text, got, resp.Tokens[i])
					}
				}
			}
			t.Logf("%d/%d equal", len(texts)-bad, len(texts))
		})
	}
}
