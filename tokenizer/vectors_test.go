package tokenizer

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/qtune/qtune/format/gguf"
	"github.com/qtune/qtune/internal/shared"
)

// vectors reads llama.cpp's tests.inp/tests.out pair: strings separated by
// "\n__ggml_vocab_test__\n" lines (the file ends with one), ids one line per
// string.
func vectors(t testing.TB, name string) ([]string, [][]int) {
	t.Helper()
	inp, err := os.ReadFile(shared.Path(t, "assets", "tokenizers", name, "tests.inp"))
	if err != nil {
		t.Fatal(err)
	}
	outb, err := os.ReadFile(shared.Path(t, "assets", "tokenizers", name, "tests.out"))
	if err != nil {
		t.Fatal(err)
	}
	texts, ids := parseVectors(t, inp, outb)
	if len(texts) != 46 {
		t.Fatalf("%s: %d strings, want 46", name, len(texts))
	}
	return texts, ids
}

// parseVectors splits a .inp/.out pair into strings and their ids.
func parseVectors(t testing.TB, inp, outb []byte) ([]string, [][]int) {
	t.Helper()
	const sep = "\n__ggml_vocab_test__\n"
	s := strings.TrimSuffix(string(inp), sep)
	texts := strings.Split(s, sep)
	lines := strings.Split(strings.TrimSuffix(string(outb), "\n"), "\n")
	if len(texts) != len(lines) {
		t.Fatalf("%d strings, %d id lines", len(texts), len(lines))
	}
	ids := make([][]int, len(lines))
	for i, l := range lines {
		for _, f := range strings.Fields(l) {
			n, err := strconv.Atoi(f)
			if err != nil {
				t.Fatal(err)
			}
			ids[i] = append(ids[i], n)
		}
	}
	return texts, ids
}

func loadGGUF(t testing.TB, elem ...string) *Tokenizer {
	t.Helper()
	data, err := os.ReadFile(shared.Path(t, elem...))
	if err != nil {
		t.Fatal(err)
	}
	f, err := gguf.Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	tk, err := FromGGUF(f)
	if err != nil {
		t.Fatal(err)
	}
	return tk
}

func loadFile(t testing.TB, load func([]byte) (*Tokenizer, error), elem ...string) *Tokenizer {
	t.Helper()
	data, err := os.ReadFile(shared.Path(t, elem...))
	if err != nil {
		t.Fatal(err)
	}
	tk, err := load(data)
	if err != nil {
		t.Fatal(err)
	}
	return tk
}

