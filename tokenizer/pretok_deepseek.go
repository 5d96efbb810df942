package tokenizer

import (
	"strings"
	"unicode"
)

// DeepSeek-LLM's pre-tokenizer is a sequence of six regexes, each splitting
// every piece the previous ones left (its matches and the text between them
// become pieces), as llama.cpp applies them (unicode_regex_split):
//
//	[\r\n]
//	\s?[deepseekLetters]+
//	\s?[deepseekPunct]+
//	\s+$
//	[deepseekCJK]+
//	\p{N}+
//
// llama.cpp runs them with std::wregex after replacing every non-ASCII
// whitespace code point by U+000B, so \s is any Unicode whitespace and no
// non-ASCII whitespace is ever inside a bracket class (the ideographic space
// of the punctuation class included).

// deepseekLetters are the ranges of the letter class (pairs, inclusive).
var deepseekLetters = ranges("AZaz\u00b5\u00b5\u00c0\u00d6\u00d8\u00f6\u00f8\u01ba\u01bc\u01bf\u01c4\u0293\u0295\u02af\u0370\u0373\u0376\u0376\u0377\u0377\u037b\u037d\u037f\u037f\u0386\u0386\u0388\u038a\u038c\u038c\u038e\u03a1\u03a3\u03f5\u03f7\u0481\u048a\u052f\u0531\u0556\u10a0\u10c5\u13a0\u13f5\u13f8\u13fd\u1c90\u1cba\u1cbd\u1cbf\u1d00\u1d2b\u1d6b\u1d77\u1d79\u1d9a\u1e00\u1f15\u1f18\u1f1d\u1f20\u1f45\u1f48\u1f4d\u1f50\u1f57\u1f59\u1f59\u1f5b\u1f5b\u1f5d\u1f5d\u1f5f\u1f7d\u1f80\u1fb4\u1fb6\u1fbc\u1fbe\u1fbe\u1fc2\u1fc4\u1fc6\u1fcc\u1fd0\u1fd3\u1fd6\u1fdb\u1fe0\u1fec\u1ff2\u1ff4\u1ff6\u1ffc\u2102\u2102\u2107\u2107\u210a\u2113\u2115\u2115\u2119\u211d\u2124\u2124\u2126\u2126\u2128\u2128\u212a\u212d\u212f\u2134\u2139\u2139\u213c\u213f\u2145\u2149\u214e\u214e\u2183\u2183\u2184\u2184\u2c00\u2c7b\u2c7e\u2ce4\u2ceb\u2cee\u2cf2\u2cf2\u2cf3\u2cf3\ua640\ua66d\ua680\ua69b\ua722\ua76f\ua771\ua787\ua78b\ua78e\uab70\uabbf\ufb00\ufb06\ufb13\ufb17\uff21\uff3a\uff41\uff5a\U00010400\U0001044f\U000104b0\U000104d3\U000104d8\U000104fb\U00010c80\U00010cb2\U00010cc0\U00010cf2\U000118a0\U000118df\U0001e900\U0001e943")

// deepseekPunct: [!-/:-~！-／：-～‘-‟　-。].
var deepseekPunct = ranges("!/:~！／：～‘‟\u3000。")

// deepseekCJK: [一-龥ࠀ-一가-퟿].
var deepseekCJK = ranges("一龥ࠀ一가\ud7ff")

// ranges reads pairs of code points (first, last).
func ranges(s string) [][2]rune {
	var r []rune
	for _, c := range s {
		r = append(r, c)
	}
	out := make([][2]rune, 0, len(r)/2)
	for i := 0; i+1 < len(r); i += 2 {
		out = append(out, [2]rune{r[i], r[i+1]})
	}
	return out
}

func inRanges(rs [][2]rune, c rune) bool {
	if c > 0x7f && unicode.IsSpace(c) {
		return false // llama.cpp's U+000B stand-in
	}
	for _, r := range rs {
		if c >= r[0] && c <= r[1] {
			return true
		}
	}
	return false
}

// splitDeepSeekLLM emits the pre-tokens of s.
func splitDeepSeekLLM(s string, emit func(string)) {
	if s == "" {
		return
	}
	cp, off := runes(s)
	// pieces as [start, end) in code points
	pieces := [][2]int{{0, len(cp)}}
	isNL := func(c rune) bool { return c == '\r' || c == '\n' }
	class := func(rs [][2]rune) func(i, end int) int {
		// \s?[class]+ at i: the end of the match, or -1
		return func(i, end int) int {
			j := i
			if isS(cp[j]) && j+1 < end && inRanges(rs, cp[j+1]) {
				j++
			}
			if !inRanges(rs, cp[j]) {
				return -1
			}
			for j < end && inRanges(rs, cp[j]) {
				j++
			}
			return j
		}
	}
	run := func(pred func(rune) bool) func(i, end int) int {
		return func(i, end int) int {
			j := i
			for j < end && pred(cp[j]) {
				j++
			}
			if j == i {
				return -1
			}
			return j
		}
	}
	trailingSpace := func(i, end int) int {
		for j := i; j < end; j++ {
			if !isS(cp[j]) {
				return -1
			}
		}
		return end
	}
	passes := []func(i, end int) int{
		func(i, end int) int {
			if isNL(cp[i]) {
				return i + 1
			}
			return -1
		},
		class(deepseekLetters),
		class(deepseekPunct),
		trailingSpace,
		run(func(c rune) bool { return inRanges(deepseekCJK, c) }),
		run(unicode.IsNumber),
	}
	for _, match := range passes {
		next := make([][2]int, 0, len(pieces))
		for _, p := range pieces {
			start := p[0]
			for i := p[0]; i < p[1]; {
				e := match(i, p[1])
				if e < 0 {
					i++
					continue
				}
				if i > start {
					next = append(next, [2]int{start, i})
				}
				next = append(next, [2]int{i, e})
				start, i = e, e
			}
			if start < p[1] {
				next = append(next, [2]int{start, p[1]})
			}
		}
		pieces = next
	}
	for _, p := range pieces {
		emit(s[off[p[0]]:off[p[1]]])
	}
}

// deepseekRegexes are the six regexes as DeepSeek-LLM's tokenizer.json
// writes them (Split pre-tokenizers before ByteLevel), rebuilt from the
// classes above.
func deepseekRegexes() []string {
	class := func(rs [][2]rune) string {
		var b strings.Builder
		b.WriteByte('[')
		for _, r := range rs {
			b.WriteRune(r[0])
			if r[1] != r[0] {
				b.WriteByte('-')
				b.WriteRune(r[1])
			}
		}
		b.WriteByte(']')
		return b.String()
	}
	return []string{
		"[\r\n]",
		`\s?` + class(deepseekLetters) + "+",
		`\s?` + class(deepseekPunct) + "+",
		`\s+$`,
		class(deepseekCJK) + "+",
		`\p{N}+`,
	}
}

// isDeepSeekLLM tells whether a tokenizer.json's Split patterns are
// DeepSeek-LLM's (CR and LF written raw or escaped).
func isDeepSeekLLM(splits []string) bool {
	want := deepseekRegexes()
	if len(splits) != len(want) {
		return false
	}
	for i, s := range splits {
		s = strings.NewReplacer(`\r`, "\r", `\n`, "\n").Replace(s)
		if s != want[i] {
			return false
		}
	}
	return true
}
