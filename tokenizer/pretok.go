package tokenizer

import (
	"unicode"
	"unicode/utf8"
)

// preKind selects a BPE pre-tokenizer.
type preKind int

const (
	// preGPT2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
	preGPT2 preKind = iota
	// preLlama3: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
	// ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
	preLlama3
	// preQwen2: preLlama3 with \p{N} (single digits) instead of \p{N}{1,3}.
	preQwen2
	// preQwen35: preQwen2 with marks in words: (?i:'s|...)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}|
	// ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
	preQwen35
	// preDeepSeekLLM: six regexes in turn (pretok_deepseek.go).
	preDeepSeekLLM
	// preGemma4: [^\n]+|[\n]+ over raw UTF-8 with spaces escaped as "▁"
	// (tokenizer model gemma4: no byte-level mapping).
	preGemma4
	// preSmolLM: every \p{N} on its own, then preGPT2 on the rest (HF
	// Digits(individual_digits) followed by ByteLevel).
	preSmolLM
)

// preFromName maps tokenizer.ggml.pre to a pre-tokenizer, and whether whole
// words found in the vocabulary skip the merges (Llama 3's ignore_merges).
// Names whose regex equals one of ours are accepted as aliases, as in
// llama.cpp.
func preFromName(name string) (preKind, bool, bool) {
	switch name {
	case "", "default", "gpt-2", "gpt2", "mpt", "olmo", "jais":
		return preGPT2, false, true
	case "llama-bpe", "llama3", "llama-v3":
		return preLlama3, true, true
	case "dbrx", "smaug-bpe":
		return preLlama3, false, true
	case "qwen2", "stablelm2":
		return preQwen2, false, true
	case "qwen35":
		return preQwen35, false, true
	case "deepseek-llm":
		return preDeepSeekLLM, false, true
	case "gemma4":
		return preGemma4, false, true
	case "smollm", "starcoder", "refact", "command-r", "codeshell":
		return preSmolLM, false, true
	}
	return 0, false, false
}

// preSplit calls emit with each pre-token of s, in order; the pre-tokens
// concatenate to s.
func preSplit(k preKind, s string, emit func(string)) {
	switch k {
	case preLlama3:
		splitLlama3(s, 3, false, emit)
	case preQwen2:
		splitLlama3(s, 1, false, emit)
	case preQwen35:
		splitLlama3(s, 1, true, emit)
	case preDeepSeekLLM:
		splitDeepSeekLLM(s, emit)
	case preGemma4:
		for s != "" {
			nl := s[0] == '\n'
			i := 1
			for i < len(s) && (s[i] == '\n') == nl {
				i++
			}
			emit(s[:i])
			s = s[i:]
		}
	case preSmolLM:
		start := 0
		for i := 0; i < len(s); {
			r, n := utf8.DecodeRuneInString(s[i:])
			if unicode.IsNumber(r) {
				splitGPT2(s[start:i], emit)
				emit(s[i : i+n])
				start = i + n
			}
			i += n
		}
		splitGPT2(s[start:], emit)
	default:
		splitGPT2(s, emit)
	}
}

// runes decodes s into code points and their byte offsets (len(s) appended).
// Invalid bytes decode to U+FFFD, one byte each, so offsets stay exact.
func runes(s string) ([]rune, []int) {
	cp := make([]rune, 0, len(s))
	off := make([]int, 0, len(s)+1)
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		cp = append(cp, r)
		off = append(off, i)
		i += n
	}
	return cp, append(off, len(s))
}

func isL(r rune) bool { return unicode.IsLetter(r) }
func isN(r rune) bool { return unicode.IsNumber(r) }

// isS is \s: the Unicode White_Space property (Go's unicode.IsSpace).
func isS(r rune) bool { return unicode.IsSpace(r) }

// isP is [^\s\p{L}\p{N}].
func isP(r rune) bool { return !isS(r) && !isL(r) && !isN(r) }

func lower(r rune) rune {
	if r >= 'A' && r <= 'Z' {
		return r + 'a' - 'A'
	}
	return r
}