// hfDir links the given shared files into a temporary folder.
func hfDir(t testing.TB, files ...string) string {
	t.Helper()
	dir := t.TempDir()
	for _, f := range files {
		src := shared.Path(t, "assets", "tokenizers", f)
		if err := os.Symlink(src, filepath.Join(dir, filepath.Base(f))); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func llama2Tokenizers(t testing.TB) map[string]*Tokenizer {
	return map[string]*Tokenizer{
		"gguf":  loadGGUF(t, "assets", "tokenizers", "llama2", "vocab-llama2.gguf"),
		"model": loadFile(t, FromSentencePiece, "assets", "tokenizers", "llama2", "tokenizer.model"),
		"bin": loadFile(t, func(b []byte) (*Tokenizer, error) { return FromLlama2C(b, 32000) },
			"assets", "tokenizers", "llama2", "tokenizer.bin"),
	}
}

func gpt2Tokenizers(t testing.TB) map[string]*Tokenizer {
	hf, err := FromHFDir(hfDir(t, "gpt2/vocab.json", "gpt2/merges.txt"))
	if err != nil {
		t.Fatal(err)
	}
	return map[string]*Tokenizer{
		"gguf": loadGGUF(t, "assets", "tokenizers", "gpt2", "vocab-gpt2.gguf"),
		"hf":   hf,
	}
}

func storiesTokenizers(t testing.TB) map[string]*Tokenizer {
	return map[string]*Tokenizer{
		"gguf": loadGGUF(t, "assets", "models", "stories260K.gguf"),
		"bin": loadFile(t, func(b []byte) (*Tokenizer, error) { return FromLlama2C(b, 512) },
			"assets", "models", "llama2c", "tok512.bin"),
	}
}

func equalIDs(a, b []int) bool {
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

func checkVectors(t *testing.T, toks map[string]*Tokenizer, texts []string, want [][]int) {
	for name, tk := range toks {
		t.Run(name, func(t *testing.T) {
			pass := 0
			for i, s := range texts {
				got := tk.Encode(s, false)
				if !equalIDs(got, want[i]) {
					t.Errorf("case %d %q:\n got %v\nwant %v", i, s, got, want[i])
					continue
				}
				pass++
				if d := tk.Decode(got); d != s {
					t.Errorf("case %d: Decode(Encode(%q)) = %q", i, s, d)
				}
				if d := tk.Decode(tk.Encode(s, true)); d != s {
					t.Errorf("case %d: Decode(Encode(%q, bos)) = %q", i, s, d)
				}
			}
			t.Logf("%d/%d vectors pass", pass, len(texts))
		})
	}
}

func TestLlama2Vectors(t *testing.T) {
	texts, want := vectors(t, "llama2")
	checkVectors(t, llama2Tokenizers(t), texts, want)
}

func TestGPT2Vectors(t *testing.T) {
	texts, want := vectors(t, "gpt2")
	checkVectors(t, gpt2Tokenizers(t), texts, want)
}

func TestStoriesGolden(t *testing.T) {
	data, err := os.ReadFile(shared.Path(t, "golden", "stories260K", "tokenizer.json"))
	if err != nil {
		t.Fatal(err)
	}
	var g struct {
		BOS   bool `json:"bos"`
		Cases []struct {
			Text string `json:"text"`
			IDs  []int  `json:"ids"`
		} `json:"cases"`
	}
	if err := json.Unmarshal(data, &g); err != nil {
		t.Fatal(err)
	}
	if len(g.Cases) != 30 || !g.BOS {
		t.Fatalf("%d cases, bos %v", len(g.Cases), g.BOS)
	}
	for name, tk := range storiesTokenizers(t) {
		t.Run(name, func(t *testing.T) {
			if tk.VocabSize() != 512 || tk.BOS() != 1 || tk.EOS() != 2 || tk.Kind() != SPM {
				t.Fatalf("vocab %d bos %d eos %d kind %v", tk.VocabSize(), tk.BOS(), tk.EOS(), tk.Kind())
			}
			pass := 0
			for i, c := range g.Cases {
				got := tk.Encode(c.Text, true)
				if !equalIDs(got, c.IDs) {
					t.Errorf("case %d %q:\n got %v\nwant %v", i, c.Text, got, c.IDs)
					continue
				}
				pass++
				if d := tk.Decode(got); d != c.Text {
					t.Errorf("case %d: Decode = %q, want %q", i, d, c.Text)
				}
			}
			t.Logf("%d/%d golden cases pass", pass, len(g.Cases))
		})
	}
}

func TestTokenIDSpecials(t *testing.T) {
	tok, err := New(Vocab{Kind: SPM, Tokens: []string{"<unk>", "<s>", "</s>", "<|im_start|>", "a"}, Types: []int32{2, 3, 3, 4, 1},
		BOS: 1, EOS: 2, UNK: 0, PAD: -1})
	if err != nil {
		t.Fatal(err)
	}
	if id, ok := tok.TokenID("<|im_start|>"); !ok || id != 3 {
		t.Fatalf("<|im_start|>: %d %v", id, ok)
	}
	if id, ok := tok.TokenID("</s>"); !ok || id != 2 {
		t.Fatalf("</s>: %d %v", id, ok)
	}
	if _, ok := tok.TokenID("a"); ok {
		t.Fatal("an ordinary piece reported as special")
	}
}

// llamacppVocabUnsupported are the llamacpp-vocab vocabularies qtune refuses
// (their pre-tokenizer or tokenizer model is not implemented yet).
var llamacppVocabUnsupported = map[string]string{}

// TestLlamaCppVocabVectors: every test vector llama.cpp ships beside its
// vocabulary-only GGUFs, for every vocabulary qtune reads; the others are
// refused by name.
func TestLlamaCppVocabVectors(t *testing.T) {
	files, _ := filepath.Glob(shared.Path(t, "assets", "tokenizers", "llamacpp-vocab", "ggml-vocab-*.gguf"))
	if len(files) != 8 {
		t.Fatalf("%d vocabularies", len(files))
	}
	for _, path := range files {
		name := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(path), "ggml-vocab-"), ".gguf")
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			f, err := gguf.Parse(data)
			if err != nil {
				t.Fatal(err)
			}
			tk, err := FromGGUF(f)
			if want, ok := llamacppVocabUnsupported[name]; ok {
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Fatalf("want a refusal naming %q, got %v", want, err)
				}
				t.Skipf("refused: %v", err)
			}
			if err != nil {
				t.Fatal(err)
			}
			inp, _ := os.ReadFile(path + ".inp")
			out, _ := os.ReadFile(path + ".out")
			texts, ids := parseVectors(t, inp, out)
			if len(texts) < 30 {
				t.Fatalf("%d strings", len(texts))
			}
			bad := 0
			for i, text := range texts {
				want := ids[i]
				got := tk.Encode(text, false)
				if !equalIDs(got, want) {
					bad++
					t.Errorf("%q:\n got %v\nwant %v", text, got, want)
				}
			}
			t.Logf("%d/%d vectors", len(texts)-bad, len(texts))
		})
	}
}

