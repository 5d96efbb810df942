package chat

import "strings"

// This file finds the operands of the operators that can make a value far
// larger than their inputs (*, + and ~) and puts a call of the guard in
// their place (bound.go), so that 'x' * 10**10 or a doubling concatenation
// is refused before the engine allocates it. It parses a tag's text with
// the engine's own precedence (ardanlabs/jinja's parse.go): ~ below + and -,
// below *, /, //, %, below **, below unary - and +, below the postfix
// forms .attr, [...], (...) and |filter. Everything else in the tag
// (keywords, comparisons, and/or/not, if/else, commas, = of set and of
// keyword arguments) only separates operands and is copied as it is, so
// the parse needs no knowledge of statements: a chain of operands joined
// by operators is the same in {{ }}, {% set %}, {% if %} or a macro's
// default arguments.
//
// Method calls that can grow or link values (str.replace, str.format,
// str.split, list.append, list.insert, dict.update) become a filter of the
// guard that returns the method: x.replace(a, b) is written
// x|guard_m('replace')(a, b), which the engine evaluates in the same order.

// etok is a token of a tag's text as the engine's tokenizer sees it.
type etok struct {
	start, end int
	kind       byte // 's' string, 'n' number, 'w' word, 'o' operator or punctuation
}

// exprTokens splits s as the engine's tokenizeExpr does; characters it
// skips are left between tokens.
func exprTokens(s string) []etok {
	var out []etok
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case c == '\'' || c == '"':
			j := i + 1
			for j < len(s) && s[j] != c {
				if s[j] == '\\' && j+1 < len(s) {
					j++
				}
				j++
			}
			if j < len(s) {
				j++
			}
			out = append(out, etok{i, j, 's'})
			i = j
		case c >= '0' && c <= '9':
			j := i
			for j < len(s) && s[j] >= '0' && s[j] <= '9' {
				j++
			}
			if j+1 < len(s) && s[j] == '.' && s[j+1] >= '0' && s[j+1] <= '9' {
				j++
				for j < len(s) && s[j] >= '0' && s[j] <= '9' {
					j++
				}
				if j < len(s) && (s[j] == 'e' || s[j] == 'E') {
					j++
					if j < len(s) && (s[j] == '+' || s[j] == '-') {
						j++
					}
					for j < len(s) && s[j] >= '0' && s[j] <= '9' {
						j++
					}
				}
			}
			out = append(out, etok{i, j, 'n'})
			i = j
		case c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z':
			j := i
			for j < len(s) && (s[j] == '_' || s[j] >= 'a' && s[j] <= 'z' || s[j] >= 'A' && s[j] <= 'Z' || s[j] >= '0' && s[j] <= '9') {
				j++
			}
			out = append(out, etok{i, j, 'w'})
			i = j
		case i+1 < len(s) && (s[i:i+2] == "**" || s[i:i+2] == "//" || s[i:i+2] == "==" || s[i:i+2] == "!=" || s[i:i+2] == "<=" || s[i:i+2] == ">="):
			out = append(out, etok{i, i + 2, 'o'})
			i += 2
		case strings.IndexByte(",.:()[]{}|~+-*/%<>=", c) >= 0:
			out = append(out, etok{i, i + 1, 'o'})
			i++
		default:
			i++ // the engine skips it; it stays in the text between tokens
		}
	}
	return out
}

// exprKeywords are the words that are the engine's operators, never
// operands. A statement's first word (set, for, macro, call, ...) may be a
// variable's name elsewhere (call['function']), so it is read as an operand:
// what follows it is not an operator, so its chain ends at once.
var exprKeywords = map[string]bool{
	"and": true, "or": true, "not": true, "in": true, "is": true, "if": true, "else": true, "elif": true,
}

// guardedMethods are the methods rewritten to the guard's (bound.go).
var guardedMethods = map[string]bool{
	"replace": true, "format": true, "split": true, "append": true, "insert": true, "update": true,
}

// exprRewriter rewrites one tag's text.
type exprRewriter struct {
	s    string
	toks []etok
}

// guardOperators is s with every *, + and ~ replaced by a call of the
// guard's mul, add or cat and the guarded methods by the guard's m.
func guardOperators(s string) string {
	r := &exprRewriter{s: s, toks: exprTokens(s)}
	out, _ := r.seq(0, "")
	return out + r.s[r.gapEnd(len(r.toks)):]
}

// text is token i with the text between it and the token before.
func (r *exprRewriter) text(i int) string {
	return r.s[r.gapEnd(i):r.toks[i].end]
}

// gapEnd is where the text of token i starts: the end of token i-1.
func (r *exprRewriter) gapEnd(i int) int {
	if i == 0 {
		return 0
	}
	return r.toks[i-1].end
}

