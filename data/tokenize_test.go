package data

import (
	"errors"
	"sort"
	"strings"
	"testing"
)

// toyEnc is a byte-level encoder: BOS 1, EOS 2, byte c is c+3, plus optional
// multi-byte pieces (greedy longest match, ids from 300) and a
// SentencePiece-like dummy-prefix space.
type toyEnc struct {
	pieces []string // matched longest first
	prefix bool
	calls  int
}

const toyBOS, toyEOS = 1, 2

func (e *toyEnc) BOS() int { return toyBOS }
func (e *toyEnc) EOS() int { return toyEOS }

func (e *toyEnc) Encode(s string, bos bool) []int {
	e.calls++
	var out []int
	if bos {
		out = append(out, toyBOS)
	}
	if s == "" {
		return out
	}
	if e.prefix {
		s = " " + s
	}
	ps := append([]string(nil), e.pieces...)
	sort.SliceStable(ps, func(i, j int) bool { return len(ps[i]) > len(ps[j]) })
outer:
	for i := 0; i < len(s); {
		for _, p := range ps {
			if strings.HasPrefix(s[i:], p) {
				out = append(out, e.pieceID(p))
				i += len(p)
				continue outer
			}
		}
		out = append(out, int(s[i])+3)
		i++
	}
	return out
}

// EncodeSpecial parses "</s>" as EOS and encodes the text between.
func (e *toyEnc) EncodeSpecial(s string, bos bool) []int {
	out := e.Encode("", bos)
	for i, f := range strings.Split(s, "</s>") {
		if i > 0 {
			out = append(out, toyEOS)
		}
		if f != "" {
			out = append(out, e.Encode(f, false)...)
		}
	}
	return out
}

func (e *toyEnc) EOG() []int { return []int{toyEOS} }

func (e *toyEnc) Token(id int) string {
	if id == toyEOS {
		return "</s>"
	}
	return ""
}

func (e *toyEnc) pieceID(p string) int {
	for i, q := range e.pieces {
		if q == p {
			return 300 + i
		}
	}
	panic(p)
}

// toySpecial adds a TokenID lookup of special markers (ids from 500).
type toySpecial struct {
	toyEnc
	specials []string
}

func (e *toySpecial) TokenID(s string) (int, bool) {
	for i, q := range e.specials {
		if q == s {
			return 500 + i, true
		}
	}
	return 0, false
}

// show renders an example for reading: ⟨BOS⟩ ⟨EOS⟩ ⟨special⟩, text for bytes
// and pieces, and «…» around runs of targets.
func show(enc Encoder, ex Example) string {
	var sb strings.Builder
	in := false
	for i, t := range ex.Tokens {
		if ex.Loss[i] != in {
			if in {
				sb.WriteString("»")
			} else {
				sb.WriteString("«")
			}
			in = ex.Loss[i]
		}
		switch {
		case t == toyBOS:
			sb.WriteString("⟨BOS⟩")
		case t == toyEOS:
			sb.WriteString("⟨EOS⟩")
		case t >= 500:
			sb.WriteString("⟨" + enc.(*toySpecial).specials[t-500] + "⟩")
		case t >= 300:
			var te *toyEnc
			switch e := enc.(type) {
			case *toyEnc:
				te = e
			case *toySpecial:
				te = &e.toyEnc
			}
			sb.WriteString("{" + te.pieces[t-300] + "}")
		default:
			sb.WriteByte(byte(t - 3))
		}
	}
	if in {
		sb.WriteString("»")
	}
	return sb.String()
}

func tokenizeOne(t *testing.T, enc Encoder, r Record, kind Kind, o TokenizeOptions) Example {
	t.Helper()
	ex, err := Tokenize(enc, []Record{r}, kind, o)
	if err != nil {
		t.Fatal(err)
	}
	e := ex[0]
	if len(e.Loss) != len(e.Tokens) || (len(e.Loss) > 0 && e.Loss[0]) {
		t.Fatalf("bad mask %v for %v", e.Loss, e.Tokens)
	}
	return e
}

func TestTokenizeText(t *testing.T) {
	enc := &toyEnc{}
	e := tokenizeOne(t, enc, Record{Text: "hi"}, Text, TokenizeOptions{})
	if got := e.Tokens; len(got) != 3 || got[0] != 1 || got[1] != 'h'+3 || got[2] != 'i'+3 {
		t.Fatalf("tokens %v", got)
	}
	for _, c := range []struct {
		o    TokenizeOptions
		want string
	}{
		{TokenizeOptions{}, "⟨BOS⟩«hi»"},
		{TokenizeOptions{AddEOS: true}, "⟨BOS⟩«hi⟨EOS⟩»"},
		{TokenizeOptions{NoBOS: true}, "h«i»"},
		{TokenizeOptions{NoBOS: true, AddEOS: true}, "h«i⟨EOS⟩»"},
	} {
		if got := show(enc, tokenizeOne(t, enc, Record{Text: "hi"}, Text, c.o)); got != c.want {
			t.Errorf("%+v: %s, want %s", c.o, got, c.want)
		}
	}
	// An empty text is BOS (and EOS) alone; EOS after BOS is a target.
	if got := show(enc, tokenizeOne(t, enc, Record{Text: ""}, Text, TokenizeOptions{AddEOS: true})); got != "⟨BOS⟩«⟨EOS⟩»" {
		t.Errorf("empty text: %s", got)
	}
}

