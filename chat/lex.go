package chat

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// This file turns a chat template into the source the engine compiles.
//
// Whitespace is Hugging Face's, not the engine's: ardanlabs/jinja applies
// trim_blocks, lstrip_blocks and the "-" markers to the nearest text
// segment even across other tags, where Jinja (and @huggingface/jinja)
// only touch the text right beside the tag. So rewrite applies
// @huggingface/jinja's whitespace rules itself, in its order:
//
//  1. one trailing "\n" of the template is dropped;
//  2. lstrip_blocks: spaces and tabs at the start of a line before "{%",
//     "{#" (or "{-") are removed;
//  3. trim_blocks: a "\n" right after "%}", "#}" (or "-}") is removed;
//  4. {% generation %} and {% endgeneration %} tags are removed (with the
//     whitespace after them unless they carry "-");
//  5. "{%-", "{{-", "{#-" remove the whitespace at the end of the text
//     right before them, "-%}", "-}}", "-#}" the whitespace at the start of
//     the text after them ("whitespace" as JavaScript's trim).
//
// and then hands the engine a template without any text segment: each
// literal text becomes {{ '...' }}, comments are dropped, and tags lose
// their "-", so the engine's own trimming has nothing to act on. String
// literals inside tags are decoded with @huggingface/jinja's escapes
// (\n \t \r \b \f \v \' \" \\ \xHH \uHHHH; any other is an error, as there)
// and re-encoded with only \\ and \' escaped, which the engine's lexer
// (which keeps unknown escapes verbatim) reads back exactly.
//
// Finally each {% for %} and {% macro %} body starts with a guard
// statement that counts iterations and calls and checks the deadline, and
// each macro body ends with one that counts the call depth back down
// (limits.go); being tags among tags they change no whitespace. Each for
// loop's iterable passes a check that refuses none, and every filter's
// input a check (the guard's f) that refuses none for list filters
// (strictFilters), as Python's Jinja and @huggingface/jinja do, and bounds
// what the filter can make. Each output tag and text becomes a call of the
// guard's out, which counts what is written; the operators and methods
// that can grow values become calls of the guard (expr.go, bound.go).

// errSyntax marks a template the lexer refuses (unclosed tag, bad escape).
var errSyntax = errors.New("syntax error")

// isSpace is @huggingface/jinja's isWhitespace (JavaScript's \s and trim).
func isSpace(r rune) bool {
	switch {
	case r == ' ', r >= '\t' && r <= '\r':
		return true
	case r < 128:
		return false
	}
	return r == 0xa0 || r == 0x1680 || r >= 0x2000 && r <= 0x200a || r == 0x2028 || r == 0x2029 ||
		r == 0x202f || r == 0x205f || r == 0x3000 || r == 0xfeff
}

const jsSpace = `[\t\n\v\f\r \x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}\x{feff}]`

var (
	trimBlocks = regexp.MustCompile(`([#%-]\})\n`)
	generation = regexp.MustCompile(`(?s)\{%(-?)` + jsSpace + `*(?:end)?generation` + jsSpace + `*(-?)%\}(` + jsSpace + `*)`)
)

// preprocess is steps 1-4 above, @huggingface/jinja's preprocess().
func preprocess(src string) string {
	src = strings.TrimSuffix(src, "\n")
	src = lstripBlocks(src)
	src = trimBlocks.ReplaceAllString(src, "$1")
	var b strings.Builder
	last := 0
	for _, m := range generation.FindAllStringSubmatchIndex(src, -1) {
		end := m[0]
		if m[3] > m[2] { // "{%-": strip the whitespace before, not past the previous match
			for end > last {
				r, n := utf8.DecodeLastRuneInString(src[last:end])
				if !isSpace(r) {
					break
				}
				end -= n
			}
		}
		b.WriteString(src[last:end])
		if m[5] == m[4] { // no "-%}": the whitespace after stays
			b.WriteString(src[m[6]:m[7]])
		}
		last = m[1]
	}
	b.WriteString(src[last:])
	return b.String()
}

