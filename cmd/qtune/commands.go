package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"github.com/qtune/qtune/internal/fsx"
	"os"
	"strings"
	"time"

	"github.com/qtune/qtune/budget"
	"github.com/qtune/qtune/data"
	"github.com/qtune/qtune/format/gguf"
	"github.com/qtune/qtune/model"
	"github.com/qtune/qtune/offload"
	"github.com/qtune/qtune/tokenizer"
	"github.com/qtune/qtune/train"
)

func (a *app) openModel(path, tok string) (*model.Model, error) {
	return a.openModelAdapter(path, tok, "", 0)
}

// openModelAdapter opens a model and applies an adapter ("": none) under
// the budget limit (0: none).
func (a *app) openModelAdapter(path, tok, adapter string, limit int64) (*model.Model, error) {
	if path == "" {
		return nil, usageErr("--model is required")
	}
	t0 := time.Now()
	m, err := model.Open(path, model.Options{Tokenizer: tok})
	if err != nil {
		return nil, err
	}
	if adapter != "" {
		what, err := train.ApplyAdapterLimit(m, adapter, limit)
		if err != nil {
			m.Close()
			return nil, err
		}
		a.log.Info().Str("adapter", adapter).Msg("applied " + what)
	}
	c := m.Config
	a.log.Info().Str("model", path).Str("format", m.Format).Int("layers", c.Layers).Int("dim", c.Dim).
		Int("vocab", c.Vocab).Float64("weights_MiB", float64(m.WeightBytes())/(1<<20)).
		Dur("load", time.Since(t0).Round(time.Microsecond)).Msg("model mapped")
	return m, nil
}

func (a *app) printJSON(v any) error {
	enc := json.NewEncoder(a.stdout)
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// openTokenizer reads the tokenizer of a model: from a GGUF file's
// metadata alone (a vocabulary-only GGUF such as llama.cpp's ggml-vocab-*
// works, and a model's tensors are not touched), else with the model.
func (a *app) openTokenizer(path, tok string) (*tokenizer.Tokenizer, func(), error) {
	if path != "" && tok == "" {
		if st, err := os.Stat(path); err == nil && !st.IsDir() {
			if mp, err := offload.Map(path); err == nil {
				if b := mp.Bytes(); len(b) >= 4 && string(b[:4]) == "GGUF" {
					f, err := gguf.Parse(b)
					if err != nil {
						mp.Close()
						return nil, nil, fmt.Errorf("%s: %w", path, err)
					}
					t, err := tokenizer.FromGGUF(f)
					if err != nil {
						mp.Close()
						return nil, nil, fmt.Errorf("%s: %w", path, err)
					}
					return t, func() { mp.Close() }, nil
				}
				mp.Close()
			}
		}
	}
	m, err := a.openModel(path, tok)
	if err != nil {
		return nil, nil, err
	}
	return m.Tokenizer, func() { m.Close() }, nil
}

func (a *app) tokenize(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("tokenize", flag.ContinueOnError)
	mp := fs.String("model", "", "model file or folder")
	tp := fs.String("tokenizer", "", "tokenizer file (llama2.c models)")
	text := fs.String("text", "", "text to tokenize")
	noBOS := fs.Bool("no-bos", false, "do not prepend the BOS token")
	special := fs.Bool("special", false, "parse special-token text (<|im_start|>, <|eot_id|>, </s>) into its ids, as llama.cpp's parse_special; without it such text stays text")
	asJSON := fs.Bool("json", false, "print a JSON array")
	pos, err := a.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageErr("unexpected argument %q", pos[0])
	}
	tok, closeTok, err := a.openTokenizer(*mp, *tp)
	if err != nil {
		return err
	}
	defer closeTok()
	addBOS := tok.AddBOS() && !*noBOS
	ids := tok.Encode(*text, addBOS)
	if *special {
		ids = tok.EncodeSpecial(*text, addBOS)
	}
	if *asJSON {
		if ids == nil {
			ids = []int{}
		}
		return a.printJSON(ids)
	}
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = fmt.Sprint(id)
	}
	fmt.Fprintln(a.stdout, strings.Join(s, " "))
	return nil
}

