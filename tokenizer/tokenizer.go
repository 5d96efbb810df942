package tokenizer

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"
)

// Kind is the tokenization algorithm of a vocabulary.
type Kind int

const (
	// SPM is SentencePiece-style BPE: score-ordered merges over code points,
	// dummy-prefix space, "▁" for spaces, <0xNN> byte fallback.
	SPM Kind = iota
	// BPE is byte-level BPE (GPT-2 style): pre-tokenizer, byte-to-unicode
	// mapping, rank-ordered merges.
	BPE
)

func (k Kind) String() string {
	switch k {
	case SPM:
		return "spm"
	case BPE:
		return "bpe"
	}
	return "Kind(" + strconv.Itoa(int(k)) + ")"
}

// Token types, as in GGUF tokenizer.ggml.token_type and SentencePiece piece
// types. Vocab.Types may hold 0 for "not given", read as TypeNormal.
const (
	TypeNormal      = 1
	TypeUnknown     = 2
	TypeControl     = 3
	TypeUserDefined = 4
	TypeUnused      = 5
	TypeByte        = 6
)

// Errors the package wraps; branch on them with errors.Is.
var (
	// ErrNoTokenizer: the file or folder holds no tokenizer.
	ErrNoTokenizer = errors.New("tokenizer: no tokenizer found")
	// ErrFormat: a tokenizer file is malformed.
	ErrFormat = errors.New("tokenizer: malformed file")
	// ErrInvalid: a vocabulary is inconsistent (ids out of range, unknown
	// merge parts, ...).
	ErrInvalid = errors.New("tokenizer: invalid vocabulary")
	// ErrUnsupported: a well-formed tokenizer this package does not implement
	// (Unigram, WordPiece, an unknown pre-tokenizer, ...).
	ErrUnsupported = errors.New("tokenizer: unsupported")
)

// Vocab is everything a Tokenizer needs, in the GGUF vocabulary's terms.
// Pieces of an SPM vocabulary spell spaces as "▁" (U+2581).
//
// SPM merges only into normal and user-defined pieces (as SentencePiece
// does: control, unknown, unused and byte pieces are never produced from
// text); "<0xNN>" byte pieces are the fallback for anything else. BPE merges
// follow Merges; Scores are not used. When Types is nil they are inferred:
// BOS, EOS and PAD are control tokens, UNK is unknown, and for SPM "<0xNN>"
// pieces are bytes. When two tokens share a text, the lower id wins.
type Vocab struct {
	// RStripSpecial: whitespace after a special token is dropped when
	// special text is parsed (EncodeSpecial), except after <unk>, <s> and
	// <|endoftext|> (llama.cpp's rule for Phi-3, by model name).
	RStripSpecial bool
	Kind          Kind
	Tokens        []string  // (V) token text; for BPE in byte-mapped form (Ġ for space)
	Scores        []float32 // (V) SPM merge scores, higher merges first; may be nil
	Types         []int32   // (V) 1 normal 2 unknown 3 control 4 user-defined 5 unused 6 byte; may be nil
	Merges        []string  // BPE merges "a b", highest priority first
	// Special ids, -1 when absent.
	BOS, EOS, UNK, PAD int
	// EOG lists further ids the file declares as ending generation (GGUF
	// eot/eom/fim ids, generation_config.json's eos_token_id); Tokenizer.EOG
	// adds EOS and the tokens llama.cpp recognises by their text.
	EOG []int `json:",omitempty"`
	// AddBOS and AddEOS record whether the model expects BOS/EOS around a
	// sequence (GGUF add_bos_token / add_eos_token); Encode only looks at its
	// addBOS argument.
	AddBOS, AddEOS bool
	// AddSpacePrefix prepends a space to non-empty text (SentencePiece's
	// dummy prefix); Decode strips it again.
	AddSpacePrefix bool
	// Pre names the BPE pre-tokenizer (GGUF tokenizer.ggml.pre): "gpt-2"
	// (default), "llama-bpe"/"llama3", "qwen2", "smollm" and their aliases.
	Pre          string
	ChatTemplate string
}

type merge struct {
	rank int32
	id   int32
}