// lstripBlocks removes spaces and tabs that start a line (after "\n", "\r",
// U+2028, U+2029 or at the start, as JavaScript's multiline ^) when "{%",
// "{#" or "{-" follows them.
func lstripBlocks(src string) string {
	var b strings.Builder
	lineStart := true
	for i := 0; i < len(src); {
		if lineStart {
			j := i
			for j < len(src) && (src[j] == ' ' || src[j] == '\t') {
				j++
			}
			if j > i && j+1 < len(src) && src[j] == '{' && strings.IndexByte("#%-", src[j+1]) >= 0 {
				i = j
			}
		}
		r, n := utf8.DecodeRuneInString(src[i:])
		b.WriteString(src[i : i+n])
		i += n
		lineStart = r == '\n' || r == '\r' || r == 0x2028 || r == 0x2029
	}
	return b.String()
}

type segKind int

const (
	segText    segKind = iota
	segExpr            // {{ ... }}
	segStmt            // {% ... %}
	segComment         // {# ... #}
)

// segment is a piece of the template: literal text, or a tag's content
// (without delimiters and "-" markers, string literals re-encoded).
type segment struct {
	kind segKind
	text string
}

// lexer splits a preprocessed template into segments, step 5 above.
type lexer struct {
	src  string
	pos  int
	segs []segment
}

func (l *lexer) errf(format string, args ...any) error {
	line := 1 + strings.Count(l.src[:min(l.pos, len(l.src))], "\n")
	return fmt.Errorf("%w at line %d: %s", errSyntax, line, fmt.Sprintf(format, args...))
}

// stripTrailing trims the whitespace at the end of the previous segment
// when it is text (and drops it when nothing is left).
func (l *lexer) stripTrailing() {
	if n := len(l.segs); n > 0 && l.segs[n-1].kind == segText {
		t := strings.TrimRightFunc(l.segs[n-1].text, isSpace)
		if t == "" {
			l.segs = l.segs[:n-1]
		} else {
			l.segs[n-1].text = t
		}
	}
}

func (l *lexer) skipLeading() {
	for l.pos < len(l.src) {
		r, n := utf8.DecodeRuneInString(l.src[l.pos:])
		if !isSpace(r) {
			return
		}
		l.pos += n
	}
}

// tagStart reports whether a tag opens at i.
func tagStart(src string, i int) bool {
	return src[i] == '{' && i+1 < len(src) && (src[i+1] == '%' || src[i+1] == '{' || src[i+1] == '#')
}

func lex(src string) ([]segment, error) {
	l := &lexer{src: src}
	for l.pos < len(l.src) {
		start := l.pos
		for l.pos < len(l.src) && !tagStart(l.src, l.pos) {
			l.pos++
		}
		if l.pos > start {
			l.segs = append(l.segs, segment{segText, l.src[start:l.pos]})
			continue
		}
		var err error
		switch l.src[l.pos+1] {
		case '#':
			err = l.comment()
		case '%':
			err = l.tag(segStmt)
		default:
			err = l.tag(segExpr)
		}
		if err != nil {
			return nil, err
		}
	}
	return l.segs, nil
}

func (l *lexer) comment() error {
	l.pos += 2
	if l.pos < len(l.src) && l.src[l.pos] == '-' {
		l.pos++
		l.stripTrailing()
	}
	end := strings.Index(l.src[l.pos:], "#}")
	if end < 0 {
		return l.errf("missing end of comment tag")
	}
	body := l.src[l.pos : l.pos+end]
	l.pos += end + 2
	l.segs = append(l.segs, segment{segComment, ""})
	if strings.HasSuffix(body, "-") {
		l.skipLeading()
	}
	return nil
}

// tag reads a {% %} or {{ }} tag at l.pos.
func (l *lexer) tag(kind segKind) error {
	open := l.pos
	l.pos += 2
	if l.pos < len(l.src) && l.src[l.pos] == '-' {
		l.pos++
		l.stripTrailing()
	}
	closer := byte('}')
	if kind == segStmt {
		closer = '%'
	}
	var b strings.Builder
	depth := 0
	for l.pos < len(l.src) {
		c := l.src[l.pos]
		switch {
		case c == '-' && l.pos+2 < len(l.src) && l.src[l.pos+1] == closer && l.src[l.pos+2] == '}' && (kind == segStmt || depth == 0):
			l.pos += 3
			l.segs = append(l.segs, segment{kind, b.String()})
			l.skipLeading()
			return nil
		case c == closer && l.pos+1 < len(l.src) && l.src[l.pos+1] == '}' && (kind == segStmt || depth == 0):
			l.pos += 2
			l.segs = append(l.segs, segment{kind, b.String()})
			return nil
		case c == '\'' || c == '"':
			s, err := l.stringLit(c)
			if err != nil {
				return err
			}
			b.WriteString(quote(s))
			continue
		case c == '{':
			depth++
		case c == '}':
			depth--
		}
		b.WriteByte(c)
		l.pos++
	}
	l.pos = open
	return l.errf("unclosed tag %q", l.src[open:min(open+40, len(l.src))])
}