func (r *exprRewriter) is(i int, want ...string) bool {
	if i >= len(r.toks) || r.toks[i].kind != 'o' {
		return false
	}
	t := r.s[r.toks[i].start:r.toks[i].end]
	for _, w := range want {
		if t == w {
			return true
		}
	}
	return false
}

func (r *exprRewriter) word(i int) string {
	if i >= len(r.toks) || r.toks[i].kind != 'w' {
		return ""
	}
	return r.s[r.toks[i].start:r.toks[i].end]
}

// operandStart reports whether an operand can begin at token i.
func (r *exprRewriter) operandStart(i int) bool {
	if i >= len(r.toks) {
		return false
	}
	switch t := r.toks[i]; t.kind {
	case 's', 'n':
		return true
	case 'w':
		return !exprKeywords[r.s[t.start:t.end]]
	}
	return r.is(i, "(", "[", "{", "-", "+")
}

// seq copies tokens from i up to the closing bracket closer (not taken) or
// the end, rewriting every operand chain on the way.
func (r *exprRewriter) seq(i int, closer string) (string, int) {
	var b strings.Builder
	for i < len(r.toks) {
		if closer != "" && r.is(i, closer) {
			return b.String(), i
		}
		if r.operandStart(i) {
			t, j := r.concat(i)
			if j > i {
				b.WriteString(t)
				i = j
				continue
			}
		}
		b.WriteString(r.text(i)) // a separator, or a closer of another kind
		i++
	}
	return b.String(), i
}

// binary parses operands of next joined by ops; ops in wrap are folded
// into calls of the guard's function of that name.
func (r *exprRewriter) binary(i int, next func(int) (string, int), ops []string, wrap map[string]string) (string, int) {
	left, i := next(i)
	for r.is(i, ops...) {
		op := r.s[r.toks[i].start:r.toks[i].end]
		opText := r.text(i)
		right, j := next(i + 1)
		if fn, ok := wrap[op]; ok {
			left = guardPrefix + fn + "(" + left + "," + right + ")"
		} else {
			left += opText + right
		}
		i = j
	}
	return left, i
}

func (r *exprRewriter) concat(i int) (string, int) {
	return r.binary(i, r.add, []string{"~"}, map[string]string{"~": "cat"})
}

func (r *exprRewriter) add(i int) (string, int) {
	return r.binary(i, r.mul, []string{"+", "-"}, map[string]string{"+": "add"})
}

func (r *exprRewriter) mul(i int) (string, int) {
	return r.binary(i, r.power, []string{"*", "/", "//", "%"}, map[string]string{"*": "mul"})
}

// power is the engine's parsePower: unary, then at most one ** unary.
func (r *exprRewriter) power(i int) (string, int) {
	left, i := r.unary(i)
	if r.is(i, "**") {
		opText := r.text(i)
		right, j := r.unary(i + 1)
		return left + opText + right, j
	}
	return left, i
}

func (r *exprRewriter) unary(i int) (string, int) {
	if r.is(i, "-", "+") {
		t := r.text(i)
		rest, j := r.unary(i + 1)
		return t + rest, j
	}
	return r.postfix(i)
}

// postfix is an atom followed by .attr, [...], (...) and |filter.
func (r *exprRewriter) postfix(i int) (string, int) {
	var b strings.Builder
	switch {
	case i >= len(r.toks):
		return "", i
	case r.toks[i].kind == 's' || r.toks[i].kind == 'n' || r.toks[i].kind == 'w' && !exprKeywords[r.word(i)]:
		b.WriteString(r.text(i))
		i++
	case r.is(i, "(", "[", "{"):
		t, j := r.group(i)
		b.WriteString(t)
		i = j
	default:
		return "", i
	}
	for {
		switch {
		case r.is(i, ".") && i+1 < len(r.toks) && (r.toks[i+1].kind == 'w' || r.toks[i+1].kind == 'n'):
			if name := r.word(i + 1); guardedMethods[name] && r.is(i+2, "(") {
				b.WriteString(r.s[r.gapEnd(i):r.toks[i].start] + "|" + guardPrefix + "m(" + quote(name) + ")")
			} else {
				b.WriteString(r.text(i) + r.text(i+1))
			}
			i += 2
		case r.is(i, "(", "["):
			t, j := r.group(i)
			b.WriteString(t)
			i = j
		case r.is(i, "|") && r.word(i+1) != "":
			b.WriteString(r.text(i) + r.text(i+1))
			i += 2
		default:
			return b.String(), i
		}
	}
}

// group is a bracketed group at i with its contents rewritten.
func (r *exprRewriter) group(i int) (string, int) {
	open := r.s[r.toks[i].start:r.toks[i].end]
	closer := map[string]string{"(": ")", "[": "]", "{": "}"}[open]
	inner, j := r.seq(i+1, closer)
	t := r.text(i) + inner
	if r.is(j, closer) {
		t += r.text(j)
		j++
	}
	return t, j
}