// Tokenizer encodes text to ids and decodes ids to text. It is immutable
// after New and safe for concurrent use.
type Tokenizer struct {
	v      Vocab
	types  []int32   // (V) resolved types, never nil
	scores []float32 // (V) never nil for SPM
	pieces map[string]int32
	// byteTok: SPM <0xNN> token of each byte; BPE token of each byte's
	// mapped code point. -1 when absent.
	byteTok      [256]int32
	merges       map[uint64]merge // BPE: (left id, right id) -> merge
	pre          preKind
	ignoreMerges bool
	user         map[byte][]string // user-defined token texts by first byte, longest first
	removeExtra  bool              // SentencePiece remove_extra_whitespace
	spaceSplit   bool              // SPM: no piece has "▁" after another characters
	text         []string          // (V) decoded text of each token
	special      map[string]int32  // control and user-defined tokens by text
	eog          []int             // end-of-generation ids, ascending
	raw          bool              // BPE over raw UTF-8, spaces as "▁" (gemma4), not byte-mapped
	specialOnce  sync.Once
	specialList  []specialText // special by length, longest first (EncodeSpecial)
}

// New checks v and builds a Tokenizer. The slices of v are copied.
func New(v Vocab) (*Tokenizer, error) {
	return build(v, options{})
}

type options struct {
	removeExtraWhitespace bool
}

func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...)
}

