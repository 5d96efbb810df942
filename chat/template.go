package chat

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/ardanlabs/jinja"
)

// ErrTemplate marks a template that cannot be parsed or rendered: a syntax
// error, a construct the engine does not support, raise_exception, or a
// limit exceeded. The message names the template and says what failed.
var ErrTemplate = errors.New("chat template")

// ErrLimit marks a render stopped by Limits or by its context; it is always
// wrapped together with ErrTemplate.
var ErrLimit = errors.New("limit exceeded")

// Message is one turn of a conversation.
type Message struct {
	Role    string // "system", "user", "assistant", ...
	Content string
	// Extra holds further fields of the message (reasoning_content, name,
	// ...), seen by the template after role and content in sorted order.
	Extra map[string]any
}

// Options are the variables a chat template sees beside messages.
type Options struct {
	AddGenerationPrompt bool   // add_generation_prompt
	BOS, EOS            string // bos_token, eos_token (the token strings)
	// Extra holds further variables (date_string, enable_thinking, ...); it
	// may not redefine messages, add_generation_prompt, bos_token or
	// eos_token.
	Extra map[string]any
	// Now is the clock of strftime_now; nil means time.Now.
	Now func() time.Time
	// Limits bound the render; the zero value means DefaultLimits.
	Limits Limits
}

// Template is a parsed chat template, safe for concurrent renders.
type Template struct {
	name string
	src  string
	tmpl *jinja.Template
}

// Name returns the name the template was parsed with.
func (t *Template) Name() string { return t.name }

// Source returns the Jinja source as given to Parse.
func (t *Template) Source() string { return t.src }

// Parse compiles src, a Jinja chat template; name identifies it in errors
// (a file name, "tokenizer.chat_template" of a GGUF file, ...).
func Parse(name, src string) (t *Template, err error) {
	if len(src) > MaxSource {
		return nil, fmt.Errorf("chat: %w %s: source of %d bytes exceeds %d: %w", ErrTemplate, name, len(src), MaxSource, ErrLimit)
	}
	defer func() {
		if r := recover(); r != nil {
			t, err = nil, fmt.Errorf("chat: %w %s: engine failure while parsing: %v", ErrTemplate, name, r)
		}
	}()
	pre, err := rewrite(src)
	if err != nil {
		return nil, fmt.Errorf("chat: %w %s: %w", ErrTemplate, name, err)
	}
	jt, err := jinja.Compile(pre)
	if err != nil {
		return nil, fmt.Errorf("chat: %w %s: %w", ErrTemplate, name, err)
	}
	return &Template{name: name, src: src, tmpl: jt}, nil
}

// reserved are the variables Render sets itself.
var reserved = []string{"messages", "add_generation_prompt", "bos_token", "eos_token"}

// Render renders the conversation; see RenderContext.
func (t *Template) Render(messages []Message, opts Options) (string, error) {
	return t.RenderContext(context.Background(), messages, opts)
}

// RenderContext renders the conversation with the template's variables
// messages (a list of {role, content, ...Extra}), add_generation_prompt,
// bos_token, eos_token and opts.Extra, and Hugging Face's globals
// (raise_exception, strftime_now, range, namespace, ...). Cancelling ctx
// stops the render at its next loop or macro call. Errors wrap ErrTemplate
// and name the template; a limit or the context wraps ErrLimit too.
func (t *Template) RenderContext(ctx context.Context, messages []Message, opts Options) (out string, err error) {
	for k := range opts.Extra {
		if slices.Contains(reserved, k) || strings.HasPrefix(k, guardPrefix) {
			return "", fmt.Errorf("chat: %w %s: Options.Extra may not set %q", ErrTemplate, t.name, k)
		}
	}
	lim := opts.Limits.orDefault()
	g := newGuard(ctx, lim)
	vars := make(map[string]jinja.Value, len(opts.Extra)+16)
	for k, v := range opts.Extra {
		vars[k] = toValue(v)
	}
	msgs := make([]jinja.Value, len(messages))
	for i, m := range messages {
		msgs[i] = messageValue(m)
	}
	vars["messages"] = jinja.NewList(msgs)
	vars["add_generation_prompt"] = jinja.NewBool(opts.AddGenerationPrompt)
	vars["bos_token"] = jinja.NewString(opts.BOS)
	vars["eos_token"] = jinja.NewString(opts.EOS)
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	addGlobals(vars, g, now)

	defer func() {
		if r := recover(); r != nil {
			out, err = "", fmt.Errorf("chat: %w %s: engine failure while rendering: %v", ErrTemplate, t.name, r)
		}
	}()
	out, err = t.tmpl.RenderValues(vars)
	if err != nil {
		if g.err != nil { // the guard's own error, possibly re-wrapped by the engine
			return "", fmt.Errorf("chat: %w %s: %w", ErrTemplate, t.name, g.err)
		}
		return "", fmt.Errorf("chat: %w %s: %w", ErrTemplate, t.name, err)
	}
	if len(out) > lim.MaxOutput {
		return "", fmt.Errorf("chat: %w %s: output of %d bytes exceeds %d: %w", ErrTemplate, t.name, len(out), lim.MaxOutput, ErrLimit)
	}
	return out, nil
}