// contraction returns the length in code points of 's|'t|'re|'ve|'m|'ll|'d
// at cp[i:], 0 when none; fold makes it case-insensitive.
func contraction(cp []rune, i int, fold bool) int {
	if cp[i] != '\'' || i+1 >= len(cp) {
		return 0
	}
	f := func(r rune) rune {
		if fold {
			return lower(r)
		}
		return r
	}
	switch f(cp[i+1]) {
	case 's', 't', 'm', 'd':
		return 2
	}
	if i+2 < len(cp) {
		a, b := f(cp[i+1]), f(cp[i+2])
		if (a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l') {
			return 3
		}
	}
	return 0
}

// whitespace handles the trailing alternatives \s+(?!\S)|\s+ at cp[i]
// (and, with nl, \s*[\r\n]+ before them); it returns the end of the match.
func whitespace(cp []rune, i int, nl bool) int {
	j := i
	lastNL := -1
	for j < len(cp) && isS(cp[j]) {
		if cp[j] == '\r' || cp[j] == '\n' {
			lastNL = j + 1
		}
		j++
	}
	switch {
	case nl && lastNL > 0:
		return lastNL // \s*[\r\n]+
	case j-i > 1 && j < len(cp):
		return j - 1 // \s+(?!\S): leave the last space to the next word
	case j > i:
		return j // \s+
	}
	return i + 1 // unreachable: every code point is \s, \p{L}, \p{N} or other
}

// splitGPT2 scans 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
func splitGPT2(s string, emit func(string)) {
	if s == "" {
		return
	}
	cp, off := runes(s)
	n := len(cp)
	for i := 0; i < n; {
		var end int
		c := cp[i]
		if k := contraction(cp, i, false); k > 0 {
			end = i + k
		} else {
			j := i
			if c == ' ' && i+1 < n {
				j = i + 1 // the optional leading space
			}
			switch d := cp[j]; {
			case j == i && c == ' ':
				end = whitespace(cp, i, false)
			case isL(d):
				end = j + 1
				for end < n && isL(cp[end]) {
					end++
				}
			case isN(d):
				end = j + 1
				for end < n && isN(cp[end]) {
					end++
				}
			case isP(d):
				end = j + 1
				for end < n && isP(cp[end]) {
					end++
				}
			default:
				end = whitespace(cp, i, false)
			}
		}
		emit(s[off[i]:off[end]])
		i = end
	}
}

// splitLlama3 scans (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,maxDigits}|
// ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+; with marks, words are [\p{L}\p{M}]+
// and the punctuation class excludes \p{M} too (Qwen3.5).
func splitLlama3(s string, maxDigits int, marks bool, emit func(string)) {
	if s == "" {
		return
	}
	isW, isQ := isL, isP
	if marks {
		isW = func(r rune) bool { return isL(r) || unicode.Is(unicode.M, r) }
		isQ = func(r rune) bool { return !isS(r) && !isW(r) && !isN(r) }
	}
	cp, off := runes(s)
	n := len(cp)
	for i := 0; i < n; {
		var end int
		c := cp[i]
		switch {
		case contraction(cp, i, true) > 0:
			end = i + contraction(cp, i, true)
		case isW(c) || (c != '\r' && c != '\n' && !isL(c) && !isN(c) && i+1 < n && isW(cp[i+1])):
			end = i + 1
			for end < n && isW(cp[end]) {
				end++
			}
		case isN(c):
			end = i + 1
			for end < n && end-i < maxDigits && isN(cp[end]) {
				end++
			}
		case isQ(c) || (c == ' ' && i+1 < n && isQ(cp[i+1])):
			end = i + 1
			for end < n && isQ(cp[end]) {
				end++
			}
			for end < n && (cp[end] == '\r' || cp[end] == '\n') {
				end++
			}
		default:
			end = whitespace(cp, i, true)
		}
		emit(s[off[i]:off[end]])
		i = end
	}
}
