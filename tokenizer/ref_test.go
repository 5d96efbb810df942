package tokenizer

import (
	"math/rand/v2"
	"strings"
	"testing"
	"unicode/utf8"
)

// refSPM is the reference loop of llama2.c's encode: after the same initial
// split, repeatedly merge the adjacent pair whose concatenation is the
// best-scoring piece (leftmost on ties). O(n²).
func refSPM(t *Tokenizer, text string) []int {
	var out []int
	if text == "" {
		return out
	}
	s := strings.ReplaceAll(text, " ", "▁")
	if t.v.AddSpacePrefix {
		s = "▁" + s
	}
	var syms []string
	for i := 0; i < len(s); {
		n := t.userMatch(s[i:])
		if n == 0 {
			_, n = utf8.DecodeRuneInString(s[i:])
		}
		syms = append(syms, s[i:i+n])
		i += n
	}
	for {
		best, at := float32(0), -1
		for i := 0; i+1 < len(syms); i++ {
			if id, ok := t.pieces[syms[i]+syms[i+1]]; ok && (at < 0 || t.scores[id] > best) {
				best, at = t.scores[id], i
			}
		}
		if at < 0 {
			break
		}
		syms[at] += syms[at+1]
		syms = append(syms[:at+1], syms[at+2:]...)
	}
	for _, sy := range syms {
		if id, ok := t.pieces[sy]; ok {
			out = append(out, int(id))
		} else {
			out = t.fallback(out, sy)
		}
	}
	return out
}

// refBPE: per pre-token, repeatedly apply the lowest-ranked merge (leftmost
// on ties). O(n²) per word.
func refBPE(t *Tokenizer, text string) []int {
	var out []int
	preSplit(t.pre, text, func(w string) {
		if t.ignoreMerges {
			if id, ok := t.pieces[string(mapBytes(nil, w))]; ok {
				out = append(out, int(id))
				return
			}
		}
		var ids []int32
		for i := 0; i < len(w); i++ {
			ids = append(ids, t.byteTok[w[i]])
		}
		for {
			best, at := merge{}, -1
			for i := 0; i+1 < len(ids); i++ {
				if ids[i] < 0 || ids[i+1] < 0 {
					continue
				}
				if m, ok := t.merges[uint64(uint32(ids[i]))<<32|uint64(uint32(ids[i+1]))]; ok && (at < 0 || m.rank < best.rank) {
					best, at = m, i
				}
			}
			if at < 0 {
				break
			}
			ids[at] = best.id
			ids = append(ids[:at+1], ids[at+2:]...)
		}
		for i, id := range ids {
			if id >= 0 {
				out = append(out, int(id))
			} else {
				out = t.fallback(out, w[i:i+1])
			}
		}
	})
	return out
}

func ref(t *Tokenizer, text string) []int {
	if t.v.Kind == SPM {
		return refSPM(t, text)
	}
	return refBPE(t, text)
}

// randomText draws from an alphabet that makes many merges and ties.
func randomText(r *rand.Rand, n int) string {
	alpha := []string{"a", "b", "e", "t", "h", "o", "n", " ", " ", "  ", "\n", "'s", "the", "ing",
		"é", "日", "🦙", "\t", "1", "23", ".", "!", "\u2581", "\xff", "\x00", "Ä"}
	var b strings.Builder
	for range n {
		b.WriteString(alpha[r.IntN(len(alpha))])
	}
	return b.String()
}

func randomUTF8(r *rand.Rand, n int) string {
	var b strings.Builder
	for range n {
		var c rune
		switch r.IntN(4) {
		case 0:
			c = rune(r.IntN(0x80))
		case 1:
			c = rune(r.IntN(0x800))
		case 2:
			c = rune(r.IntN(0x10000))
		default:
			c = rune(r.IntN(0x110000))
		}
		if !utf8.ValidRune(c) {
			c = 'x'
		}
		b.WriteRune(c)
	}
	return b.String()
}

// spmText is what an SPM tokenizer gives back: "▁" reads as a space.
func expectDecode(t *Tokenizer, s string) string {
	if t.v.Kind == SPM {
		// SentencePiece removes extra spaces first; a "▁" in the text is
		// not a space until it decodes as one.
		if t.removeExtra {
			s = strings.Join(strings.FieldsFunc(s, func(r rune) bool { return r == ' ' }), " ")
		}
		s = strings.ReplaceAll(s, "▁", " ")
	}
	return s
}

func allTokenizers(t testing.TB) map[string]*Tokenizer {
	m := map[string]*Tokenizer{}
	for k, v := range llama2Tokenizers(t) {
		m["llama2-"+k] = v
	}
	for k, v := range gpt2Tokenizers(t) {
		m["gpt2-"+k] = v
	}
	for k, v := range storiesTokenizers(t) {
		m["stories-"+k] = v
	}
	return m
}

func TestAgainstReference(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	toks := allTokenizers(t)
	texts, _ := vectors(t, "llama2")
	for i := 0; i < 300; i++ {
		texts = append(texts, randomText(r, r.IntN(40)), randomUTF8(r, r.IntN(20)))
	}
	for name, tk := range toks {
		for _, s := range texts {
			got := tk.Encode(s, true)
			want := ref(tk, s)
			if tk.BOS() >= 0 {
				want = append([]int{tk.BOS()}, want...)
			}
			if !equalIDs(got, want) {
				t.Fatalf("%s %q:\n got %v\nwant %v (reference)", name, s, got, want)
			}
			for _, id := range got {
				if id < 0 || id >= tk.VocabSize() {
					t.Fatalf("%s %q: id %d out of range", name, s, id)
				}
			}
			if d := tk.Decode(got); d != expectDecode(tk, s) {
				t.Fatalf("%s: Decode(Encode(%q)) = %q", name, s, d)
			}
		}
	}
}

func TestSpaceSplit(t *testing.T) {
	for name, tk := range allTokenizers(t) {
		if tk.Kind() == SPM && !tk.spaceSplit {
			t.Errorf("%s: vocabulary has pieces with an inner ▁; encoding will not split words", name)
		}
	}
	for s, want := range map[string]bool{"▁a": false, "▁▁": false, "a▁": true, "▁a▁▁": true, "▁▁▁a": false, "a": false} {
		if innerSpace(s) != want {
			t.Errorf("innerSpace(%q) = %v", s, !want)
		}
	}
	// A vocabulary with a piece across a space still encodes exactly.
	v := Vocab{Kind: SPM, Tokens: []string{"<unk>", "▁", "a", "b", "▁a", "a▁", "a▁b", "▁a▁b"},
		Scores: []float32{0, -1, -2, -3, -4, -5, -6, -7}, BOS: -1, EOS: -1, UNK: 0, PAD: -1, AddSpacePrefix: true}
	tk, err := New(v)
	if err != nil {
		t.Fatal(err)
	}
	if tk.spaceSplit {
		t.Fatal("spaceSplit with a piece a▁")
	}
	if got := tk.Encode("a b", false); !equalIDs(got, []int{4, 1, 3}) || !equalIDs(got, refSPM(tk, "a b")) {
		t.Errorf("cross-space piece: %v", got)
	}
	if got := tk.Encode("ba b", false); !equalIDs(got, refSPM(tk, "ba b")) || !equalIDs(got, []int{1, 3, 6}) {
		t.Errorf("cross-space merge: %v", got) // ▁ b a▁b: a▁ (-5) beats nothing else, then a▁b
	}
}