func TestTokenizeCompletionBoundary(t *testing.T) {
	// "ab" is one piece: the prompt "xa" alone ends in "a", but the whole
	// text tokenizes as x{ab}; the straddling piece is a target.
	enc := &toyEnc{pieces: []string{"ab", " g"}}
	for _, c := range []struct {
		p, c string
		o    TokenizeOptions
		want string
	}{
		{"xa", "b", TokenizeOptions{}, "⟨BOS⟩x«{ab}»"},
		{"xy", "ab", TokenizeOptions{AddEOS: true}, "⟨BOS⟩xy«{ab}⟨EOS⟩»"},
		{"It was", " good", TokenizeOptions{}, "⟨BOS⟩It was«{ g}ood»"},
		{"p", "", TokenizeOptions{}, "⟨BOS⟩p"},
		{"", "ab", TokenizeOptions{NoBOS: true}, "{ab}"}, // the first token is never a target
	} {
		got := show(enc, tokenizeOne(t, enc, Record{Prompt: c.p, Completion: c.c}, Completion, c.o))
		if got != c.want {
			t.Errorf("%q+%q: %s, want %s", c.p, c.c, got, c.want)
		}
	}
}

func TestTokenizeClassification(t *testing.T) {
	enc := &toyEnc{}
	r := Record{Prompt: "fun It was", Choices: []string{" terrible", " great"}, Label: 1}
	if got := show(enc, tokenizeOne(t, enc, r, Classification, TokenizeOptions{})); got != "⟨BOS⟩fun It was« great»" {
		t.Errorf("got %s", got)
	}
	cands, err := TokenizeCandidates(enc, r, TokenizeOptions{})
	if err != nil || len(cands) != 2 {
		t.Fatal(err, len(cands))
	}
	if a, b := show(enc, cands[0]), show(enc, cands[1]); a != "⟨BOS⟩fun It was« terrible»" || b != "⟨BOS⟩fun It was« great»" {
		t.Errorf("candidates %s, %s", a, b)
	}
	if _, err := TokenizeCandidates(enc, Record{Prompt: "x"}, TokenizeOptions{}); !errors.Is(err, ErrData) {
		t.Errorf("no choices: %v", err)
	}
}

func TestTokenizeErrors(t *testing.T) {
	enc := &toyEnc{}
	for _, c := range []struct {
		ok, r Record
		kind  Kind
	}{
		{Record{Messages: []Message{{Role: "user", Content: "x"}}}, Record{Text: "x"}, Chat},
		{Record{Prompt: "x", Choices: []string{"a", "b"}, Label: 1}, Record{Prompt: "x", Choices: []string{"a", "b"}, Label: 2}, Classification},
		{Record{Text: "x"}, Record{Text: "x"}, Kind(9)},
	} {
		want := "record 2"
		if c.kind == Kind(9) {
			want = "record 1"
		}
		_, err := Tokenize(enc, []Record{c.ok, c.r}, c.kind, TokenizeOptions{Template: renderFunc(plainChat)})
		if !errors.Is(err, ErrData) || !strings.Contains(err.Error(), want) {
			t.Errorf("%+v as %s: %v", c.r, c.kind, err)
		}
	}
}

// With a dummy-prefix encoder every text run between special tokens gets
// its own leading space (as SentencePiece/Hugging Face "legacy" tokenization
// of a rendered template does), and pieces that straddle a turn boundary go
// to the later part.
func TestTokenizeChatRunsAndJoins(t *testing.T) {
	enc := &toyEnc{prefix: true, pieces: []string{"\nA", ": y"}}
	got := show(enc, tokenizeOne(t, enc, Record{Messages: []Message{{Role: "user", Content: "x"}, {Role: "assistant", Content: "y"}}}, Chat, TokenizeOptions{Template: renderFunc(plainChat)}))
	// " User: x" then "\nA" is one piece across the end of the user turn
	// (not a target: it belongs to "Assistant:"), ": y" straddles the start
	// of the reply (a target, with the EOS closing the turn), the "\n" after
	// it (its own run, so with its own space) is not.
	if want := "⟨BOS⟩ User: x{\nA}ssistant«{: y}⟨EOS⟩» \n"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

// plainChat renders as train.DefaultChatTemplate does, with "</s>" as EOS.
func plainChat(msgs []Message, gen bool) (string, error) {
	var sb strings.Builder
	for _, m := range msgs {
		switch m.Role {
		case "system":
			sb.WriteString("System: " + m.Content + "\n")
		case "user":
			sb.WriteString("User: " + m.Content + "\n")
		case "assistant":
			sb.WriteString("Assistant: " + m.Content + "</s>\n")
		}
	}
	if gen {
		sb.WriteString("Assistant:")
	}
	return sb.String(), nil
}
