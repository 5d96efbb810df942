package train

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/qtune/qtune/data"
	"github.com/qtune/qtune/internal/shared"
	"github.com/qtune/qtune/model"
)

var talk = []data.Message{
	{Role: "system", Content: "Be brief."},
	{Role: "user", Content: "Who is Lily?"},
	{Role: "assistant", Content: "A little girl."},
	{Role: "user", Content: "What does she like?"},
	{Role: "assistant", Content: "She likes the park."},
}

// targetRuns returns the text of each run of targets.
func targetRuns(m *model.Model, ex data.Example) []string {
	var runs []string
	var cur []int
	for i, id := range ex.Tokens {
		if ex.Loss[i] {
			cur = append(cur, int(id))
			continue
		}
		if cur != nil {
			runs = append(runs, runText(m, cur))
			cur = nil
		}
	}
	if cur != nil {
		runs = append(runs, runText(m, cur))
	}
	return runs
}

func runText(m *model.Model, ids []int) string {
	var sb strings.Builder
	for _, id := range ids {
		if id == m.Tokenizer.EOS() {
			sb.WriteString("⟨EOS⟩")
			continue
		}
		sb.WriteString(m.Tokenizer.Piece(id))
	}
	return sb.String()
}

// The default template (stories260K declares none): targets are each
// assistant reply and the EOS closing it, never the headers, and the EOS
// the run appends after the conversation is not a target.
func TestChatDefaultTemplateTargets(t *testing.T) {
	m := openStories(t)
	o, err := ChatTokenizeOptions(m, "stories260K.gguf", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	ct := o.Template.(*ChatTemplate)
	if !ct.Default {
		t.Fatalf("template %q", ct.Name)
	}
	ex, err := data.Tokenize(m.Tokenizer, []data.Record{{Messages: talk}}, data.Chat, o)
	if err != nil {
		t.Fatal(err)
	}
	runs := targetRuns(m, ex[0])
	if want := []string{" A little girl.⟨EOS⟩", " She likes the park.⟨EOS⟩"}; !slices.Equal(runs, want) {
		t.Errorf("targets %q, want %q", runs, want)
	}
	// The rendering, as documented in DefaultChatTemplate.
	s, err := ct.Render(talk[:2], true)
	if err != nil || s != "System: Be brief.\nUser: Who is Lily?\nAssistant:" {
		t.Errorf("render %q, %v", s, err)
	}
	ids, err := ct.Prompt(m.Tokenizer, talk[:2])
	if err != nil || !slices.Equal(ids, m.Tokenizer.Encode(s, true)) {
		t.Errorf("prompt %v, %v", ids, err)
	}
}

// A --chat-template file overrides the model's; a template that writes
// bos_token itself gets one BOS, not two; special text in it is parsed.
func TestChatTemplateOverride(t *testing.T) {
	m := openStories(t)
	f := filepath.Join(t.TempDir(), "t.jinja")
	src := "{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content }}{% if m.role == 'assistant' %}{{ eos_token }}{% endif %}\n{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}"
	os.WriteFile(f, []byte(src), 0o644)
	o, err := ChatTokenizeOptions(m, "stories260K.gguf", f, nil)
	if err != nil {
		t.Fatal(err)
	}
	ex, err := data.Tokenize(m.Tokenizer, []data.Record{{Messages: talk[1:3]}}, data.Chat, o)
	if err != nil {
		t.Fatal(err)
	}
	bos := m.Tokenizer.BOS()
	if tk := ex[0].Tokens; tk[0] != int32(bos) || tk[1] == int32(bos) {
		t.Errorf("BOS: %v", tk[:3])
	}
	if runs := targetRuns(m, ex[0]); !slices.Equal(runs, []string{" A little girl.⟨EOS⟩"}) {
		t.Errorf("targets %q", runs)
	}
	ct := o.Template.(*ChatTemplate)
	ids, err := ct.Prompt(m.Tokenizer, talk[1:2])
	if err != nil || ids[0] != bos || ids[1] == bos {
		t.Errorf("prompt %v, %v", ids, err)
	}
	// A broken override fails the run; a broken model template only chat data.
	os.WriteFile(f, []byte("{% if %}"), 0o644)
	if _, err := ChatTokenizeOptions(m, "stories260K.gguf", f, nil); err == nil || !strings.Contains(err.Error(), "t.jinja") {
		t.Errorf("broken override: %v", err)
	}
	if _, err := ChatTokenizeOptions(m, "stories260K.gguf", filepath.Join(t.TempDir(), "none.jinja"), nil); err == nil {
		t.Error("missing override accepted")
	}
}

// Training on {"messages"} data: the run renders, tokenizes and learns the
// assistant turns (the training loss falls).
func TestTrainOnMessages(t *testing.T) {
	dir := t.TempDir()
	var sb strings.Builder
	for i := 0; i < 40; i++ {
		sb.WriteString(`{"messages":[{"role":"user","content":"Who is Lily?"},{"role":"assistant","content":"A little girl who likes the park."}]}` + "\n")
	}
	os.WriteFile(filepath.Join(dir, "train.jsonl"), []byte(sb.String()), 0o644)
	cfg := smallRun(t, filepath.Join(dir, "out"))
	cfg.Data = filepath.Join(dir, "train.jsonl")
	cfg.Iters, cfg.LearningRate, cfg.StepsPerEval, cfg.Dropout = 30, 2e-2, 0, 0
	res, err := Run(context.Background(), cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	first, last := res.Curve[0].Loss, res.Curve[len(res.Curve)-1].Loss
	if !(last < 0.7*first) {
		t.Errorf("loss %.3f → %.3f", first, last)
	}
}

// A template without a system turn: Gemma 2's refuses one (raise_exception),
// so the system message goes in front of the first user message, as
// llama.cpp's server does, in training data and prompts alike; the loss
// stays on the replies. A template with one keeps it, and kwargs reach it.
func TestChatSystemMergeAndKwargs(t *testing.T) {
	m := openStories(t)
	gemma2 := shared.Path(t, "assets", "chat-templates", "google-gemma-2-2b-it.jinja")
	o, err := ChatTokenizeOptions(m, "stories260K.gguf", gemma2, nil)
	if err != nil {
		t.Fatal(err)
	}
	ct := o.Template.(*ChatTemplate)
	if !ct.NoSystemRole {
		t.Fatal("Gemma 2's template taken to have a system turn")
	}
	got, err := ct.Render(talk[:3], false)
	if err != nil {
		t.Fatalf("system message not merged: %v", err)
	}
	if !strings.Contains(got, "<start_of_turn>user\nBe brief.\nWho is Lily?<end_of_turn>") {
		t.Errorf("merged render %q", got)
	}
	ex, err := data.Tokenize(m.Tokenizer, []data.Record{{Messages: talk}}, data.Chat, o)
	if err != nil {
		t.Fatal(err)
	}
	runs := targetRuns(m, ex[0])
	if len(runs) != 2 || !strings.Contains(runs[0], "A little girl.") || !strings.Contains(runs[1], "She likes the park.") {
		t.Errorf("targets %q", runs)
	}

	f := filepath.Join(t.TempDir(), "t.jinja")
	os.WriteFile(f, []byte("{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}{% if enable_thinking is defined %}<think={{ enable_thinking }}>{% endif %}"), 0o644)
	plain, err := ChatTokenizeOptions(m, "stories260K.gguf", f, nil)
	if err != nil {
		t.Fatal(err)
	}
	kw, err := ParseTemplateKwargs(`{"enable_thinking": false}`)
	if err != nil {
		t.Fatal(err)
	}
	think, err := ChatTokenizeOptions(m, "stories260K.gguf", f, kw)
	if err != nil {
		t.Fatal(err)
	}
	if plain.Template.(*ChatTemplate).NoSystemRole {
		t.Error("a template that writes the system turn taken to drop it")
	}
	a, _ := plain.Template.(*ChatTemplate).Render(talk[:2], false)
	b, _ := think.Template.(*ChatTemplate).Render(talk[:2], false)
	if a != "[system]Be brief.[user]Who is Lily?" || b != a+"<think=False>" {
		t.Errorf("renders %q, %q", a, b)
	}
	if plain.ChatTemplate == think.ChatTemplate {
		t.Error("kwargs are not part of the token cache key")
	}
}
