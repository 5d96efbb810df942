package tokenizer

import (
	"strings"
	"unicode/utf8"
)

// maxChunk bounds the text one merge loop sees, so int32 positions never
// overflow. Texts longer than that are encoded in pieces cut at code-point
// boundaries (in practice never: 256 MiB of text).
const maxChunk = 1 << 28

// encodeSPM: escape spaces as "▁" after the dummy prefix, one symbol per code
// point (user-defined pieces as whole symbols), merge by piece score, then
// byte fallback for symbols that are not pieces.
func (t *Tokenizer) encodeSPM(m *merger, text string, out []int, prefix bool) []int {
	if t.removeExtra {
		lead := !prefix && strings.HasPrefix(text, " ") // a later piece keeps its one separating space
		text = strings.Join(strings.FieldsFunc(text, func(r rune) bool { return r == ' ' }), " ")
		if lead && text != "" {
			text = " " + text
		}
		if text == "" {
			return out
		}
	}
	var b strings.Builder
	b.Grow(len(text) + len(text)/4 + 3)
	if t.v.AddSpacePrefix && prefix {
		b.WriteString("▁")
	}
	for i := 0; i < len(text); i++ {
		if text[i] == ' ' {
			b.WriteString("▁")
		} else {
			b.WriteByte(text[i])
		}
	}
	s := b.String()
	for len(s) > maxChunk {
		cut := maxChunk
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		if cut == 0 {
			cut = maxChunk
		}
		out = t.spmChunk(m, s[:cut], out)
		s = s[cut:]
	}
	return t.spmChunk(m, s, out)
}

// spmChunk encodes s, word by word when the vocabulary allows it: if no
// piece holds "▁" right after another character (SentencePiece's default
// split_by_whitespace training), no merge can cross the start of a "▁" run
// that follows another character, so the words merge independently and the
// result is the same as for the whole text, with small heaps.
func (t *Tokenizer) spmChunk(m *merger, s string, out []int) []int {
	if !t.spaceSplit {
		return t.spmWord(m, s, out)
	}
	start := 0
	for i := 1; i < len(s); i++ {
		if s[i] == 0xE2 && strings.HasPrefix(s[i:], "▁") && !strings.HasSuffix(s[:i], "▁") {
			out = t.spmWord(m, s[start:i], out)
			start = i
			i += len("▁") - 1
		}
	}
	return t.spmWord(m, s[start:], out)
}

func (t *Tokenizer) spmWord(m *merger, s string, out []int) []int {
	m.reset()
	for i := 0; i < len(s); {
		n := t.userMatch(s[i:])
		if n == 0 {
			_, n = utf8.DecodeRuneInString(s[i:])
		}
		id, ok := t.pieces[s[i:i+n]]
		if !ok {
			id = -1
		}
		m.add(i, i+n, id)
		i += n
	}
	m.run(func(l, r *symbol) (float64, int32, bool) {
		id, ok := t.pieces[s[l.start:r.end]]
		if !ok {
			return 0, 0, false
		}
		return float64(t.scores[id]), id, true
	})
	for i := int32(0); i >= 0 && int(i) < len(m.syms); i = m.syms[i].next {
		sy := &m.syms[i]
		if sy.id >= 0 {
			out = append(out, int(sy.id))
		} else {
			out = t.fallback(out, s[sy.start:sy.end])
		}
	}
	return out
}
