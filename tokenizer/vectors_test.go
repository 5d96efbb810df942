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

// ggufAsTokenizerJSON writes the vocabulary of a llama.cpp GGUF as the
// tokenizer.json its family ships: model BPE with the vocab and merges,
// special tokens as added tokens, and the family's normalizer and
// pre-tokenizer (pre is a JSON value), so the HF reader can be held to the
// same vectors.
func ggufAsTokenizerJSON(t *testing.T, f *gguf.File, normalizer, pre, decoder any, model map[string]any) string {
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
	model["type"], model["vocab"] = "BPE", vocab
	if _, ok := model["merges"]; !ok {
		model["merges"] = merges
	}
	j := map[string]any{"added_tokens": added, "normalizer": normalizer, "pre_tokenizer": pre, "decoder": decoder, "model": model}
	b, err := json.Marshal(j)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// deepseekLLMSplits are the Split regexes of DeepSeek-LLM's tokenizer.json,
// as llama.cpp's llama-vocab.cpp copies them (escaped: several of the
// code points have canonical equivalents an editor may normalise to).
var deepseekLLMSplits = []string{
	"[\r\n]",
	"\\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+",
	"\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+",
	"\\s+$",
	"[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+",
	"\\p{N}+",
}

// TestTokenizerJSONVectors: each llamacpp-vocab vocabulary, written in the
// tokenizer.json form its family ships on Hugging Face, reproduces
// llama.cpp's vectors through the HF reader too.
func TestTokenizerJSONVectors(t *testing.T) {
	split := func(re string) map[string]any {
		return map[string]any{"type": "Split", "pattern": map[string]any{"Regex": re}, "behavior": "Isolated", "invert": false}
	}
	byteLevel := func(useRegex bool) map[string]any {
		return map[string]any{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": useRegex}
	}
	byteLevelDecoder := map[string]any{"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}
	regexBPE := func(re string, ignore bool) func(*gguf.File) string {
		return func(f *gguf.File) string {
			pre := map[string]any{"type": "Sequence", "pretokenizers": []any{split(re), byteLevel(false)}}
			return ggufAsTokenizerJSON(t, f, nil, pre, byteLevelDecoder, map[string]any{"ignore_merges": ignore})
		}
	}
	spm := func(f *gguf.File) string {
		tk, err := FromGGUF(f)
		if err != nil {
			t.Fatal(err)
		}
		return spmJSON(tk.Vocab())
	}
	forms := map[string]func(*gguf.File) string{
		"llama-bpe": regexBPE(reLlama3, true),
		"qwen2":     regexBPE(reQwen2, false),
		"qwen35":    regexBPE(reQwen35, false),
		// GPT-2: one ByteLevel pre-tokenizer that applies its own regex.
		"gpt-2": func(f *gguf.File) string {
			return ggufAsTokenizerJSON(t, f, nil, byteLevel(true), byteLevelDecoder, map[string]any{})
		},
		// DeepSeek-LLM: six Splits in turn, then ByteLevel without a regex.
		"deepseek-llm": func(f *gguf.File) string {
			var seq []any
			for _, re := range deepseekLLMSplits {
				seq = append(seq, split(re))
			}
			pre := map[string]any{"type": "Sequence", "pretokenizers": append(seq, byteLevel(false))}
			return ggufAsTokenizerJSON(t, f, nil, pre, byteLevelDecoder, map[string]any{})
		},
		// Llama 2 and Phi-3: SentencePiece BPE as transformers converts it
		// (merges derived from the scores, Prepend + Replace normalizer).
		"llama-spm": spm,
		"phi-3":     spm,
		// Gemma 4: transformers' GemmaTokenizer (Replace " "→"▁", no
		// prefix, byte fallback, merges over the whole text).
		"gemma-4": func(f *gguf.File) string {
			norm := map[string]any{"type": "Replace", "pattern": map[string]any{"String": " "}, "content": "▁"}
			pre := map[string]any{"type": "Split", "pattern": map[string]any{"String": " "}, "behavior": "MergedWithPrevious", "invert": false}
			dec := map[string]any{"type": "Sequence", "decoders": []any{
				map[string]any{"type": "Replace", "pattern": map[string]any{"String": "▁"}, "content": " "},
				map[string]any{"type": "ByteFallback"}, map[string]any{"type": "Fuse"}}}
			return ggufAsTokenizerJSON(t, f, norm, pre, dec, map[string]any{"byte_fallback": true, "fuse_unk": true, "unk_token": "<unk>"})
		},
	}
	files, _ := filepath.Glob(shared.Path(t, "assets", "tokenizers", "llamacpp-vocab", "ggml-vocab-*.gguf"))
	if len(files) != 8 {
		t.Fatalf("%d vocabularies", len(files))
	}
	for _, path := range files {
		name := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(path), "ggml-vocab-"), ".gguf")
		t.Run(name, func(t *testing.T) {
			form, ok := forms[name]
			if !ok {
				t.Fatalf("no tokenizer.json form for %s", name)
			}
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			f, err := gguf.Parse(data)
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			writeFile(t, dir, "tokenizer.json", form(f))
			tk, err := FromHFDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			inp, _ := os.ReadFile(path + ".inp")
			out, _ := os.ReadFile(path + ".out")
			texts, ids := parseVectors(t, inp, out)
			bad := 0
			for i, text := range texts {
				if got := tk.Encode(text, false); !equalIDs(got, ids[i]) {
					bad++
					t.Errorf("%q:\n got %v\nwant %v", text, got, ids[i])
				}
			}
			t.Logf("%s (%v, pre %q): %d/%d vectors", name, tk.Kind(), tk.v.Pre, len(texts)-bad, len(texts))
		})
	}
}
