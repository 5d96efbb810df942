package data

import (
	"errors"
	"strings"
	"testing"
)

// A caller branches on where bad data is: every parse error of a file and
// every record that does not tokenize is a *Error naming the file and the
// line (blank lines counted), and wraps ErrData.
func TestDataErrorsNameFileAndLine(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		name, content string
		line          int
		msg           string
	}{
		{"bad-json.jsonl", "{\"text\":\"a\"}\n\n{\"text\":\n", 3, "unexpected end of JSON"},
		{"mixed.jsonl", "{\"text\":\"a\"}\n{\"prompt\":\"p\",\"completion\":\"c\"}\n", 2, "completion record in a text file"},
		{"no-prompt.jsonl", "\n{\"choices\":[\"a\",\"b\"],\"label\":0}\n", 2, "without \"prompt\""},
		{"empty.txt", "", 0, "empty file"},
	} {
		p := writeData(t, dir, c.name, c.content)
		_, _, err := Load(p)
		var de *Error
		if !errors.As(err, &de) || !errors.Is(err, ErrData) {
			t.Errorf("%s: %v: want a *data.Error wrapping ErrData", c.name, err)
			continue
		}
		if de.File != p || de.Line != c.line || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: file %q line %d (%v), want %q line %d naming %q", c.name, de.File, de.Line, err, p, c.line, c.msg)
		}
	}

	// Records that parse but cannot be tokenized (chat without a template),
	// the first on line 2, after a blank one: through the token cache and
	// through Tokenize.
	chat := "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}\n"
	p := writeData(t, dir, "chat.jsonl", "\n"+chat+"\n"+chat)
	_, _, err := CachedTokenFile(t.TempDir(), CacheKey{Tokenizer: "t", Name: "chat"}, &toyEnc{}, p, TokenizeOptions{})
	var de *Error
	if !errors.As(err, &de) || de.File != p || de.Line != 2 || de.Record != 1 || !errors.Is(err, ErrData) {
		t.Fatalf("cache: %v (%+v): want file %s line 2, record 1, ErrData", err, de, p)
	}
	if !strings.Contains(err.Error(), p+": line 2: ") {
		t.Errorf("message %q does not name the file and line", err)
	}
	recs, kind, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Tokenize(&toyEnc{}, recs, kind, TokenizeOptions{})
	if !errors.As(err, &de) || de.Line != 2 || de.Record != 1 || !errors.Is(err, ErrData) {
		t.Fatalf("Tokenize: %v: want line 2, record 1, ErrData", err)
	}
}
