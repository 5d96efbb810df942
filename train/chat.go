package train

import (
	"encoding/json"
	"errors"
	"fmt"
	"github.com/qtune/qtune/internal/fsx"
	"io"
	"strings"

	"github.com/qtune/qtune/chat"
	"github.com/qtune/qtune/data"
	"github.com/qtune/qtune/model"
	"github.com/qtune/qtune/tokenizer"
)

// DefaultChatTemplate is the chat template of a model that declares none
// (tokenizer.chat_template in a GGUF, chat_template in tokenizer_config.json
// or chat_template.jinja in an HF folder), and of llama2.c models: plain
// role labels, each assistant turn closed by the end-of-sequence token so
// the model learns to stop.
//
//	System: {system}
//	User: {user}
//	Assistant: {reply}</s>
//	User: ...
//
// With the generation prompt the rendering ends with "Assistant:".
const DefaultChatTemplate = "{% for m in messages %}" +
	"{% if m.role == 'system' %}System: {{ m.content }}\n" +
	"{% elif m.role == 'user' %}User: {{ m.content }}\n" +
	"{% elif m.role == 'assistant' %}Assistant: {{ m.content }}{{ eos_token }}\n" +
	"{% else %}{{ raise_exception('the default chat template knows the roles system, user and assistant, not ' + m.role) }}" +
	"{% endif %}{% endfor %}" +
	"{% if add_generation_prompt %}Assistant:{% endif %}"

// maxTemplateFile bounds a --chat-template file (templates are a few KiB;
// the largest real ones are under 100 KiB).
const maxTemplateFile = 1 << 20

// ChatTemplate is the chat template a model is trained and prompted with,
// with the model's BOS and EOS token texts. It renders conversations for
// data.TokenizeOptions.Template and builds generation prompts.
type ChatTemplate struct {
	// Name says where the template came from (a file, "tokenizer.chat_template
	// of model.gguf", "the default template").
	Name string
	// Source is the Jinja source.
	Source string
	// Default is set for DefaultChatTemplate.
	Default bool
	// Vars are further template variables (--chat-template-kwargs, as
	// llama.cpp names them): enable_thinking, reasoning_effort, ...
	Vars map[string]any
	// NoSystemRole is set when the template drops a system turn (Phi-3's):
	// Render then merges a leading system message into the next one, as
	// llama.cpp's server does (chat.cpp, system_message_not_supported).
	NoSystemRole bool

	t        *chat.Template
	bos, eos string
}

// systemProbe is the system text a template is probed with.
const systemProbe = "qtune-system-probe-7c1f"

// ParseTemplateKwargs reads --chat-template-kwargs: a JSON object of extra
// template variables ('{"enable_thinking": false}').
func ParseTemplateKwargs(s string) (map[string]any, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var v map[string]any
	if err := json.Unmarshal([]byte(s), &v); err != nil || v == nil {
		return nil, fmt.Errorf("--chat-template-kwargs must be a JSON object, e.g. '{\"enable_thinking\": false}' (%q)", s)
	}
	for _, k := range []string{"messages", "add_generation_prompt", "bos_token", "eos_token"} {
		if _, ok := v[k]; ok {
			return nil, fmt.Errorf("--chat-template-kwargs may not set %s", k)
		}
	}
	return v, nil
}

// LoadChatTemplate returns the chat template for m: the file override when
// set, else the model's own (the GGUF's tokenizer.chat_template, an HF
// folder's chat_template.jinja or tokenizer_config.json chat_template, read
// with its tokenizer), else DefaultChatTemplate. modelPath names the model
// in messages.
func LoadChatTemplate(m *model.Model, modelPath, override string) (*ChatTemplate, error) {
	return TokenizerChatTemplate(m.Tokenizer, modelPath, override)
}

