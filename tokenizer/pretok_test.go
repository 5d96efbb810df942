package tokenizer

import (
	"encoding/json"
	"os"
	"reflect"
	"strings"
	"testing"
)

func split(k preKind, s string) []string {
	var out []string
	preSplit(k, s, func(w string) { out = append(out, w) })
	return out
}

func TestPreSplit(t *testing.T) {
	cases := []struct {
		k    preKind
		in   string
		want []string
	}{
		{preGPT2, "Hello world", []string{"Hello", " world"}},
		{preGPT2, "I'm  fine\n\n", []string{"I", "'m", " ", " fine", "\n\n"}},
		{preGPT2, "  a", []string{" ", " a"}},
		{preGPT2, "a  ", []string{"a", "  "}},
		{preGPT2, "x\n\ny", []string{"x", "\n", "\n", "y"}},
		{preGPT2, "\t\tx", []string{"\t", "\t", "x"}},
		{preGPT2, "it's IT'S we'll they're", []string{"it", "'s", " IT", "'", "S", " we", "'ll", " they", "'re"}},
		{preGPT2, "123abc 45", []string{"123", "abc", " 45"}},
		{preGPT2, "hello!!! ok", []string{"hello", "!!!", " ok"}},
		{preGPT2, " !? ", []string{" !?", " "}},
		{preGPT2, " 's", []string{" '", "s"}},
		{preGPT2, "'''s", []string{"'''", "s"}},
		{preGPT2, "Äpfel über 3½", []string{"Äpfel", " über", " 3½"}},
		{preGPT2, "日本語 テスト", []string{"日本語", " テスト"}},
		{preGPT2, "a\u00a0b", []string{"a", "\u00a0", "b"}},
		{preGPT2, " ", []string{" "}},
		{preGPT2, "\xff\xfeab", []string{"\xff\xfe", "ab"}},

		{preLlama3, "Hello world", []string{"Hello", " world"}},
		{preLlama3, "IT'S we'LL", []string{"IT", "'S", " we", "'LL"}},
		{preLlama3, "12345 abc123", []string{"123", "45", " abc", "123"}},
		{preLlama3, " 123", []string{" ", "123"}},
		{preLlama3, "\tword !abc", []string{"\tword", " !", "abc"}},
		{preLlama3, "x!abc", []string{"x", "!abc"}},
		{preLlama3, "hello!!!\n\nok", []string{"hello", "!!!\n\n", "ok"}},
		{preLlama3, "a \n\n b", []string{"a", " \n\n", " b"}},
		{preLlama3, "x   y", []string{"x", "  ", " y"}},
		{preLlama3, "x   ", []string{"x", "   "}},
		{preLlama3, " ... x", []string{" ...", " x"}},
		{preLlama3, "\r\nfoo", []string{"\r\n", "foo"}},
		{preLlama3, "a\n\nb", []string{"a", "\n\n", "b"}},
		{preLlama3, "\n word", []string{"\n", " word"}},
		{preQwen2, "12345 abc123", []string{"1", "2", "3", "4", "5", " abc", "1", "2", "3"}},
		{preQwen2, "Hello, y'all!", []string{"Hello", ",", " y", "'all", "!"}},
		{preSmolLM, "abc 123x", []string{"abc", " ", "1", "2", "3", "x"}},
		{preSmolLM, "a 1 b", []string{"a", " ", "1", " b"}},
	}
	for _, c := range cases {
		got := split(c.k, c.in)
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("pre %d %q:\n got %q\nwant %q", c.k, c.in, got, c.want)
		}
	}
}

// Every splitter covers its input exactly, on any input.
func TestPreSplitCovers(t *testing.T) {
	texts, _ := vectors(t, "gpt2")
	for _, k := range []preKind{preGPT2, preLlama3, preQwen2, preQwen35, preDeepSeekLLM, preGemma4, preSmolLM} {
		for _, s := range append(texts, "\xff\x00 \r\n\t\u2028x1") {
			parts := split(k, s)
			if strings.Join(parts, "") != s {
				t.Errorf("pre %d: %q split into %q", k, s, parts)
			}
			for _, p := range parts {
				if p == "" {
					t.Errorf("pre %d: empty pre-token in %q", k, s)
				}
			}
		}
	}
}

func TestPreFromName(t *testing.T) {
	for name, want := range map[string]preKind{"": preGPT2, "gpt-2": preGPT2, "llama-bpe": preLlama3, "llama3": preLlama3, "qwen2": preQwen2, "qwen35": preQwen35, "deepseek-llm": preDeepSeekLLM, "smollm": preSmolLM} {
		k, _, ok := preFromName(name)
		if !ok || k != want {
			t.Errorf("%q: %d %v", name, k, ok)
		}
	}
	if _, ignore, _ := preFromName("llama-bpe"); !ignore {
		t.Error("llama-bpe should ignore merges for whole-word tokens")
	}
	if _, _, ok := preFromName("deepseek-coder"); ok {
		t.Error("unknown pre-tokenizer accepted")
	}
}

// TestPreSplitRegex compares the scanners with the real regular expressions
// (lookahead included), evaluated by Python's regex module on random strings
// over an alphabet of contractions, case, digits, spaces, newlines, Unicode
// spaces, letters, numbers and marks. testdata/presplit.json was generated
// once with that module; the smollm column is \p{N} isolation then GPT-2.
func TestPreSplitRegex(t *testing.T) {
	data, err := os.ReadFile("testdata/presplit.json")
	if err != nil {
		t.Fatal(err)
	}
	var g struct {
		Cases []map[string]any `json:"cases"`
	}
	if err := json.Unmarshal(data, &g); err != nil {
		t.Fatal(err)
	}
	kinds := map[string]preKind{"gpt2": preGPT2, "llama3": preLlama3, "qwen2": preQwen2, "smollm": preSmolLM}
	bad := 0
	for _, c := range g.Cases {
		text := c["text"].(string)
		for name, k := range kinds {
			var want []string
			for _, w := range c[name].([]any) {
				want = append(want, w.(string))
			}
			if got := split(k, text); !reflect.DeepEqual(got, want) {
				if bad++; bad < 20 {
					t.Errorf("%s %q:\n got %q\nwant %q", name, text, got, want)
				}
			}
		}
	}
	if bad > 0 {
		t.Errorf("%d mismatches over %d cases", bad, len(g.Cases))
	}
}
