package chat

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func render(t *testing.T, src string, msgs []Message, opts Options) (string, error) {
	t.Helper()
	tm, err := Parse("t.jinja", src)
	if err != nil {
		return "", err
	}
	if tm.Name() != "t.jinja" || tm.Source() != src {
		t.Errorf("Name/Source: %q %q", tm.Name(), tm.Source())
	}
	return tm.Render(msgs, opts)
}

func TestMessagesAndVariables(t *testing.T) {
	msgs := []Message{{Role: "user", Content: "héllo", Extra: map[string]any{"z": 1, "name": "bob"}}}
	got, err := render(t, `{{ bos_token }}{{ messages[0]|tojson }}{% if add_generation_prompt %}{{ eos_token }}{% endif %}{{ date_string }}`,
		msgs, Options{AddGenerationPrompt: true, BOS: "<s>", EOS: "</s>", Extra: map[string]any{"date_string": "today"}})
	if want := `<s>{"role": "user", "content": "héllo", "name": "bob", "z": 1}</s>today`; got != want || err != nil {
		t.Errorf("got %q, %v; want %q", got, err, want)
	}
}

func TestOrderedValues(t *testing.T) {
	extra := map[string]any{
		"o": Object{{Key: "b", Value: 1}, {Key: "a", Value: []any{true, nil, 1.5}}},
		"r": json.RawMessage(`{"z": {"y": 1, "x": [1, 2.0, "s"]}, "a": null}`),
		"m": map[string]any{"b": 1, "a": 2},
	}
	got, err := render(t, `{{ o|tojson }} {{ r|tojson }} {{ m|tojson }} {{ r|tojson(indent=2) }}`, nil, Options{Extra: extra})
	want := `{"b": 1, "a": [true, null, 1.5]} {"z": {"y": 1, "x": [1, 2, "s"]}, "a": null} {"a": 2, "b": 1} {
  "z": {
    "y": 1,
    "x": [
      1,
      2,
      "s"
    ]
  },
  "a": null
}`
	if got != want || err != nil {
		t.Errorf("got %q, %v\nwant %q", got, err, want)
	}
}

func TestErrorsNameTemplateAndConstruct(t *testing.T) {
	for src, construct := range map[string]string{
		`{% if %}`:                        "",
		`{{ 'a' `:                         "unclosed",
		`{{ '\q' }}`:                      "escape",
		`{{ x|nosuchfilter }}`:            "nosuchfilter",
		`{% for x in none %}{% endfor %}`: "iterate",
		`{{ none|length }}`:               "length",
	} {
		_, err := render(t, src, nil, Options{})
		if !errors.Is(err, ErrTemplate) || !strings.Contains(err.Error(), "t.jinja") || !strings.Contains(err.Error(), construct) {
			t.Errorf("%s: got %v, want an error naming t.jinja and %q", src, err, construct)
		}
	}
	if _, err := render(t, "x", nil, Options{Extra: map[string]any{"messages": 1}}); !errors.Is(err, ErrTemplate) {
		t.Errorf("reserved Extra: got %v", err)
	}
}