// messageValue is m as the dict a template sees: role, content, then
// Extra's keys in sorted order (the order tojson and items() show).
func messageValue(m Message) jinja.Value {
	d := jinja.NewDict()
	dd := d.AsDict()
	dd.Set("role", jinja.NewString(m.Role))
	dd.Set("content", jinja.NewString(m.Content))
	for _, k := range sortedKeys(m.Extra) {
		if k != "role" && k != "content" {
			dd.Set(k, toValue(m.Extra[k]))
		}
	}
	return d
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// Object is a JSON-like object whose keys keep their order (tool
// definitions, tool-call arguments): a template's tojson and items() show
// them in this order. A map[string]any shows its keys sorted.
type Object []Field

// Field is one key of an Object.
type Field struct {
	Key   string
	Value any
}

// toValue converts a JSON-like Go value: nil, bool, ints, floats, string,
// json.Number, json.RawMessage (decoded keeping key order), []any,
// []string, map[string]any (keys sorted), Object; other types become
// undefined.
func toValue(v any) jinja.Value {
	switch x := v.(type) {
	case int:
		return jinja.NewInt(int64(x))
	case int32:
		return jinja.NewInt(int64(x))
	case float32:
		return jinja.NewFloat(float64(x))
	case []string:
		l := make([]jinja.Value, len(x))
		for i, s := range x {
			l[i] = jinja.NewString(s)
		}
		return jinja.NewList(l)
	case []any:
		l := make([]jinja.Value, len(x))
		for i, e := range x {
			l[i] = toValue(e)
		}
		return jinja.NewList(l)
	case map[string]any:
		d := jinja.NewDict()
		for _, k := range sortedKeys(x) {
			d.AsDict().Set(k, toValue(x[k]))
		}
		return d
	case Object:
		d := jinja.NewDict()
		for _, f := range x {
			d.AsDict().Set(f.Key, toValue(f.Value))
		}
		return d
	case json.RawMessage:
		dec := json.NewDecoder(bytes.NewReader(x))
		dec.UseNumber()
		v, err := decodeJSON(dec, 0)
		if err != nil {
			return jinja.Undefined()
		}
		return v
	}
	return jinja.FromGoValue(v)
}

// decodeJSON reads one JSON value from dec keeping object key order.
func decodeJSON(dec *json.Decoder, depth int) (jinja.Value, error) {
	if depth > 1000 {
		return jinja.Undefined(), errors.New("JSON nested too deep")
	}
	tok, err := dec.Token()
	if err != nil {
		return jinja.Undefined(), err
	}
	switch t := tok.(type) {
	case json.Delim:
		if t == '[' {
			var l []jinja.Value
			for dec.More() {
				v, err := decodeJSON(dec, depth+1)
				if err != nil {
					return v, err
				}
				l = append(l, v)
			}
			_, err := dec.Token()
			return jinja.NewList(l), err
		}
		d := jinja.NewDict()
		for dec.More() {
			k, err := dec.Token()
			if err != nil {
				return jinja.Undefined(), err
			}
			v, err := decodeJSON(dec, depth+1)
			if err != nil {
				return v, err
			}
			d.AsDict().Set(k.(string), v)
		}
		_, err := dec.Token()
		return d, err
	}
	return jinja.FromGoValue(tok), nil
}
