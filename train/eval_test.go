package train

import (
	"context"
	"encoding/json"
	"math"
	"os"
	"testing"

	"github.com/qtune/qtune/data"
	"github.com/qtune/qtune/internal/shared"
	"github.com/qtune/qtune/model"
)

func openStories(t *testing.T) *model.Model {
	t.Helper()
	m, err := model.Open(shared.Path(t, "assets", "models", "stories260K.gguf"), model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// TestTokenNLLGolden: the mean loss over the golden batch (2 × 32 tokens)
// equals the float64 reference's base loss within 1e-5 relative.
func TestTokenNLLGolden(t *testing.T) {
	var g struct {
		Batch    [][]int `json:"batch"`
		BaseLoss float64 `json:"base_loss_without_lora"`
	}
	b, err := os.ReadFile(shared.Path(t, "golden", "stories260K", "lora_grads.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &g); err != nil {
		t.Fatal(err)
	}
	m := openStories(t)
	st := m.NewState(32)
	logits := make([]float32, 32*m.Config.Vocab)
	var sum float64
	var n int
	for _, seq := range g.Batch {
		s, k, err := TokenNLL(m, st, logits, seq, 1)
		if err != nil {
			t.Fatal(err)
		}
		sum += s
		n += k
	}
	loss := sum / float64(n)
	if n != 62 || math.Abs(loss-g.BaseLoss)/g.BaseLoss > 1e-5 {
		t.Fatalf("loss %.7f over %d tokens, golden %.7f over 62", loss, n, g.BaseLoss)
	}
	// A window fed through the cache in chunks of 5 positions scores the
	// same as all at once.
	var chunked float64
	for _, seq := range g.Batch {
		s, _, err := TokenNLL(m, st, logits[:5*m.Config.Vocab], seq, 1)
		if err != nil {
			t.Fatal(err)
		}
		chunked += s
	}
	if math.Abs(chunked-sum)/sum > 1e-5 {
		t.Fatalf("chunked NLL %.7f, whole %.7f", chunked, sum)
	}
	// Windows: scoring with a window of 9 covers every token once too.
	small := m.NewState(9)
	s, k, err := TokenNLL(m, small, logits, g.Batch[0], 1)
	if err != nil || k != 31 || !(s > 0) {
		t.Fatalf("windowed: %v %d %g", err, k, s)
	}
}

func TestEvalLMAndClassify(t *testing.T) {
	m := openStories(t)
	ctx := context.Background()
	in, _, err := data.Load(shared.Path(t, "assets", "data", "tinystories", "sample.txt"))
	if err != nil {
		t.Fatal(err)
	}
	out, _, err := data.Load(shared.Path(t, "assets", "data", "tinyshakespeare", "valid.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	ri, err := EvalLM(ctx, m, in, data.Text, EvalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ro, err := EvalLM(ctx, m, out[:20], data.Text, EvalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("TinyStories loss %.3f ppl %.2f (%d tokens); Shakespeare loss %.3f ppl %.2f", ri.Loss, ri.PPL, ri.Tokens, ro.Loss, ro.PPL)
	// A TinyStories model must find its own domain far easier than Shakespeare.
	if !(ri.Loss+1 < ro.Loss) || math.Abs(ri.PPL-math.Exp(ri.Loss)) > 1e-9 {
		t.Fatalf("in-domain %+v vs out-of-domain %+v", ri, ro)
	}
	// Completion records score only the completion's tokens.
	comp := []data.Record{{Prompt: "Once upon a time", Completion: ", there was a little girl named Lily."}}
	rc, err := EvalLM(ctx, m, comp, data.Completion, EvalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	full := m.Tokenizer.Encode(comp[0].Prompt+comp[0].Completion, true)
	prompt := m.Tokenizer.Encode(comp[0].Prompt, true)
	if rc.Tokens != len(full)-len(prompt) {
		t.Fatalf("completion scored %d tokens, want %d", rc.Tokens, len(full)-len(prompt))
	}
	// The model's own greedy continuation is an easy choice to recognise.
	cls := []data.Record{
		{Prompt: "Once upon a time", Choices: []string{", there was a little girl named Lily.", " purple quantum llama taxes."}, Label: 0},
		{Prompt: "Once upon a time", Choices: []string{" zebra xylophone quark.", ", there was a little girl named Lily."}, Label: 1},
	}
	rcl, err := EvalClassify(ctx, m, cls, EvalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rcl.Accuracy != 1 || rcl.N != 2 {
		t.Fatalf("classification %+v", rcl)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := EvalLM(cctx, m, in, data.Text, EvalOptions{}); err == nil {
		t.Fatal("cancelled context ignored")
	}
}