// stringLit decodes the string literal at l.pos, quoted by q, with
// @huggingface/jinja's escapes.
func (l *lexer) stringLit(q byte) (string, error) {
	l.pos++
	var b strings.Builder
	var pending []uint16 // \u escapes, joined as UTF-16
	flush := func() {
		if len(pending) > 0 {
			b.WriteString(string(utf16.Decode(pending)))
			pending = pending[:0]
		}
	}
	for {
		if l.pos >= len(l.src) {
			return "", l.errf("unterminated string literal")
		}
		c := l.src[l.pos]
		if c == q {
			l.pos++
			flush()
			return b.String(), nil
		}
		if c != '\\' {
			flush()
			b.WriteByte(c)
			l.pos++
			continue
		}
		if l.pos+1 >= len(l.src) {
			return "", l.errf("unterminated string literal")
		}
		e := l.src[l.pos+1]
		l.pos += 2
		if e == 'x' || e == 'u' {
			n := 2
			if e == 'u' {
				n = 4
			}
			if l.pos+n > len(l.src) {
				return "", l.errf("invalid hexadecimal escape sequence")
			}
			v, err := strconv.ParseUint(l.src[l.pos:l.pos+n], 16, 16)
			if err != nil || strings.ContainsAny(l.src[l.pos:l.pos+n], "+-_") {
				return "", l.errf("invalid hexadecimal escape sequence \\%c%s", e, l.src[l.pos:l.pos+n])
			}
			l.pos += n
			pending = append(pending, uint16(v))
			continue
		}
		flush()
		r, ok := map[byte]byte{'n': '\n', 't': '\t', 'r': '\r', 'b': '\b', 'f': '\f', 'v': '\v', '\'': '\'', '"': '"', '\\': '\\'}[e]
		if !ok {
			return "", l.errf("unexpected escaped character %q", e)
		}
		b.WriteByte(r)
	}
}

// quote encodes s as a single-quoted literal the engine decodes back to s.
func quote(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}

// keyword is the first word of a statement.
func keyword(stmt string) string {
	s := strings.TrimLeftFunc(stmt, isSpace)
	i := 0
	for i < len(s) && (s[i] == '_' || s[i] >= 'a' && s[i] <= 'z' || s[i] >= 'A' && s[i] <= 'Z') {
		i++
	}
	return s[:i]
}

// rewrite is src as the engine should compile it (see the top of the file).
func rewrite(src string) (string, error) {
	if strings.Contains(src, guardPrefix) {
		return "", fmt.Errorf("%w: the name prefix %s is reserved", errSyntax, guardPrefix)
	}
	segs, err := lex(preprocess(src))
	if err != nil {
		return "", err
	}
	var b strings.Builder
	for _, s := range segs {
		switch s.kind {
		case segText:
			b.WriteString("{{ " + guardPrefix + "out(" + quote(s.text) + ") }}")
		case segExpr:
			b.WriteString("{{ " + guardPrefix + "out(" + guardOperators(strictTag(s.text, false)) + ") }}")
		case segStmt:
			k := keyword(s.text)
			if k == "endmacro" {
				b.WriteString("{% set " + guardPrefix + "g = " + guardPrefix + "leave() %}")
			}
			b.WriteString("{%" + guardSet(guardOperators(strictTag(s.text, true))) + "%}")
			switch k {
			case "for":
				b.WriteString("{% set " + guardPrefix + "g = " + guardPrefix + "tick() %}")
			case "macro":
				b.WriteString("{% set " + guardPrefix + "g = " + guardPrefix + "enter() %}")
			}
		}
	}
	return b.String(), nil
}

