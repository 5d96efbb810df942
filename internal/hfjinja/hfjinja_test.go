package hfjinja

import (
	"context"
	"strings"
	"testing"
)

// The judge renders as Hugging Face does: trim_blocks and lstrip_blocks on,
// raise_exception raising, errors reported per rendering in order.
func TestRender(t *testing.T) {
	Require(t)
	req := Request{
		Templates: map[string]string{
			"ok":    "{% for m in messages %}\n  {% if m %}<{{ m.role }}>{{ m.content }}\n  {% endif %}\n{% endfor %}",
			"raise": "{{ raise_exception('no system role') }}",
			"bad":   "{% if %}",
		},
		Renders: []Rendering{
			{Template: "ok", Context: map[string]any{"messages": []any{map[string]any{"role": "user", "content": "héllo"}}}},
			{Template: "raise"},
			{Template: "bad"},
		},
	}
	res, err := Render(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Output != "<user>héllo\n" || res[0].Error != "" {
		t.Errorf("ok: got %+v, want output %q", res[0], "<user>héllo\n")
	}
	if !strings.Contains(res[1].Error, "no system role") {
		t.Errorf("raise: got %+v, want the exception's message", res[1])
	}
	if res[2].Error == "" {
		t.Errorf("bad: got %+v, want a parse error", res[2])
	}
}

func TestUnknownTemplateFails(t *testing.T) {
	Require(t)
	_, err := Render(context.Background(), Request{Templates: map[string]string{}, Renders: []Rendering{{Template: "x"}}})
	if err == nil || !strings.Contains(err.Error(), "unknown template") {
		t.Fatalf("got %v, want an unknown-template error", err)
	}
}
