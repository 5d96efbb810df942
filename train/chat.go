package train

import (
	"errors"
	"fmt"
	"io"
	"os"
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

	t        *chat.Template
	bos, eos string
}

// LoadChatTemplate returns the chat template for m: the file override when
// set, else the model's own (the GGUF's tokenizer.chat_template, an HF
// folder's chat_template.jinja or tokenizer_config.json chat_template, read
// with its tokenizer), else DefaultChatTemplate. modelPath names the model
// in messages.
func LoadChatTemplate(m *model.Model, modelPath, override string) (*ChatTemplate, error) {
	var name, src string
	def := false
	switch {
	case override != "":
		f, err := os.Open(override)
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
	case m.Tokenizer.ChatTemplate() != "":
		name, src = "the chat template of "+modelPath, m.Tokenizer.ChatTemplate()
	default:
		name, src, def = "the default chat template (no template in "+modelPath+")", DefaultChatTemplate, true
	}
	t, err := chat.Parse(name, src)
	if err != nil {
		return nil, err
	}
	ct := &ChatTemplate{Name: name, Source: src, Default: def, t: t}
	if id := m.Tokenizer.BOS(); id >= 0 {
		ct.bos = m.Tokenizer.Token(id)
	}
	if id := m.Tokenizer.EOS(); id >= 0 {
		ct.eos = m.Tokenizer.Token(id)
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
	s, err := c.t.Render(cm, chat.Options{AddGenerationPrompt: addGenerationPrompt, BOS: c.bos, EOS: c.eos})
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
func ChatTokenizeOptions(m *model.Model, modelPath, override string) (data.TokenizeOptions, error) {
	o := data.TokenizeOptions{AddEOS: true, NoBOS: !m.Tokenizer.AddBOS()}
	ct, err := LoadChatTemplate(m, modelPath, override)
	switch {
	case err == nil:
		o.Template, o.ChatTemplate = ct, ct.Source
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
