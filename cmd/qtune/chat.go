package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/qtune/qtune/data"
	"github.com/qtune/qtune/model"
	"github.com/qtune/qtune/train"
)

// chatFlags are the flags generate --chat and chat share.
type chatFlags struct {
	template *string
	system   *string
	kwargs   *string
	n        *int
	temp     *float64
	topP     *float64
	seed     *uint64
}

func addChatFlags(fs *flag.FlagSet, defTemp float64) chatFlags {
	return chatFlags{
		template: fs.String("chat-template", "", "Jinja chat template file, instead of the model's"),
		system:   fs.String("system", "", "system message that opens the conversation"),
		kwargs:   fs.String("chat-template-kwargs", "", `further template variables as a JSON object, e.g. '{"enable_thinking": false}'`),
		n:        fs.Int("n", 512, "most tokens per reply"),
		temp:     fs.Float64("temp", defTemp, "sampling temperature; 0 is greedy"),
		topP:     fs.Float64("top-p", 0.9, "nucleus sampling mass"),
		seed:     fs.Uint64("seed", 0, "random seed (0: from the clock)"),
	}
}

// chatTemplate loads the template generate --chat and chat prompt with, and
// says which it is (and when it drops system turns).
func (a *app) chatTemplate(m *model.Model, modelPath, override, kwargs string) (*train.ChatTemplate, error) {
	vars, err := train.ParseTemplateKwargs(kwargs)
	if err != nil {
		return nil, usageErr("%v", err)
	}
	tmpl, err := train.LoadChatTemplate(m, modelPath, override)
	if err != nil {
		return nil, err
	}
	tmpl.Vars = vars
	a.logTemplate(tmpl)
	return tmpl, nil
}

// logTemplate says which template renders the conversation (and when it
// drops system turns).
func (a *app) logTemplate(tmpl *train.ChatTemplate) {
	a.log.Info().Str("template", tmpl.Name).Msg("chat template")
	if tmpl.NoSystemRole {
		a.log.Warn().Msg("the chat template has no system turn: a system message is put before the first user message, as llama.cpp does")
	}
}

// checkSampling range-checks the sampling flags (NaN and infinities
// included; -n bounded so that prompt + n cannot overflow).
func checkSampling(n int, temp, topP float64) error {
	switch {
	case n < 0 || n > 1<<30:
		return usageErr("-n %d: want 0..%d", n, 1<<30)
	case math.IsNaN(temp) || math.IsInf(temp, 0) || temp < 0 || temp > 100:
		return usageErr("--temp %v: want a number in [0, 100] (0 is greedy)", temp)
	case math.IsNaN(topP) || topP < 0 || topP > 1:
		return usageErr("--top-p %v: want a number in [0, 1]", topP)
	}
	return nil
}

func (c chatFlags) check() error {
	if err := checkSampling(*c.n, *c.temp, *c.topP); err != nil {
		return err
	}
	if *c.seed == 0 {
		*c.seed = uint64(time.Now().UnixNano())
	}
	return nil
}

