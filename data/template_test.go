package data

import (
	"errors"
	"strings"
	"testing"
)

// runeEncoder encodes one id per rune; the texts in specials become their
// ids (1000+) when parsed.
type runeEncoder struct{ specials []string }

func (e runeEncoder) Encode(s string, addBOS bool) []int {
	var out []int
	if addBOS {
		out = append(out, e.BOS())
	}
	for _, r := range s {
		out = append(out, int(r))
	}
	return out
}

func (e runeEncoder) EncodeSpecial(s string, addBOS bool) []int {
	out := e.Encode("", addBOS)
	for len(s) > 0 {
		hit := false
		for i, sp := range e.specials {
			if strings.HasPrefix(s, sp) {
				out, s, hit = append(out, 1000+i), s[len(sp):], true
				break
			}
		}
		if !hit {
			r := []rune(s)[0]
			out = append(out, int(r))
			s = s[len(string(r)):]
		}
	}
	return out
}

func (e runeEncoder) BOS() int   { return 1000 }
func (e runeEncoder) EOS() int   { return 1001 }
func (e runeEncoder) EOG() []int { return []int{1001, 1002} }
func (e runeEncoder) Token(id int) string {
	if id >= 1000 && id-1000 < len(e.specials) {
		return e.specials[id-1000]
	}
	return string(rune(id))
}

var chatSpecials = []string{"<s>", "</s>", "<|im_end|>", "<|im_start|>"}

// renderFunc adapts a function to Renderer.
type renderFunc func(msgs []Message, gen bool) (string, error)

func (f renderFunc) Render(msgs []Message, gen bool) (string, error) { return f(msgs, gen) }

func chatml(msgs []Message, gen bool) (string, error) {
	var b strings.Builder
	for _, m := range msgs {
		b.WriteString("<|im_start|>" + m.Role + "\n" + m.Content + "<|im_end|>\n")
	}
	if gen {
		b.WriteString("<|im_start|>assistant\n")
	}
	return b.String(), nil
}

// targets returns the text of the target tokens, runs joined by "|".
func targets(e runeEncoder, ex Example) string {
	var runs []string
	for i, id := range ex.Tokens {
		if ex.Loss[i] {
			if i == 0 || !ex.Loss[i-1] {
				runs = append(runs, "")
			}
			runs[len(runs)-1] += e.Token(int(id))
		}
	}
	return strings.Join(runs, "|")
}

var convo = []Message{
	{"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello!"},
	{"user", "Bye é"}, {"assistant", "Ciao"},
}

func TestTemplateChatTargets(t *testing.T) {
	e := runeEncoder{chatSpecials}
	ex, err := templateChat(e, convo, TokenizeOptions{Template: renderFunc(chatml)})
	if err != nil {
		t.Fatal(err)
	}
	// The assistant contents with the turn end, never headers or the "\n" after.
	if got, want := targets(e, ex), "Hello!<|im_end|>|Ciao<|im_end|>"; got != want {
		t.Fatalf("targets %q, want %q", got, want)
	}
	if ex.Tokens[0] != 1000 || ex.Loss[0] {
		t.Fatalf("want one leading BOS, not a target: %v", ex.Tokens[:3])
	}
	// AddEOS appends an EOS the template did not write: never a target.
	ex, err = templateChat(e, convo, TokenizeOptions{Template: renderFunc(chatml), AddEOS: true, NoBOS: true})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(ex.Tokens); ex.Tokens[0] == 1000 || ex.Tokens[n-1] != 1001 || ex.Loss[n-1] {
		t.Fatalf("NoBOS/AddEOS: first %d, last %d target %v", ex.Tokens[0], ex.Tokens[n-1], ex.Loss[n-1])
	}
}

// A template that writes BOS itself gets it once; one that writes no turn
// end trains up to the end of the turn's rendering.
func TestTemplateChatBOSAndNoTurnEnd(t *testing.T) {
	e := runeEncoder{chatSpecials}
	plain := func(msgs []Message, gen bool) (string, error) {
		s := "<s>"
		for _, m := range msgs {
			s += m.Role + ": " + m.Content + "\n"
		}
		if gen {
			s += "assistant: "
		}
		return s, nil
	}
	ex, err := templateChat(e, convo, TokenizeOptions{Template: renderFunc(plain)})
	if err != nil {
		t.Fatal(err)
	}
	if ex.Tokens[0] != 1000 || ex.Tokens[1] == 1000 {
		t.Fatalf("BOS written by the template must appear once: %v", ex.Tokens[:3])
	}
	if got, want := targets(e, ex), "Hello!\n|Ciao\n"; got != want {
		t.Fatalf("targets %q, want %q", got, want)
	}
}

// A template that rewrites earlier turns once later ones exist: the turn is
// found by its content; a turn that cannot be found is an error.
func TestTemplateChatRewritingTemplate(t *testing.T) {
	e := runeEncoder{chatSpecials}
	think := func(msgs []Message, gen bool) (string, error) {
		s, _ := chatml(msgs, gen)
		if gen { // a partial rendering marks the history differently
			s = "#" + s
		}
		return s, nil
	}
	ex, err := templateChat(e, convo, TokenizeOptions{Template: renderFunc(think)})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := targets(e, ex), "Hello!<|im_end|>|Ciao<|im_end|>"; got != want {
		t.Fatalf("targets %q, want %q", got, want)
	}
	hide := func(msgs []Message, gen bool) (string, error) {
		if gen {
			return "#", nil
		}
		return "<|im_start|>everything<|im_end|>", nil
	}
	if _, err := templateChat(e, convo, TokenizeOptions{Template: renderFunc(hide)}); !errors.Is(err, ErrData) {
		t.Fatalf("a turn that cannot be found: %v", err)
	}
	bad := func([]Message, bool) (string, error) { return "", errors.New("chat: template x: raise_exception") }
	if _, err := Tokenize(e, []Record{{Messages: convo}}, Chat, TokenizeOptions{Template: renderFunc(bad)}); err == nil || !strings.Contains(err.Error(), "raise_exception") {
		t.Fatalf("a failing template: %v", err)
	}
}