func (a *app) generate(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("generate", flag.ContinueOnError)
	mp := fs.String("model", "", "model file or folder")
	tp := fs.String("tokenizer", "", "tokenizer file (llama2.c models)")
	prompt := fs.String("prompt", "", "prompt text (with --chat: the user's message)")
	adp := fs.String("adapter", "", "apply a LoRA adapter (PEFT folder, or GGUF adapter file/folder)")
	n := fs.Int("n", 128, "tokens to generate")
	temp := fs.Float64("temp", 0.8, "sampling temperature; 0 is greedy")
	topP := fs.Float64("top-p", 0.9, "nucleus sampling mass")
	seed := fs.Uint64("seed", 0, "random seed (0: from the clock)")
	asJSON := fs.Bool("json", false, `print {"prompt_tokens","tokens","text"}`)
	ignoreEOS := fs.Bool("ignore-eos", false, "keep going past the end-of-generation tokens")
	maxMem := fs.String("max-mem", "", "memory budget (512MiB, 2GB, 1.5GiB or bytes)")
	chatMode := fs.Bool("chat", false, "render the prompt with the chat template (a user turn and the generation prompt); print only the reply")
	system := fs.String("system", "", "with --chat: a system message first")
	msgFile := fs.String("messages", "", `with --chat: a JSON file of the conversation so far ([{"role","content"}, ...] or {"messages": [...]})`)
	tmplFile := fs.String("chat-template", "", "with --chat: a Jinja chat template file instead of the model's")
	kwargs := fs.String("chat-template-kwargs", "", `with --chat: further template variables as a JSON object, e.g. '{"enable_thinking": false}'`)
	df := addDeviceFlags(fs)
	pos, err := a.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageErr("unexpected argument %q", pos[0])
	}
	if err := checkSampling(*n, *temp, *topP); err != nil {
		return err
	}
	if *msgFile != "" || *system != "" || *tmplFile != "" || *kwargs != "" {
		*chatMode = true
	}
	var msgs []data.Message
	if *chatMode {
		if msgs, err = chatMessages(*msgFile, *system, *prompt); err != nil {
			return err
		}
	}
	limit, err := a.budget(*maxMem) // a usage error before any work
	if err != nil {
		return err
	}
	dev, err := a.deviceOptions(df)
	if err != nil {
		return err
	}
	if *seed == 0 {
		*seed = uint64(time.Now().UnixNano())
	}
	// with --chat the prompt is the conversation's last user turn already
	opt := train.GenerateOptions{Chat: *chatMode, Messages: msgs, ChatTemplate: *tmplFile, TemplateKwargs: *kwargs, ModelPath: *mp,
		MaxTokens: *n, Temp: *temp, TopP: *topP, Seed: *seed, IgnoreEOS: *ignoreEOS, MaxMem: limit,
		DeviceOptions: dev}
	if err := opt.Check(); err != nil {
		return usageErr("%v", err)
	}
	m, err := a.openModelAdapter(*mp, *tp, *adp, limit)
	if err != nil {
		return err
	}
	defer m.Close()
	if !*chatMode {
		opt.Prompt = *prompt
	}
	planned := false
	opt.OnPlan = func(p *budget.Plan) bool {
		planned = true
		a.printPlan(p)
		if !a.planOnly && !*asJSON && !*chatMode {
			fmt.Fprint(a.stdout, *prompt) // the continuation streams after it
		}
		return !a.planOnly
	}
	if !*asJSON {
		opt.OnToken = func(_ int, piece string) { fmt.Fprint(a.stdout, piece) }
	}
	t0 := time.Now()
	g, err := train.Generate(ctx, m, opt)
	if errors.Is(err, train.ErrBadOptions) {
		return usageErr("%v", err)
	}
	if err != nil && !planned && g != nil && g.Plan != nil {
		a.printPlan(g.Plan)
	}
	if err != nil || a.planOnly {
		return err
	}
	if g.Template != nil {
		a.logTemplate(g.Template)
	}
	el := time.Since(t0)
	a.log.Info().Int("prompt_tokens", len(g.PromptTokens)).Int("tokens", len(g.Tokens)).
		Float64("tokens_per_s", float64(len(g.Tokens))/el.Seconds()).Msg("generated")
	if *asJSON {
		return a.printJSON(struct {
			PromptTokens []int  `json:"prompt_tokens"`
			Tokens       []int  `json:"tokens"`
			Text         string `json:"text"`
		}{g.PromptTokens, g.Tokens, g.Text})
	}
	fmt.Fprintln(a.stdout)
	return nil
}