// ggufAsTokenizerJSON writes the byte-level BPE vocabulary of a llama.cpp
// GGUF as the tokenizer.json its family ships (model BPE with the vocab and
// merges, the family's Split regex before ByteLevel, special tokens as
// added tokens), so the HF reader can be held to the same vectors.
func ggufAsTokenizerJSON(t *testing.T, f *gguf.File, re string, ignoreMerges bool) string {
	t.Helper()
	tokens, _ := f.Strings("tokenizer.ggml.tokens")
	merges, _ := f.Strings("tokenizer.ggml.merges")
	types, _ := f.Int32s("tokenizer.ggml.token_type")
	vocab := make(map[string]int, len(tokens))
	var added []map[string]any
	for i, s := range tokens {
		if i < len(types) && (types[i] == TypeControl || types[i] == TypeUserDefined) {
			added = append(added, map[string]any{"id": i, "content": s, "special": types[i] == TypeControl})
			continue
		}
		if _, dup := vocab[s]; !dup {
			vocab[s] = i
		}
	}
	j := map[string]any{
		"added_tokens": added,
		"normalizer":   nil,
		"pre_tokenizer": map[string]any{"type": "Sequence", "pretokenizers": []any{
			map[string]any{"type": "Split", "pattern": map[string]any{"Regex": re}, "behavior": "Isolated", "invert": false},
			map[string]any{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
		}},
		"decoder": map[string]any{"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
		"model":   map[string]any{"type": "BPE", "vocab": vocab, "merges": merges, "ignore_merges": ignoreMerges},
	}
	b, err := json.Marshal(j)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestTokenizerJSONVectors: Llama 3, Qwen2 and Qwen3.5 read from the
// tokenizer.json form of their vocabulary reproduce llama.cpp's vectors too.
func TestTokenizerJSONVectors(t *testing.T) {
	for _, c := range []struct {
		name   string
		re     string
		ignore bool
	}{{"llama-bpe", reLlama3, true}, {"qwen2", reQwen2, false}, {"qwen35", reQwen35, false}} {
		t.Run(c.name, func(t *testing.T) {
			path := shared.Path(t, "assets", "tokenizers", "llamacpp-vocab", "ggml-vocab-"+c.name+".gguf")
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			f, err := gguf.Parse(data)
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			writeFile(t, dir, "tokenizer.json", ggufAsTokenizerJSON(t, f, c.re, c.ignore))
			tk, err := FromHFDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			inp, _ := os.ReadFile(path + ".inp")
			out, _ := os.ReadFile(path + ".out")
			texts, ids := parseVectors(t, inp, out)
			for i, text := range texts {
				if got := tk.Encode(text, false); !equalIDs(got, ids[i]) {
					t.Errorf("%q:\n got %v\nwant %v", text, got, ids[i])
				}
			}
		})
	}
}