func build(v Vocab, o options) (*Tokenizer, error) {
	n := len(v.Tokens)
	if n == 0 {
		return nil, invalidf("empty vocabulary")
	}
	if n > math.MaxInt32 {
		return nil, invalidf("%d tokens", n)
	}
	if v.Kind != SPM && v.Kind != BPE {
		return nil, invalidf("kind %d", int(v.Kind))
	}
	if v.Scores != nil && len(v.Scores) != n {
		return nil, invalidf("%d scores for %d tokens", len(v.Scores), n)
	}
	if v.Types != nil && len(v.Types) != n {
		return nil, invalidf("%d token types for %d tokens", len(v.Types), n)
	}
	for _, s := range []struct {
		name string
		id   int
	}{{"BOS", v.BOS}, {"EOS", v.EOS}, {"UNK", v.UNK}, {"PAD", v.PAD}} {
		if s.id < -1 || s.id >= n {
			return nil, invalidf("%s id %d outside [-1, %d)", s.name, s.id, n)
		}
	}
	v.Tokens = append([]string(nil), v.Tokens...)
	v.Merges = append([]string(nil), v.Merges...)
	t := &Tokenizer{removeExtra: o.removeExtraWhitespace}

	// Types: given, or inferred from the specials and the byte pieces.
	t.types = make([]int32, n)
	if v.Types != nil {
		for i, ty := range v.Types {
			if ty < 0 || ty > TypeByte {
				return nil, invalidf("token %d: type %d", i, ty)
			}
			if ty == 0 {
				ty = TypeNormal
			}
			t.types[i] = ty
		}
	} else {
		for i, s := range v.Tokens {
			t.types[i] = TypeNormal
			if _, ok := parseByteToken(s); ok && v.Kind == SPM {
				t.types[i] = TypeByte
			}
		}
		for _, id := range []int{v.BOS, v.EOS, v.PAD} {
			if id >= 0 {
				t.types[id] = TypeControl
			}
		}
		if v.UNK >= 0 {
			t.types[v.UNK] = TypeUnknown
		}
	}
	// llama.cpp makes the end-of-generation and FIM tokens it finds by
	// text control tokens, whatever the file says ("control-looking token
	// ... its type will be overridden"): they are then parsed only as
	// special text, never matched as user-defined pieces in plain text.
	has := map[string]int{}
	for i, s := range v.Tokens {
		if EOGText(s) || slices.Contains(fimControlTexts, s) {
			t.types[i] = TypeControl
			if _, dup := has[s]; !dup {
				has[s] = i
			}
		}
	}
	// ... and then takes two back (see eogIDs): "<|end|>" becomes
	// user-defined for harmony/solar-open vocabularies, "</s>" normal text
	// where "<|tool_response>" exists (Gemma 4).
	_, ret := has["<|return|>"]
	_, call := has["<|call|>"]
	_, calls := has["<|calls|>"]
	_, flush := has["<|flush|>"]
	if end, ok := has["<|end|>"]; ok && ((ret && (call || calls)) || ((call || calls) && flush)) {
		t.types[end] = TypeUserDefined
	}
	if s, ok := has["</s>"]; ok {
		if _, tr := has["<|tool_response>"]; tr {
			t.types[s] = TypeNormal
		}
	}
	v.Types = t.types

	t.scores = make([]float32, n)
	if v.Scores != nil {
		for i, s := range v.Scores {
			if s != s { // NaN would break the heap order
				s = float32(math.Inf(-1))
			}
			t.scores[i] = s
		}
	}
	v.Scores = t.scores
	for i := range t.byteTok {
		t.byteTok[i] = -1
	}

	t.pieces = make(map[string]int32, n)
	t.user = map[byte][]string{}
	t.special = map[string]int32{}
	for i, s := range v.Tokens {
		if ty := t.types[i]; (ty == TypeControl || ty == TypeUserDefined) && s != "" {
			if _, dup := t.special[s]; !dup {
				t.special[s] = int32(i)
			}
		}
	}
	switch v.Kind {
	case SPM:
		for i, s := range v.Tokens {
			switch t.types[i] {
			case TypeNormal, TypeUserDefined:
				if _, dup := t.pieces[s]; !dup && s != "" {
					t.pieces[s] = int32(i)
				}
			case TypeByte:
				if b, ok := parseByteToken(s); ok && t.byteTok[b] < 0 {
					t.byteTok[b] = int32(i)
				}
			}
		}
	case BPE:
		pre, ignore, ok := preFromName(v.Pre)
		if !ok {
			return nil, fmt.Errorf("%w: BPE pre-tokenizer %q", ErrUnsupported, v.Pre)
		}
		t.pre, t.ignoreMerges = pre, ignore
		for i, s := range v.Tokens {
			if _, dup := t.pieces[s]; !dup && s != "" {
				t.pieces[s] = int32(i)
			}
		}
		t.raw = pre == preGemma4
		for b := 0; b < 256; b++ {
			key := string(byteToRune[b])
			if t.raw { // byte tokens are written <0xXX> (llama.cpp's gemma4 fallback)
				key = fmt.Sprintf("<0x%02X>", b)
			}
			if id, ok := t.pieces[key]; ok {
				t.byteTok[b] = id
			}
		}
		t.merges = make(map[uint64]merge, len(v.Merges))
		for r, m := range v.Merges {
			sp := -1
			if len(m) > 1 {
				sp = strings.IndexByte(m[1:], ' ')
			}
			if sp < 0 {
				return nil, invalidf("merge %d %q: no space", r, m)
			}
			a, b := m[:sp+1], m[sp+2:]
			ia, oka := t.pieces[a]
			ib, okb := t.pieces[b]
			ic, okc := t.pieces[a+b]
			if !oka || !okb || !okc {
				return nil, invalidf("merge %d %q: token %q, %q or %q not in the vocabulary", r, m, a, b, a+b)
			}
			key := uint64(uint32(ia))<<32 | uint64(uint32(ib))
			if _, dup := t.merges[key]; !dup {
				t.merges[key] = merge{rank: int32(r), id: ic}
			}
		}
	}
	if v.Kind == SPM {
		t.spaceSplit = true
		for s := range t.pieces {
			if innerSpace(s) {
				t.spaceSplit = false
				break
			}
		}
	}
	for i, s := range v.Tokens {
		if t.types[i] == TypeUserDefined && s != "" {
			t.user[s[0]] = append(t.user[s[0]], s)
		}
	}
	for k, l := range t.user {
		sortLongestFirst(l)
		t.user[k] = l
	}

	t.text = make([]string, n)
	for i, s := range v.Tokens {
		switch t.types[i] {
		case TypeControl:
			t.text[i] = ""
		case TypeByte:
			if b, ok := parseByteToken(s); ok {
				t.text[i] = string([]byte{b})
			} else {
				t.text[i] = s
			}
		case TypeUserDefined:
			t.text[i] = s
			if v.Kind == SPM {
				t.text[i] = strings.ReplaceAll(s, "▁", " ")
			}
		default:
			if v.Kind == SPM || t.raw {
				t.text[i] = strings.ReplaceAll(s, "▁", " ")
			} else {
				t.text[i] = unmapBytes(s)
			}
		}
	}
	t.eog = eogIDs(&v)
	t.v = v
	return t, nil
}

