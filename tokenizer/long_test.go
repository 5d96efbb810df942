package tokenizer

import (
	"encoding/json"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/qtune/qtune/format/gguf"
	"github.com/qtune/qtune/internal/shared"
)

// A text longer than longPiece is encoded in pieces (bounded memory: a 50 MB
// record took gigabytes whole) that give the whole text's tokens when the
// cuts fall after newlines or before spaces, for SentencePiece and
// byte-level vocabularies alike.
func TestLongTextPieces(t *testing.T) {
	raw, err := os.ReadFile(shared.Path(t, "assets", "data", "tinyshakespeare", "train.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	var paras []string
	for _, l := range strings.Split(string(raw), "\n") {
		var r struct{ Text string }
		if json.Unmarshal([]byte(l), &r) == nil && r.Text != "" {
			paras = append(paras, r.Text)
		}
	}
	var lines, spaced strings.Builder
	for i := 0; lines.Len() < longPiece*3/2; i++ { // one cut
		lines.WriteString(paras[i%len(paras)] + "\n\n")
		spaced.WriteString(strings.ReplaceAll(paras[i%len(paras)], "\n", " ") + "  ")
	}
	toks := map[string]*Tokenizer{}
	toks["llama2"] = llama2Tokenizers(t)["model"]
	for _, name := range []string{"llama-bpe", "gemma-4", "gpt-2"} {
		b, err := os.ReadFile(shared.Path(t, "assets", "tokenizers", "llamacpp-vocab", "ggml-vocab-"+name+".gguf"))
		if err != nil {
			t.Fatal(err)
		}
		f, err := gguf.Parse(b)
		if err != nil {
			t.Fatal(err)
		}
		if toks[name], err = FromGGUF(f); err != nil {
			t.Fatal(err)
		}
	}
	for name, tk := range toks {
		for kind, text := range map[string]string{"lines": lines.String(), "spaced": spaced.String()} {
			var m merger
			whole := tk.encodeOne(&m, text, nil, true)
			got := tk.Encode(text, false)
			if !slices.Equal(got, whole) {
				i := 0
				for i < len(got) && i < len(whole) && got[i] == whole[i] {
					i++
				}
				t.Errorf("%s, %s (%d bytes): pieces differ from the whole at token %d of %d", name, kind, len(text), i, len(whole))
			}
		}
	}
}
