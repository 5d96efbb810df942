package tokenizer

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func eogVocab(t *testing.T, toks []string, eos int, extra ...int) []int {
	t.Helper()
	tk, err := New(Vocab{Kind: BPE, Tokens: toks, BOS: -1, EOS: eos, UNK: -1, PAD: -1, EOG: extra})
	if err != nil {
		t.Fatal(err)
	}
	return tk.EOG()
}

// TestEOGRules: llama.cpp's text rules, its two exceptions, declared ids
// (out-of-range ones dropped) and EOS.
func TestEOGRules(t *testing.T) {
	for _, c := range []struct {
		name  string
		toks  []string
		eos   int
		extra []int
		want  []int
	}{
		{"chatml", []string{"a", "<|im_end|>", "<|endoftext|>", "<|im_start|>", "<|fim_pad|>"}, 2, nil, []int{1, 2, 4}},
		{"declared", []string{"a", "b", "<|eot_id|>", "c"}, 1, []int{3, 99, -1}, []int{1, 2, 3}},
		{"harmony drops <|end|>", []string{"<|end|>", "<|return|>", "<|call|>", "x"}, -1, nil, []int{1, 2}},
		{"no harmony keeps <|end|>", []string{"<|end|>", "<|return|>", "x"}, -1, nil, []int{0, 1}},
		{"gemma4 drops </s>", []string{"</s>", "<|tool_response>", "<turn|>"}, -1, nil, []int{1, 2}},
		{"none", []string{"a", "b"}, -1, nil, []int{}},
	} {
		if got := eogVocab(t, c.toks, c.eos, c.extra...); !slices.Equal(got, c.want) {
			t.Errorf("%s: EOG %v, want %v", c.name, got, c.want)
		}
	}
}

// TestGenerationConfigEOS: an HF folder's generation_config.json adds its
// eos_token_id (one or a list); a malformed one is an error naming it.
func TestGenerationConfigEOS(t *testing.T) {
	for _, c := range []struct {
		json string
		want []int
		bad  bool
	}{
		{`{"eos_token_id": 7}`, []int{7}, false},
		{`{"eos_token_id": [7, 9]}`, []int{7, 9}, false},
		{`{"bos_token_id": 1}`, nil, false},
		{`{"eos_token_id": "x"}`, nil, true},
		{`{`, nil, true},
	} {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "generation_config.json"), []byte(c.json), 0o644); err != nil {
			t.Fatal(err)
		}
		got, err := generationEOS(dir)
		if (err != nil) != c.bad || !slices.Equal(got, c.want) {
			t.Errorf("%s: %v, %v; want %v (error %v)", c.json, got, err, c.want, c.bad)
		}
	}
	if got, err := generationEOS(t.TempDir()); got != nil || err != nil {
		t.Errorf("no file: %v, %v", got, err)
	}
}