// innerSpace reports whether s has a "▁" right after another character.
func innerSpace(s string) bool {
	for i := 1; i < len(s); i++ {
		if strings.HasPrefix(s[i:], "▁") && !strings.HasSuffix(s[:i], "▁") {
			return true
		}
	}
	return false
}

func sortLongestFirst(l []string) {
	// insertion sort: user-defined lists are short
	for i := 1; i < len(l); i++ {
		for j := i; j > 0 && len(l[j]) > len(l[j-1]); j-- {
			l[j], l[j-1] = l[j-1], l[j]
		}
	}
}

// parseByteToken reads a "<0xNN>" piece.
func parseByteToken(s string) (byte, bool) {
	if len(s) != 6 || s[0] != '<' || s[1] != '0' || s[2] != 'x' || s[5] != '>' {
		return 0, false
	}
	hi, ok1 := hexDigit(s[3])
	lo, ok2 := hexDigit(s[4])
	return hi<<4 | lo, ok1 && ok2
}

func hexDigit(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}

// VocabSize returns the number of tokens (V).
func (t *Tokenizer) VocabSize() int { return len(t.v.Tokens) }

// BOS returns the beginning-of-sequence id, -1 when absent.
func (t *Tokenizer) BOS() int { return t.v.BOS }

// EOS returns the end-of-sequence id, -1 when absent.
func (t *Tokenizer) EOS() int { return t.v.EOS }

// UNK returns the unknown-token id, -1 when absent.
func (t *Tokenizer) UNK() int { return t.v.UNK }

// PAD returns the padding id, -1 when absent.
func (t *Tokenizer) PAD() int { return t.v.PAD }

// AddBOS reports whether the model expects a BOS token first.
func (t *Tokenizer) AddBOS() bool { return t.v.AddBOS }

// AddEOS reports whether the model expects an EOS token last.
func (t *Tokenizer) AddEOS() bool { return t.v.AddEOS }

// Kind returns the algorithm.
func (t *Tokenizer) Kind() Kind { return t.v.Kind }

// ChatTemplate returns the Jinja chat template, "" when absent.
func (t *Tokenizer) ChatTemplate() string { return t.v.ChatTemplate }

// Token returns the raw vocabulary text of id ("" when out of range).
func (t *Tokenizer) Token(id int) string {
	if id < 0 || id >= len(t.v.Tokens) {
		return ""
	}
	return t.v.Tokens[id]
}

// Type returns the token type of id (0 when out of range).
func (t *Tokenizer) Type(id int) int {
	if id < 0 || id >= len(t.types) {
		return 0
	}
	return int(t.types[id])
}

// Vocab returns a copy of the vocabulary, with Types and Scores filled in.
func (t *Tokenizer) Vocab() Vocab {
	v := t.v
	v.Tokens = append([]string(nil), v.Tokens...)
	v.Scores = append([]float32(nil), v.Scores...)
	v.Types = append([]int32(nil), v.Types...)
	v.Merges = append([]string(nil), v.Merges...)
	v.EOG = append([]int(nil), v.EOG...)
	return v
}

// Piece returns the text of one token, for streaming output: "▁" as a
// space, byte-level BPE bytes unmapped, a byte token as its single raw byte
// (which may be part of a UTF-8 sequence the caller must buffer), control
// tokens as "", other tokens (the unknown token included) as their text.
// Out-of-range ids give "". Unlike Decode, Piece keeps the dummy-prefix
// space: " Once".
func (t *Tokenizer) Piece(id int) string {
	if id < 0 || id >= len(t.text) {
		return ""
	}
	return t.text[id]
}

