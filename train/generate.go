package train

import (
	"context"
	"errors"
	"fmt"

	"github.com/qtune/qtune/budget"
	"github.com/qtune/qtune/data"
	"github.com/qtune/qtune/model"
)

// GenerateOptions is one generation as a library call (what `qtune
// generate` does, for an app that embeds qtune).
type GenerateOptions struct {
	// Prompt is the text to continue, or with Chat the user's message.
	Prompt string
	// Chat renders Messages (then Prompt as a user turn, when not empty)
	// with the model's chat template and the generation prompt.
	Chat     bool
	Messages []data.Message
	// ChatTemplate is a Jinja template file used instead of the model's;
	// TemplateKwargs further template variables as a JSON object.
	ChatTemplate, TemplateKwargs string
	// ModelPath is where the model was opened from (a Hugging Face folder's
	// tokenizer_config.json may hold its template).
	ModelPath string

	MaxTokens int     // tokens to generate (> 0)
	Temp      float64 // 0: greedy
	TopP      float64 // nucleus mass in (0, 1]
	Seed      uint64
	IgnoreEOS bool  // keep going past the end-of-generation tokens
	MaxMem    int64 // budget in bytes; 0: none

	// DeviceOptions say where the model runs (the CPU by default).
	DeviceOptions

	// OnPlan, when set, is given the memory plan before any work;
	// returning false stops there (a plan-only call).
	OnPlan func(*budget.Plan) bool
	// OnToken, when set, is given each generated token and its text as it
	// is made.
	OnToken func(id int, piece string)
}

// Generated is what Generate made.
type Generated struct {
	PromptTokens []int
	Tokens       []int
	Text         string // the generated tokens as text
	Plan         *budget.Plan
	Template     *ChatTemplate // with Chat: the template used
}

// ErrBadOptions marks options a caller gave out of range (a usage error).
var ErrBadOptions = errors.New("bad options")

// Check range-checks the sampling options (NaN and infinities included;
// MaxTokens bounded so that prompt + MaxTokens cannot overflow).
func (o GenerateOptions) Check() error {
	switch {
	case o.MaxTokens < 0 || o.MaxTokens > 1<<30:
		return fmt.Errorf("generate: %d tokens to generate: want 0..%d: %w", o.MaxTokens, 1<<30, ErrBadOptions)
	case !(o.Temp >= 0 && o.Temp <= 100):
		return fmt.Errorf("generate: temperature %v: want a number in [0, 100] (0 is greedy): %w", o.Temp, ErrBadOptions)
	case !(o.TopP >= 0 && o.TopP <= 1):
		return fmt.Errorf("generate: top-p %v: want a number in [0, 1]: %w", o.TopP, ErrBadOptions)
	case o.MaxMem < 0:
		return fmt.Errorf("generate: budget of %d bytes: %w", o.MaxMem, ErrBadOptions)
	}
	if err := o.DeviceOptions.Check(); err != nil {
		return fmt.Errorf("generate: %w", err)
	}
	return nil
}

// Generate continues a prompt (or answers a conversation with the model's
// chat template) on m under the budget: the plan is made before any work
// and the Go heap limited to its share while it runs (put back after).
func Generate(ctx context.Context, m *model.Model, o GenerateOptions) (*Generated, error) {
	if err := o.Check(); err != nil {
		return nil, err
	}
	g := &Generated{}
	if o.Chat {
		vars, err := ParseTemplateKwargs(o.TemplateKwargs)
		if err != nil {
			return nil, fmt.Errorf("generate: %w: %w", err, ErrBadOptions)
		}
		tmpl, err := LoadChatTemplate(m, o.ModelPath, o.ChatTemplate)
		if err != nil {
			return nil, err
		}
		tmpl.Vars = vars
		msgs := o.Messages
		if o.Prompt != "" {
			msgs = append(append([]data.Message(nil), msgs...), data.Message{Role: "user", Content: o.Prompt})
		}
		if g.PromptTokens, err = tmpl.Prompt(m.Tokenizer, msgs); err != nil {
			return nil, err
		}
		g.Template = tmpl
	} else {
		g.PromptTokens = m.Tokenizer.Encode(o.Prompt, m.Tokenizer.AddBOS())
	}
	if len(g.PromptTokens) == 0 {
		return nil, fmt.Errorf("generate: the prompt encodes to no tokens and the model has no BOS")
	}
	if len(g.PromptTokens) >= m.Config.Context {
		return nil, fmt.Errorf("generate: the prompt is %d tokens, the model's context %d", len(g.PromptTokens), m.Config.Context)
	}
	maxLen := min(len(g.PromptTokens)+o.MaxTokens, m.Config.Context)
	plan, err := PlanGenerate(m, maxLen, len(g.PromptTokens), o.MaxMem, o.Device)
	g.Plan = plan
	if err != nil {
		return g, err
	}
	if o.PlanOnly {
		if err := planSessionDry(m, o.DeviceOptions, model.GPUSessionOptions{MaxLen: maxLen}, plan); err != nil {
			return g, err
		}
	}
	if o.OnPlan != nil && !o.OnPlan(plan) {
		return g, nil
	}
	// without a budget, still no more than the machine has available
	if err := budget.CheckAvailable(plan); err != nil {
		return g, err
	}
	defer ApplyPlan(m, plan)()
	se, done, err := Session(m, o.DeviceOptions, maxLen, plan)
	if err != nil {
		return g, err
	}
	defer done()
	opt := model.GenerateOptions{MaxTokens: o.MaxTokens, Sampler: model.NewSampler(o.Temp, o.TopP, o.Seed), StopAtEOS: !o.IgnoreEOS}
	if o.OnToken != nil {
		opt.OnToken = func(id int) { o.OnToken(id, m.Tokenizer.Piece(id)) }
	}
	g.Tokens, err = se.Generate(ctx, g.PromptTokens, opt)
	if err != nil {
		return g, err
	}
	if g.Tokens == nil {
		g.Tokens = []int{}
	}
	g.Text = Continuation(m, g.Tokens)
	return g, nil
}

// Continuation renders generated ids as the text that follows the prompt:
// the pieces joined (a leading space kept), byte tokens reassembled.
func Continuation(m *model.Model, ids []int) string {
	var s []byte
	for _, id := range ids {
		s = append(s, m.Tokenizer.Piece(id)...)
	}
	return string(s)
}