// deviceFlags are where generate and chat run.
type deviceFlags struct{ device, vram, prec *string }

func addDeviceFlags(fs *flag.FlagSet) deviceFlags {
	return deviceFlags{
		fs.String("device", "cpu", "where the model runs: cpu, cuda, cuda:N (an NVIDIA GPU, the KV cache there too) or auto (the GPU when there is one and it takes the model)"),
		fs.String("max-vram", "", "GPU memory budget (the CUDA context is apart; default: what the GPU has free, less a margin)"),
		fs.String("gpu-precision", "bf16", "input type of the GPU's products over several positions: bf16 or f32 (one token's are float32 either way)"),
	}
}

// deviceOptions reads the device flags (a usage error before any work).
func (a *app) deviceOptions(f deviceFlags) (train.DeviceOptions, error) {
	o := train.DeviceOptions{Device: *f.device, GPUPrecision: *f.prec, Log: func(s string) { a.log.Info().Msg(s) }, PlanOnly: a.planOnly}
	if *f.vram != "" {
		v, err := budget.ParseSize(*f.vram)
		if err != nil {
			return o, usageErr("--max-vram: %v", err)
		}
		o.MaxVRAM = v
	}
	if err := o.Check(); err != nil {
		return o, usageErr("%v", err)
	}
	return o, nil
}

// chatMessages builds generate --chat's conversation: the messages file's
// turns (a JSON list of {"role","content"}, or {"messages": [...]}), else a
// system turn when given; then the prompt as a user turn when not empty.
func chatMessages(file, system, prompt string) ([]data.Message, error) {
	var msgs []data.Message
	if file != "" {
		b, err := fsx.ReadFile(file)
		if err != nil {
			return nil, err
		}
		b = fsx.TrimBOM(b)
		b = bytes.TrimPrefix(b, []byte("\xef\xbb\xbf"))
		if err := json.Unmarshal(b, &msgs); err != nil {
			var obj struct {
				Messages []data.Message `json:"messages"`
			}
			if err2 := json.Unmarshal(b, &obj); err2 != nil || obj.Messages == nil {
				return nil, fmt.Errorf("%s: not a JSON list of messages nor {\"messages\": [...]}: %v", file, err)
			}
			msgs = obj.Messages
		}
		for i, m := range msgs {
			switch m.Role {
			case "system", "user", "assistant", "tool":
			default:
				return nil, fmt.Errorf("%s: message %d: role %q (want system, user, assistant or tool)", file, i+1, m.Role)
			}
		}
	}
	if system != "" {
		if len(msgs) > 0 && msgs[0].Role == "system" {
			msgs[0].Content = system
		} else {
			msgs = append([]data.Message{{Role: "system", Content: system}}, msgs...)
		}
	}
	if prompt != "" {
		msgs = append(msgs, data.Message{Role: "user", Content: prompt})
	}
	if len(msgs) == 0 {
		return nil, usageErr("--chat needs --prompt or --messages")
	}
	return msgs, nil
}

