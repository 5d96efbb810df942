package tokenizer

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

func writeFile(t *testing.T, dir, name, data string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// toyByteLevelJSON: the 256 byte symbols plus merges spelling "Hello" and
// " world", and " world" as a token no merge reaches (for ignore_merges).
func toyByteLevelJSON(re string, ignoreMerges bool) string {
	vocab := map[string]int{}
	for b := 0; b < 256; b++ {
		vocab[string(byteToRune[b])] = len(vocab)
	}
	merges := [][]string{{"H", "e"}, {"He", "l"}, {"Hel", "l"}, {"Hell", "o"}, {"Ġ", "w"}, {"o", "r"}, {"Ġw", "or"}}
	for _, m := range merges {
		vocab[m[0]+m[1]] = len(vocab)
	}
	vocab["Ġworld"] = len(vocab)
	return mustJSON(map[string]any{
		"added_tokens": []any{
			map[string]any{"id": len(vocab), "content": "<|begin_of_text|>", "special": true},
			map[string]any{"id": len(vocab) + 1, "content": "<|end_of_text|>", "special": true},
		},
		"pre_tokenizer": map[string]any{"type": "Sequence", "pretokenizers": []any{
			map[string]any{"type": "Split", "pattern": map[string]any{"Regex": re}, "behavior": "Isolated"},
			map[string]any{"type": "ByteLevel", "add_prefix_space": false, "use_regex": false},
		}},
		"decoder": map[string]any{"type": "ByteLevel"},
		"model":   map[string]any{"type": "BPE", "vocab": vocab, "merges": merges, "ignore_merges": ignoreMerges},
	})
}

// spmMerges derives HF-style merges from an SPM vocabulary, as transformers'
// SentencePieceExtractor does: every split of a piece into two pieces,
// ordered by the piece's score, then by the ids of the parts.
func spmMerges(v Vocab) [][]string {
	id := map[string]int{}
	for i, s := range v.Tokens {
		if v.Types[i] == TypeNormal {
			id[s] = i
		}
	}
	type m struct {
		l, r  string
		score float32
		il    int
		ir    int
	}
	var ms []m
	for i, s := range v.Tokens {
		if v.Types[i] != TypeNormal {
			continue
		}
		for k := 1; k < len(s); k++ {
			l, r := s[:k], s[k:]
			il, okl := id[l]
			ir, okr := id[r]
			if okl && okr {
				ms = append(ms, m{l, r, v.Scores[i], il, ir})
			}
		}
	}
	sort.SliceStable(ms, func(a, b int) bool {
		if ms[a].score != ms[b].score {
			return ms[a].score > ms[b].score
		}
		if ms[a].il != ms[b].il {
			return ms[a].il < ms[b].il
		}
		return ms[a].ir < ms[b].ir
	})
	out := make([][]string, len(ms))
	for i, x := range ms {
		out[i] = []string{x.l, x.r}
	}
	return out
}

// spmJSON writes an SPM vocabulary as a Llama-style tokenizer.json.
func spmJSON(v Vocab) string {
	vocab := map[string]int{}
	var added []any
	for i, s := range v.Tokens {
		vocab[s] = i
		if v.Types[i] == TypeControl || v.Types[i] == TypeUnknown {
			added = append(added, map[string]any{"id": i, "content": s, "special": true})
		}
	}
	return mustJSON(map[string]any{
		"added_tokens": added,
		"normalizer": map[string]any{"type": "Sequence", "normalizers": []any{
			map[string]any{"type": "Prepend", "prepend": "▁"},
			map[string]any{"type": "Replace", "pattern": map[string]any{"String": " "}, "content": "▁"},
		}},
		"pre_tokenizer": nil,
		"decoder": map[string]any{"type": "Sequence", "decoders": []any{
			map[string]any{"type": "Replace", "pattern": map[string]any{"String": "▁"}, "content": " "},
			map[string]any{"type": "ByteFallback"},
			map[string]any{"type": "Fuse"},
			map[string]any{"type": "Strip", "content": " ", "start": 1, "stop": 0},
		}},
		"model": map[string]any{"type": "BPE", "vocab": vocab, "merges": spmMerges(v), "unk_token": "<unk>",
			"byte_fallback": true, "fuse_unk": true},
	})
}

func toyMetaspaceJSON() string {
	pieces, scores, types := toySPM()
	return spmJSON(Vocab{Tokens: pieces, Scores: scores, Types: types})
}

func TestHFByteLevelJSON(t *testing.T) {
	for _, c := range []struct {
		re     string
		ignore bool
		pre    string
	}{{reLlama3, true, "llama3"}, {reLlama3, false, "dbrx"}, {reQwen2, false, "qwen2"}, {reGPT2, false, "gpt-2"}} {
		dir := t.TempDir()
		writeFile(t, dir, "tokenizer.json", toyByteLevelJSON(c.re, c.ignore))
		tk, err := FromHFDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		if tk.v.Pre != c.pre || tk.Kind() != BPE || tk.BOS() != 264 || tk.EOS() != 265 {
			t.Fatalf("pre %q kind %v bos %d eos %d", tk.v.Pre, tk.Kind(), tk.BOS(), tk.EOS())
		}
		ids := tk.Encode("Hello world", true)
		want := []int{264, 259, 262, 'l', 'd'} // <|begin_of_text|> Hello Ġwor l d (byte b has id b)
		if c.ignore {
			want = []int{264, 259, 263} // " world" taken whole
		}
		if !equalIDs(ids, want) {
			t.Errorf("%s: %v, want %v", c.pre, ids, want)
		}
		if d := tk.Decode(ids); d != "Hello world" {
			t.Errorf("decode %q", d)
		}
	}
	dir := t.TempDir()
	writeFile(t, dir, "tokenizer.json", toyByteLevelJSON(`\w+`, false))
	if _, err := FromHFDir(dir); !errors.Is(err, ErrUnsupported) {
		t.Errorf("unknown regex: %v", err)
	}
}

// Llama 2's tokenizer written the way Hugging Face ships it (merges, no
// scores) passes the same vectors.
func TestHFSentencePieceJSON(t *testing.T) {
	model := llama2Tokenizers(t)["model"]
	dir := t.TempDir()
	writeFile(t, dir, "tokenizer.json", spmJSON(model.Vocab()))
	writeFile(t, dir, "tokenizer_config.json", `{"bos_token": {"content": "<s>", "special": true}, "eos_token": "</s>",
		"add_bos_token": true, "add_eos_token": false, "chat_template": [{"name": "tool", "template": "X"}, {"name": "default", "template": "T"}]}`)
	tk, err := FromHFDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if tk.Kind() != SPM || tk.BOS() != 1 || tk.EOS() != 2 || tk.UNK() != 0 || !tk.AddBOS() || tk.AddEOS() || tk.ChatTemplate() != "T" {
		t.Fatalf("kind %v bos %d eos %d unk %d template %q", tk.Kind(), tk.BOS(), tk.EOS(), tk.UNK(), tk.ChatTemplate())
	}
	texts, want := vectors(t, "llama2")
	checkVectors(t, map[string]*Tokenizer{"tokenizer.json": tk}, texts, want)
}

func TestHFDirVariants(t *testing.T) {
	// tokenizer.model with a config
	dir := hfDir(t, "llama2/tokenizer.model")
	writeFile(t, dir, "tokenizer_config.json", `{"add_bos_token": false, "chat_template": "{{ messages }}", "pad_token": null}`)
	tk, err := FromHFDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if tk.AddBOS() || tk.ChatTemplate() != "{{ messages }}" || tk.BOS() != 1 {
		t.Errorf("config not applied: %v %q", tk.AddBOS(), tk.ChatTemplate())
	}
	texts, want := vectors(t, "llama2")
	checkVectors(t, map[string]*Tokenizer{"tokenizer.model": tk}, texts, want)
	// chat_template.jinja beside the config replaces its chat_template.
	writeFile(t, dir, "chat_template.jinja", "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}\n")
	if tk, err = FromHFDir(dir); err != nil {
		t.Fatal(err)
	}
	if got := tk.ChatTemplate(); got != "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}\n" {
		t.Errorf("chat_template.jinja not used: %q", got)
	}

	if _, err := FromHFDir(t.TempDir()); !errors.Is(err, ErrNoTokenizer) {
		t.Errorf("empty dir: %v", err)
	}
	dir = hfDir(t, "gpt2/vocab.json")
	if _, err := FromHFDir(dir); !errors.Is(err, ErrFormat) {
		t.Errorf("no merges.txt: %v", err)
	}
	for name, data := range map[string]string{
		"tokenizer.json":        `{"model": `,
		"tokenizer_config.json": `[1]`,
	} {
		dir := t.TempDir()
		writeFile(t, dir, name, data)
		if name != "tokenizer.json" {
			writeFile(t, dir, "tokenizer.json", toyMetaspaceJSON())
		}
		if _, err := FromHFDir(dir); !errors.Is(err, ErrFormat) || !strings.HasPrefix(err.Error(), "tokenizer: ") {
			t.Errorf("%s: %v", name, err)
		}
	}
	dir = t.TempDir()
	writeFile(t, dir, "tokenizer.json", `{"model": {"type": "WordPiece", "vocab": {"a": 0}}}`)
	if _, err := FromHFDir(dir); !errors.Is(err, ErrUnsupported) {
		t.Errorf("WordPiece: %v", err)
	}
	dir = t.TempDir()
	writeFile(t, dir, "tokenizer.json", `{"model": {"type": "BPE", "vocab": {"a": 5}, "merges": []}, "decoder": {"type": "ByteLevel"}}`)
	if _, err := FromHFDir(dir); !errors.Is(err, ErrFormat) {
		t.Errorf("sparse id: %v", err)
	}
}

func TestHFMetaspaceToy(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "tokenizer.json", toyMetaspaceJSON())
	hf, err := FromHFDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	pieces, scores, types := toySPM()
	sp, err := FromSentencePiece(spModelBytes(pieces, scores, types, 2, true, false))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"", "abc", " ab c", "cab bca abcabc", "a\u00e9b", "\xff"} {
		a, b := hf.Encode(s, true), sp.Encode(s, true)
		if !equalIDs(a, b) {
			t.Errorf("%q: tokenizer.json %v, tokenizer.model %v", s, a, b)
		}
		if d := hf.Decode(a); d != s {
			t.Errorf("decode %q = %q", s, d)
		}
	}
}

