package tokenizer

import (
	"strings"
	"unicode/utf8"
)

// byteToRune is GPT-2's bytes_to_unicode: printable Latin-1 bytes map to
// themselves, the others to U+0100 upwards, in byte order.
var byteToRune [256]rune

// runeToByte inverts byteToRune over U+0000..U+01FF; -1 elsewhere.
var runeToByte [512]int16

func init() { // pure table computation, no registration
	for i := range runeToByte {
		runeToByte[i] = -1
	}
	n := 0
	for b := 0; b < 256; b++ {
		if (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF) {
			byteToRune[b] = rune(b)
		} else {
			byteToRune[b] = rune(256 + n)
			n++
		}
		runeToByte[byteToRune[b]] = int16(b)
	}
}

// unmapBytes turns a byte-mapped token back into raw bytes; code points
// outside the map are kept as they are.
func unmapBytes(s string) string {
	var b []byte
	for _, r := range s {
		if r >= 0 && int(r) < len(runeToByte) && runeToByte[r] >= 0 {
			b = append(b, byte(runeToByte[r]))
		} else {
			b = utf8.AppendRune(b, r)
		}
	}
	return string(b)
}

// mapBytes is the inverse of unmapBytes for raw text.
func mapBytes(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		dst = utf8.AppendRune(dst, byteToRune[s[i]])
	}
	return dst
}

// encodeBPE: user-defined tokens split out first, then the pre-tokenizer,
// then rank-ordered merges inside each word.
func (t *Tokenizer) encodeBPE(m *merger, text string, out []int, prefix bool) []int {
	if t.v.AddSpacePrefix && prefix && !strings.HasPrefix(text, " ") {
		text = " " + text
	}
	if t.raw {
		text = strings.ReplaceAll(text, " ", "▁")
	}
	var buf []byte
	word := func(w string) {
		out, buf = t.bpeWord(m, w, out, buf)
	}
	for text != "" {
		// find the next user-defined token
		end, tok, tokLen := len(text), -1, 0
		if len(t.user) > 0 {
			for i := 0; i < len(text); i++ {
				if n := t.userMatch(text[i:]); n > 0 {
					end, tokLen = i, n
					tok = int(t.pieces[text[i:i+n]])
					break
				}
			}
		}
		frag := text[:end]
		for len(frag) > maxChunk { // bound positions; never hit in practice
			cut := maxChunk
			for cut > 0 && !utf8.RuneStart(frag[cut]) {
				cut--
			}
			if cut == 0 {
				cut = maxChunk
			}
			preSplit(t.pre, frag[:cut], word)
			frag = frag[cut:]
		}
		preSplit(t.pre, frag, word)
		if tok >= 0 {
			out = append(out, tok)
		}
		text = text[end+tokLen:]
	}
	return out
}

func (t *Tokenizer) bpeWord(m *merger, w string, out []int, buf []byte) ([]int, []byte) {
	if t.raw {
		return t.rawWord(m, w, out), buf
	}
	if t.ignoreMerges {
		buf = mapBytes(buf[:0], w)
		if id, ok := t.pieces[string(buf)]; ok {
			return append(out, int(id)), buf
		}
	}
	if len(w) == 1 {
		if id := t.byteTok[w[0]]; id >= 0 {
			return append(out, int(id)), buf
		}
	}
	m.reset()
	for i := 0; i < len(w); i++ {
		m.add(i, i+1, t.byteTok[w[i]])
	}
	m.run(func(l, r *symbol) (float64, int32, bool) {
		if l.id < 0 || r.id < 0 {
			return 0, 0, false
		}
		mg, ok := t.merges[uint64(uint32(l.id))<<32|uint64(uint32(r.id))]
		if !ok {
			return 0, 0, false
		}
		return -float64(mg.rank), mg.id, true
	})
	for i := int32(0); i >= 0 && int(i) < len(m.syms); i = m.syms[i].next {
		sy := &m.syms[i]
		if sy.id >= 0 {
			out = append(out, int(sy.id))
		} else {
			out = t.fallback(out, w[sy.start:sy.end])
		}
	}
	return out, buf
}

// rawWord is bpeWord over raw UTF-8 (gemma4): one symbol per code point,
// a run of newlines that is a token taken whole (as llama.cpp does), and
// symbols that are not tokens written as their <0xXX> byte tokens where
// the vocabulary has them.
func (t *Tokenizer) rawWord(m *merger, w string, out []int) []int {
	if strings.Trim(w, "\n") == "" {
		if id, ok := t.pieces[w]; ok {
			return append(out, int(id))
		}
	}
	m.reset()
	for i := 0; i < len(w); {
		_, n := utf8.DecodeRuneInString(w[i:])
		id, ok := t.pieces[w[i:i+n]]
		if !ok {
			id = -1
		}
		m.add(i, i+n, id)
		i += n
	}
	m.run(func(l, r *symbol) (float64, int32, bool) {
		if l.id < 0 || r.id < 0 {
			return 0, 0, false
		}
		mg, ok := t.merges[uint64(uint32(l.id))<<32|uint64(uint32(r.id))]
		if !ok {
			return 0, 0, false
		}
		return -float64(mg.rank), mg.id, true
	})
	for i := int32(0); i >= 0 && int(i) < len(m.syms); i = m.syms[i].next {
		sy := &m.syms[i]
		if sy.id >= 0 {
			out = append(out, int(sy.id))
			continue
		}
		for k := sy.start; k < sy.end; k++ {
			if id := t.byteTok[w[k]]; id >= 0 {
				out = append(out, int(id))
			}
		}
	}
	return out
}