// guardSet wraps the value of {% set ns.attr = value %} in the guard's
// into, which refuses a value that contains ns; other statements are
// returned as they are.
func guardSet(stmt string) string {
	if keyword(stmt) != "set" {
		return stmt
	}
	r := &exprRewriter{s: stmt, toks: exprTokens(stmt)}
	// set NAME . ATTR = value
	if len(r.toks) < 6 || r.word(1) == "" || !r.is(2, ".") || r.word(3) == "" || !r.is(4, "=") {
		return stmt
	}
	ns := r.word(1)
	at := r.toks[4].end
	return stmt[:at] + " " + guardPrefix + "into(" + ns + "," + stmt[at:] + ")"
}

// strictFilters fail on none as Python's Jinja and @huggingface/jinja do,
// where the engine returns an empty value: the check rewrite puts before
// each filter refuses it.
var strictFilters = map[string]bool{
	"length": true, "count": true, "list": true, "join": true, "selectattr": true, "rejectattr": true,
	"select": true, "reject": true, "map": true, "items": true, "first": true, "last": true,
	"sort": true, "unique": true, "reverse": true, "sum": true, "max": true, "min": true,
	"batch": true, "dictsort": true,
}

// replacedFilters are the engine's filters the rewrite renames to
// guardPrefix+name, our own (globals.go), which the engine finds in the
// template's variables.
var replacedFilters = map[string]bool{"tojson": true, "join": true, "replace": true, "indent": true}

// token is a word (identifier or keyword) at bracket depth zero of a
// tag, outside string literals, or a "|" anywhere.
type token struct {
	start, end int
	depth      int
}

// words lists the identifiers of a tag's text (string literals, which the
// lexer wrote with quote, skipped) with their bracket depth.
func words(s string) []token {
	var out []token
	depth := 0
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == '\'':
			i++
			for i < len(s) && s[i] != '\'' {
				if s[i] == '\\' {
					i++
				}
				i++
			}
			i++
		case c == '(' || c == '[' || c == '{':
			depth++
			i++
		case c == ')' || c == ']' || c == '}':
			depth--
			i++
		case c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z':
			j := i
			for j < len(s) && (s[j] == '_' || s[j] >= 'a' && s[j] <= 'z' || s[j] >= 'A' && s[j] <= 'Z' || s[j] >= '0' && s[j] <= '9') {
				j++
			}
			out = append(out, token{i, j, depth})
			i = j
		case c >= '0' && c <= '9': // a number, with its exponent or suffix letters
			for i < len(s) && (s[i] == '.' || s[i] == '_' || s[i] >= '0' && s[i] <= '9' || s[i] >= 'a' && s[i] <= 'z' || s[i] >= 'A' && s[i] <= 'Z') {
				i++
			}
		case c == '|':
			out = append(out, token{i, i + 1, depth})
			i++
		default:
			i++
		}
	}
	return out
}

// strictTag adds the checks of strictFilters and, for a for statement,
// wraps the iterable in the guard's iter (which refuses none).
func strictTag(s string, stmt bool) string {
	ws := words(s)
	type ins struct {
		at   int
		text string
		del  int // bytes replaced at at
	}
	var edits []ins
	for i, w := range ws {
		if s[w.start:w.end] == "|" && i+1 < len(ws) && strings.TrimFunc(s[w.end:ws[i+1].start], isSpace) == "" {
			name := s[ws[i+1].start:ws[i+1].end]
			edits = append(edits, ins{at: w.start, text: "|" + guardPrefix + "f(" + quote(name) + ")"})
			if replacedFilters[name] {
				edits = append(edits, ins{at: ws[i+1].start, text: guardPrefix + name, del: len(name)})
			}
		}
	}
	if stmt && keyword(s) == "for" {
		in := -1
		for i, w := range ws {
			if w.depth == 0 && s[w.start:w.end] == "in" && i > 0 {
				in = i
				break
			}
		}
		if in >= 0 {
			end := len(s)
			for _, w := range ws[in+1:] {
				if w.depth == 0 && (s[w.start:w.end] == "if" || s[w.start:w.end] == "recursive") {
					end = w.start
					break
				}
			}
			edits = append(edits, ins{at: ws[in].end, text: " " + guardPrefix + "iter("}, ins{at: end, text: ")"})
		}
	}
	if len(edits) == 0 {
		return s
	}
	slices.SortStableFunc(edits, func(a, b ins) int { return a.at - b.at })
	var b strings.Builder
	last := 0
	for _, e := range edits {
		b.WriteString(s[last:e.at])
		b.WriteString(e.text)
		last = e.at + e.del
	}
	b.WriteString(s[last:])
	return b.String()
}