func TestHFSpecials(t *testing.T) {
	var j map[string]any
	if err := json.Unmarshal([]byte(toyByteLevelJSON(reLlama3, true)), &j); err != nil {
		t.Fatal(err)
	}
	j["post_processor"] = map[string]any{"type": "Sequence", "processors": []any{
		map[string]any{"type": "ByteLevel"},
		map[string]any{"type": "TemplateProcessing", "single": []any{
			map[string]any{"SpecialToken": map[string]any{"id": "<|begin_of_text|>", "type_id": 0}},
			map[string]any{"Sequence": map[string]any{"id": "A", "type_id": 0}},
			map[string]any{"SpecialToken": map[string]any{"id": "<|end_of_text|>", "type_id": 0}},
		}},
	}}
	dir := t.TempDir()
	writeFile(t, dir, "tokenizer.json", mustJSON(j))
	tk, err := FromHFDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !tk.AddBOS() || !tk.AddEOS() || tk.BOS() != 264 || tk.EOS() != 265 {
		t.Errorf("template: add %v %v bos %d eos %d", tk.AddBOS(), tk.AddEOS(), tk.BOS(), tk.EOS())
	}
	writeFile(t, dir, "tokenizer_config.json", `{"bos_token": null, "eos_token": {"content": "<|end_of_text|>"}, "add_bos_token": false}`)
	if tk, err = FromHFDir(dir); err != nil {
		t.Fatal(err)
	}
	if tk.AddBOS() || tk.BOS() != -1 || tk.EOS() != 265 || len(tk.Encode("x", true)) != 1 {
		t.Errorf("config: add %v bos %d eos %d", tk.AddBOS(), tk.BOS(), tk.EOS())
	}
}
