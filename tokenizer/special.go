package tokenizer

import (
	"slices"
	"strings"
)

// EncodeSpecial is Encode with the text of control and user-defined tokens
// ("<|im_start|>", "<|eot_id|>", "<start_of_turn>", "</s>") parsed into
// their ids, as llama.cpp tokenizes with parse_special: the special tokens,
// longest first, cut the text into fragments, and each fragment between
// them is encoded on its own (with SentencePiece's space prefix, when the
// vocabulary adds one, since every fragment follows a special token or the
// start). Chat templates are rendered to text and tokenized this way;
// Encode keeps such text as text.
func (t *Tokenizer) EncodeSpecial(text string, addBOS bool) []int {
	out := t.Encode("", addBOS)
	if text == "" {
		return out
	}
	frags := []fragment{{text: text, id: -1}}
	for _, sp := range t.specialTexts() {
		if !strings.Contains(text, sp.text) {
			continue
		}
		var next []fragment
		for _, f := range frags {
			if f.id >= 0 {
				next = append(next, f)
				continue
			}
			s := f.text
			for {
				k := strings.Index(s, sp.text)
				if k < 0 {
					break
				}
				if k > 0 {
					next = append(next, fragment{text: s[:k], id: -1})
				}
				next = append(next, fragment{id: sp.id})
				s = s[k+len(sp.text):]
				if t.v.RStripSpecial && sp.text != "<unk>" && sp.text != "<s>" && sp.text != "<|endoftext|>" {
					s = strings.TrimLeft(s, " \t\n\v\f\r")
				}
			}
			if s != "" {
				next = append(next, fragment{text: s, id: -1})
			}
		}
		frags = next
	}
	var m merger
	for _, f := range frags {
		switch {
		case f.id >= 0:
			out = append(out, f.id)
		default:
			out = t.encodeText(&m, f.text, out)
		}
	}
	return out
}

type fragment struct {
	text string
	id   int // the special token, or -1 for text
}

type specialText struct {
	text string
	id   int
}

// specialTexts lists the control and user-defined tokens, longest text
// first (ties by id), built once.
func (t *Tokenizer) specialTexts() []specialText {
	t.specialOnce.Do(func() {
		l := make([]specialText, 0, len(t.special))
		for s, id := range t.special {
			l = append(l, specialText{s, int(id)})
		}
		slices.SortFunc(l, func(a, b specialText) int {
			if len(a.text) != len(b.text) {
				return len(b.text) - len(a.text)
			}
			return a.id - b.id
		})
		t.specialList = l
	})
	return t.specialList
}