// chat is an interactive conversation with a model (and an adapter): each
// line read is a user turn, the reply streams to stdout. The KV cache is
// kept across turns, so only the new turn is run through the model.
func (a *app) chat(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("chat", flag.ContinueOnError)
	mp := fs.String("model", "", "model file or folder")
	tp := fs.String("tokenizer", "", "tokenizer file (llama2.c models)")
	adp := fs.String("adapter", "", "apply a LoRA adapter (PEFT folder, or GGUF adapter file/folder)")
	maxMem := fs.String("max-mem", "", "memory budget (512MiB, 2GB, 1.5GiB or bytes)")
	ctxLen := fs.Int("ctx", 0, "conversation length in tokens (0: the model's context, or what --max-mem allows)")
	cf := addChatFlags(fs, 0.7)
	df := addDeviceFlags(fs)
	pos, err := a.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageErr("unexpected argument %q", pos[0])
	}
	if err := cf.check(); err != nil {
		return err
	}
	if *ctxLen < 0 || *ctxLen > 1<<30 {
		return usageErr("--ctx %d: want 0..%d (0: the model's context, or what --max-mem allows)", *ctxLen, 1<<30)
	}
	limit, err := a.budget(*maxMem) // a usage error before any work
	if err != nil {
		return err
	}
	dev, err := a.deviceOptions(df)
	if err != nil {
		return err
	}
	m, err := a.openModelAdapter(*mp, *tp, *adp, limit)
	if err != nil {
		return err
	}
	defer m.Close()
	tmpl, err := a.chatTemplate(m, *mp, *cf.template, *cf.kwargs)
	if err != nil {
		return err
	}
	n := m.Config.Context
	if *ctxLen > 0 {
		n = min(n, *ctxLen)
	}
	plan, err := train.PlanGenerate(m, n, 1, limit, dev.Device)
	if err == nil && a.planOnly {
		err = train.PlanSessionDevice(m, dev, n, plan)
	}
	if err := a.showPlan(plan, err); err != nil || a.planOnly {
		return err
	}
	train.ApplyPlan(m, plan)
	se, done, err := train.Session(m, dev, n, plan)
	if err != nil {
		return err
	}
	defer done()
	var msgs []data.Message
	if *cf.system != "" {
		msgs = append(msgs, data.Message{Role: "system", Content: *cf.system})
	}
	sampler := model.NewSampler(*cf.temp, *cf.topP, *cf.seed)
	in := bufio.NewScanner(a.stdin)
	in.Buffer(make([]byte, 64<<10), 1<<20)
	if a.tty {
		fmt.Fprintln(a.stderr, "chat: one line per turn; /reset starts over, /exit or Ctrl-D ends")
	}
	for {
		if a.tty {
			fmt.Fprint(a.stderr, "> ")
		}
		if !in.Scan() {
			return in.Err()
		}
		line := strings.TrimSpace(in.Text())
		switch line {
		case "":
			continue
		case "/exit", "/quit":
			return nil
		case "/reset":
			msgs = msgs[:0]
			if *cf.system != "" {
				msgs = append(msgs, data.Message{Role: "system", Content: *cf.system})
			}
			continue
		}
		msgs = append(msgs, data.Message{Role: "user", Content: line})
		reply, err := a.reply(ctx, m, se, tmpl, msgs, sampler, *cf.n)
		if errors.Is(err, context.Canceled) {
			fmt.Fprintln(a.stdout)
			return nil
		}
		if err != nil {
			return err
		}
		msgs = append(msgs, data.Message{Role: "assistant", Content: reply})
	}
}

// reply renders msgs with the generation prompt, generates the assistant's
// turn in se (streaming it to stdout) and returns its text.
func (a *app) reply(ctx context.Context, m *model.Model, se *model.Session, tmpl *train.ChatTemplate, msgs []data.Message, s *model.Sampler, n int) (string, error) {
	ids, err := tmpl.Prompt(m.Tokenizer, msgs)
	if err != nil {
		return "", err
	}
	if len(ids) >= se.MaxLen() {
		return "", fmt.Errorf("the conversation is %d tokens, the session holds %d: /reset to start over, or a larger --ctx", len(ids), se.MaxLen())
	}
	t0 := time.Now()
	out, err := se.Generate(ctx, ids, model.GenerateOptions{MaxTokens: min(n, se.MaxLen()-len(ids)), Sampler: s, StopAtEOS: true,
		OnToken: func(id int) { fmt.Fprint(a.stdout, m.Tokenizer.Piece(id)) }})
	fmt.Fprintln(a.stdout)
	el := time.Since(t0)
	a.log.Info().Int("reused", se.Reused).Int("prefilled", se.Ran).Int("tokens", len(out)).
		Float64("tokens_per_s", float64(len(out))/el.Seconds()).Msg("turn")
	return m.Tokenizer.Decode(out), err
}