// Decode concatenates the pieces of ids (see Piece), skipping ids out of
// range, and drops one space at the start when the vocabulary adds a dummy
// prefix (as SentencePiece and Hugging Face do), so that
// Decode(Encode(s, bos)) == s; for SPM a "▁" in s comes back as a space.
// Decode is meant for whole sequences: decoding a continuation on its own
// loses its first space (use Piece to stream). Byte tokens are joined into
// their UTF-8 sequences; an incomplete sequence stays as raw bytes.
func (t *Tokenizer) Decode(ids []int) string {
	var b strings.Builder
	for _, id := range ids {
		b.WriteString(t.Piece(id))
	}
	s := b.String()
	if t.v.AddSpacePrefix && strings.HasPrefix(s, " ") {
		s = s[1:]
	}
	return s
}

// Encode returns the ids of text, with BOS first when addBOS is set and the
// vocabulary has one. Special tokens written in the text are encoded as
// plain text. Any byte string is accepted; invalid UTF-8 falls back to byte
// tokens (SPM) or byte symbols (BPE).
func (t *Tokenizer) Encode(text string, addBOS bool) []int {
	out := make([]int, 0, len(text)/3+2)
	if addBOS && t.v.BOS >= 0 {
		out = append(out, t.v.BOS)
	}
	if text == "" {
		return out
	}
	var m merger
	return t.encodeText(&m, text, out)
}

// longPiece bounds the text one encoding pass sees: the merge loop holds a
// few dozen bytes per character, so a 50 MB record encoded whole took
// gigabytes. Longer texts are encoded in pieces cut where pre-tokenizers
// cut anyway (after a run of newlines, else before a space), each after the
// first without the dummy space prefix; only a piece with neither in its
// last half is cut between characters, where the tokens may differ from a
// whole encoding.
const longPiece = 1 << 20

func (t *Tokenizer) encodeText(m *merger, text string, out []int) []int {
	prefix := true
	for len(text) > longPiece {
		cut := pieceCut(text, longPiece)
		out = t.encodeOne(m, text[:cut], out, prefix)
		text, prefix = text[cut:], false
	}
	return t.encodeOne(m, text, out, prefix)
}

func (t *Tokenizer) encodeOne(m *merger, text string, out []int, prefix bool) []int {
	if t.v.Kind == SPM {
		return t.encodeSPM(m, text, out, prefix)
	}
	return t.encodeBPE(m, text, out, prefix)
}

// pieceCut returns where to end the first piece of text (len(text) > n):
// after a run of newlines followed by a non-space, else before a space that
// follows a non-space, else at a character boundary, at most n bytes in.
func pieceCut(text string, n int) int {
	for i := n; i > n/2; i-- {
		if text[i-1] == '\n' && !isSpaceByte(text[i]) {
			return i
		}
	}
	for i := n; i > n/2; i-- {
		if text[i] == ' ' && !isSpaceByte(text[i-1]) {
			return i
		}
	}
	i := n
	for i > 0 && !utf8.RuneStart(text[i]) {
		i--
	}
	if i == 0 {
		return n
	}
	return i
}

func isSpaceByte(c byte) bool { return c == ' ' || c == '\n' || c == '\r' || c == '\t' }

// userMatch returns the length of the longest user-defined token at the
// start of s, 0 when none.
func (t *Tokenizer) userMatch(s string) int {
	if len(t.user) == 0 || s == "" {
		return 0
	}
	for _, u := range t.user[s[0]] {
		if strings.HasPrefix(s, u) {
			return len(u)
		}
	}
	return 0
}

// fallback appends the tokens for a symbol that is not a token: its byte
// tokens when the vocabulary has all of them, else one UNK token (as
// SentencePiece does), else nothing.
func (t *Tokenizer) fallback(out []int, s string) []int {
	for i := 0; i < len(s); i++ {
		if t.byteTok[s[i]] < 0 {
			if t.v.UNK >= 0 {
				out = append(out, t.v.UNK)
			}
			return out
		}
	}
	for i := 0; i < len(s); i++ {
		out = append(out, int(t.byteTok[s[i]]))
	}
	return out
}

// TokenID returns the id of the control or user-defined token whose text is
// exactly s ("<|im_start|>", "<|eot_id|>"), for chat templates that write
// special tokens; ordinary pieces and unknown strings give false.
func (t *Tokenizer) TokenID(s string) (int, bool) {
	id, ok := t.special[s]
	return int(id), ok
}