func (a *app) eval(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("eval", flag.ContinueOnError)
	mp := fs.String("model", "", "model file or folder")
	tp := fs.String("tokenizer", "", "tokenizer file (llama2.c models)")
	dp := fs.String("data", "", "plain text, {\"text\"} / {\"prompt\",\"completion\"} JSONL, or classification JSONL")
	adp := fs.String("adapter", "", "apply a LoRA adapter (PEFT folder, or GGUF adapter file/folder)")
	maxSeq := fs.Int("max-seq-length", 0, "window length in tokens (0: model context, at most 1024)")
	limit := fs.Int("limit", 0, "evaluate only the first N records (0: all)")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	maxMem := fs.String("max-mem", "", "memory budget (512MiB, 2GB, 1.5GiB or bytes)")
	df := addDeviceFlags(fs)
	pos, err := a.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageErr("unexpected argument %q", pos[0])
	}
	if *dp == "" {
		return usageErr("--data is required")
	}
	if *maxSeq < 0 || *maxSeq > 1<<20 {
		return usageErr("--max-seq-length %d: want 0..%d (0: the model's context, at most 1024)", *maxSeq, 1<<20)
	}
	if *limit < 0 {
		return usageErr("--limit %d: want ≥ 0 (0: all records)", *limit)
	}
	opt := train.EvaluateOptions{Limit: *limit, MaxSeqLen: *maxSeq}
	if opt.MaxMem, err = a.budget(*maxMem); err != nil {
		return err
	}
	if opt.DeviceOptions, err = a.deviceOptions(df); err != nil {
		return err
	}
	// The records are booked and read before the model is opened: bad data
	// is named first, whatever the model.
	if opt.Records, err = train.LoadEvalData(*dp, opt.MaxMem); err != nil {
		return err
	}
	m, err := a.openModelAdapter(*mp, *tp, *adp, opt.MaxMem)
	if err != nil {
		return err
	}
	defer m.Close()
	planned := false
	opt.OnPlan = func(p *budget.Plan) bool {
		planned = true
		a.printPlan(p)
		return !a.planOnly
	}
	bar := a.newProgress("eval")
	opt.Progress = bar.update
	t0 := time.Now()
	ev, err := train.Evaluate(ctx, m, opt)
	bar.done()
	if err != nil && !planned && ev != nil && ev.Plan != nil {
		a.printPlan(ev.Plan)
	}
	if err != nil || a.planOnly {
		return err
	}
	el := time.Since(t0)
	if ev.Class != nil {
		a.log.Info().Dur("took", el.Round(time.Millisecond)).Msg("evaluated")
		if *asJSON {
			return a.printJSON(ev.Class)
		}
		fmt.Fprintf(a.stdout, "accuracy %.4f (%d examples)\n", ev.Class.Accuracy, ev.Class.N)
		return nil
	}
	res := ev.LM
	a.log.Info().Dur("took", el.Round(time.Millisecond)).Float64("tokens_per_s", float64(res.Tokens)/el.Seconds()).Msg("evaluated")
	if *asJSON {
		return a.printJSON(res)
	}
	fmt.Fprintf(a.stdout, "loss %.4f  ppl %.3f  (%d tokens)\n", res.Loss, res.PPL, res.Tokens)
	return nil
}

// progress draws a one-line bar on stderr when it is a terminal.
type progress struct {
	a     *app
	label string
	start time.Time
	last  time.Time
	drawn bool
}

func (a *app) newProgress(label string) *progress {
	return &progress{a: a, label: label, start: time.Now()}
}

func (p *progress) update(done, total int) {
	if !p.a.tty || p.a.json || p.a.quiet {
		return
	}
	now := time.Now()
	if done < total && now.Sub(p.last) < 100*time.Millisecond {
		return
	}
	p.last = now
	const width = 30
	fill := width * done / max(total, 1)
	rate := float64(done) / now.Sub(p.start).Seconds()
	eta := ""
	if rate > 0 && done < total {
		eta = fmt.Sprintf(" eta %s", time.Duration(float64(total-done)/rate*float64(time.Second)).Round(time.Second))
	}
	fmt.Fprintf(p.a.stderr, "\r%s [%s%s] %d/%d %.1f/s%s  ", p.label, strings.Repeat("=", fill), strings.Repeat(" ", width-fill), done, total, rate, eta)
	p.drawn = true
}

func (p *progress) done() {
	if p.drawn {
		fmt.Fprintln(p.a.stderr)
	}
}

// budget parses --max-mem ("" means no budget).
func (a *app) budget(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	n, err := budget.ParseSize(s)
	if err != nil {
		return 0, usageErr("--max-mem: %v", err)
	}
	return n, nil
}

// showPlan prints the memory plan: to stdout for qtune plan, else as the
// first log lines of the run. A plan that does not fit is an error.
func (a *app) showPlan(p *budget.Plan, err error) error {
	if err == nil && !a.planOnly {
		err = budget.CheckAvailable(p) // no --max-mem: still no more than the machine has
	}
	a.printPlan(p)
	return err
}

// printPlan prints a plan (nil: nothing): to stdout for qtune plan, else as
// the first log lines of the run.
func (a *app) printPlan(p *budget.Plan) {
	if p == nil {
		return
	}
	if a.planOnly {
		fmt.Fprintln(a.stdout, p.String())
		return
	}
	for _, line := range strings.Split(p.String(), "\n") {
		a.log.Info().Msg(line)
	}
}