// TokenizerChatTemplate is LoadChatTemplate for a tokenizer alone (a
// vocabulary-only GGUF, say): the template it carries, unless override names
// a file.
func TokenizerChatTemplate(tok *tokenizer.Tokenizer, modelPath, override string) (*ChatTemplate, error) {
	var name, src string
	def := false
	switch {
	case override != "":
		f, err := fsx.Open(override)
		if err != nil {
			return nil, fmt.Errorf("chat template: %w", err)
		}
		b, err := io.ReadAll(io.LimitReader(f, maxTemplateFile+1))
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("chat template: %s: %w", override, err)
		}
		if len(b) > maxTemplateFile {
			return nil, fmt.Errorf("chat template: %s is over %d bytes", override, maxTemplateFile)
		}
		name, src = override, strings.TrimPrefix(string(b), "\ufeff")
		if strings.TrimSpace(src) == "" {
			return nil, fmt.Errorf("chat template: %s is empty", override)
		}
	case tok.ChatTemplate() != "":
		name, src = "the chat template of "+modelPath, tok.ChatTemplate()
	default:
		name, src, def = "the default chat template (no template in "+modelPath+")", DefaultChatTemplate, true
	}
	t, err := chat.Parse(name, src)
	if err != nil {
		return nil, err
	}
	ct := &ChatTemplate{Name: name, Source: src, Default: def, t: t}
	if id := tok.BOS(); id >= 0 {
		ct.bos = tok.Token(id)
	}
	if id := tok.EOS(); id >= 0 {
		ct.eos = tok.Token(id)
	}
	// As llama.cpp detects it: a system turn whose text does not come out, or
	// that the template refuses (Gemma 2's raise_exception) when a user turn
	// alone renders.
	opt := chat.Options{BOS: ct.bos, EOS: ct.eos}
	probe, err := t.Render([]chat.Message{{Role: "system", Content: systemProbe}, {Role: "user", Content: "Hi"}}, opt)
	if err != nil {
		_, err2 := t.Render([]chat.Message{{Role: "user", Content: "Hi"}}, opt)
		ct.NoSystemRole = err2 == nil
	} else {
		ct.NoSystemRole = !strings.Contains(probe, systemProbe)
	}
	return ct, nil
}

// Render renders msgs, with the assistant's header at the end when
// addGenerationPrompt is set (data.Renderer).
func (c *ChatTemplate) Render(msgs []data.Message, addGenerationPrompt bool) (string, error) {
	cm := make([]chat.Message, len(msgs))
	for i, m := range msgs {
		cm[i] = chat.Message{Role: m.Role, Content: m.Content}
	}
	if c.NoSystemRole && len(cm) > 0 && cm[0].Role == "system" {
		if len(cm) > 1 {
			cm[1].Content = cm[0].Content + "\n" + cm[1].Content
		}
		cm = cm[1:]
	}
	s, err := c.t.Render(cm, chat.Options{AddGenerationPrompt: addGenerationPrompt, BOS: c.bos, EOS: c.eos, Extra: c.Vars})
	if err != nil {
		return "", fmt.Errorf("%w: %w", data.ErrData, err)
	}
	return s, nil
}

// ErrEmptyConversation is returned for a prompt of no messages.
var ErrEmptyConversation = errors.New("chat: no messages")

// Prompt returns the ids that prompt the model for the assistant's next
// turn after msgs: the rendering with the generation prompt, its special
// token text parsed into ids, BOS first when the model adds one (a BOS the
// template wrote itself is kept once, as llama.cpp's chat path does).
func (c *ChatTemplate) Prompt(tok *tokenizer.Tokenizer, msgs []data.Message) ([]int, error) {
	if len(msgs) == 0 {
		return nil, ErrEmptyConversation
	}
	s, err := c.Render(msgs, true)
	if err != nil {
		return nil, err
	}
	addBOS := tok.AddBOS() && tok.BOS() >= 0
	if addBOS && c.bos != "" {
		s = strings.TrimPrefix(s, c.bos)
	}
	return tok.EncodeSpecial(s, addBOS), nil
}

// ChatTokenizeOptions are the tokenization options of a training run on
// m: EOS after each example, BOS as the model wants it, and chat records
// rendered with the chat template LoadChatTemplate finds. A template the
// engine cannot parse fails the run when it was given with override, and
// otherwise only when the data holds chat records (text and completion data
// do not need it).
func ChatTokenizeOptions(m *model.Model, modelPath, override string, kwargs map[string]any) (data.TokenizeOptions, error) {
	o := data.TokenizeOptions{AddEOS: true, NoBOS: !m.Tokenizer.AddBOS()}
	ct, err := LoadChatTemplate(m, modelPath, override)
	switch {
	case err == nil:
		ct.Vars = kwargs
		o.Template, o.ChatTemplate = ct, ct.Source
		if len(kwargs) > 0 { // the variables change the rendering: part of the cache key
			b, _ := json.Marshal(kwargs)
			o.ChatTemplate += "\x00" + string(b)
		}
	case override != "":
		return o, err
	default:
		o.Template, o.ChatTemplate = brokenTemplate{err}, m.Tokenizer.ChatTemplate()
	}
	return o, nil
}

// brokenTemplate is a model's chat template the engine cannot parse: it
// fails chat records with the parse error.
type brokenTemplate struct{ err error }

func (b brokenTemplate) Render([]data.Message, bool) (string, error) {
	return "", fmt.Errorf("%w: %w (give another with --chat-template)", data.ErrData, b.err)
}
