package model

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/qtune/qtune/budget"
	"github.com/qtune/qtune/internal/shared"
	"github.com/qtune/qtune/quant"
)

type forwardGolden struct {
	Vocab int `json:"vocab"`
	Cases []struct {
		Name            string      `json:"name"`
		Tokens          []int       `json:"tokens"`
		Logits          [][]float32 `json:"logits"`
		FinalHiddenLast []float32   `json:"final_hidden_last"`
	} `json:"cases"`
}

type greedyGolden struct {
	Cases []struct {
		PromptText   string `json:"prompt_text"`
		PromptIDs    []int  `json:"prompt_ids"`
		NNew         int    `json:"n_new"`
		GeneratedIDs []int  `json:"generated_ids"`
	} `json:"cases"`
}

func readJSON(t testing.TB, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatal(err)
	}
}

func openStories(t testing.TB) *Model {
	t.Helper()
	m, err := Open(shared.Path(t, "assets", "models", "stories260K.gguf"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// checkForward compares every position's logits and the last final hidden
// state with the golden file (tolerance 1e-4 absolute, from its README).
func checkForward(t *testing.T, m *Model, tol float64) {
	var g forwardGolden
	readJSON(t, shared.Path(t, "golden", "stories260K", "forward.json"), &g)
	if len(g.Cases) != 5 {
		t.Fatalf("golden has %d cases", len(g.Cases))
	}
	for _, c := range g.Cases {
		s := m.NewState(len(c.Tokens))
		logits := make([]float32, len(c.Tokens)*g.Vocab)
		if err := m.Forward(s, c.Tokens, logits, true); err != nil {
			t.Fatal(err)
		}
		var worst float64
		for tpos, row := range c.Logits {
			for v, want := range row {
				worst = math.Max(worst, math.Abs(float64(logits[tpos*g.Vocab+v]-want)))
			}
		}
		for i, want := range c.FinalHiddenLast {
			worst = math.Max(worst, math.Abs(float64(s.Hidden[i]-want)))
		}
		if worst > tol {
			t.Errorf("%s: max |logit - golden| = %.3g > %g", c.Name, worst, tol)
		} else {
			t.Logf("%s (n=%d): max abs diff %.3g", c.Name, len(c.Tokens), worst)
		}
	}
}

func TestForwardGoldenGGUF(t *testing.T) {
	checkForward(t, openStories(t), 1e-4)
}

func TestForwardGoldenLlama2C(t *testing.T) {
	m, err := Open(shared.Path(t, "assets", "models", "llama2c", "stories260K.bin"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if m.Format != "llama2c" {
		t.Fatalf("format %q", m.Format)
	}
	checkForward(t, m, 1e-4)
}

// TestForwardIncrementalMatchesBatch: feeding tokens one at a time through
// the KV cache gives the same logits as one batched forward.
func TestForwardIncrementalMatchesBatch(t *testing.T) {
	m := openStories(t)
	toks := []int{1, 403, 407, 261, 378, 432, 383, 286}
	V := m.Config.Vocab
	s := m.NewState(len(toks))
	all := make([]float32, len(toks)*V)
	if err := m.Forward(s, toks, all, true); err != nil {
		t.Fatal(err)
	}
	s2 := m.NewState(len(toks))
	one := make([]float32, V)
	for i, tok := range toks {
		if err := m.Forward(s2, []int{tok}, one, false); err != nil {
			t.Fatal(err)
		}
		for v := range one {
			if d := math.Abs(float64(one[v] - all[i*V+v])); d > 1e-4 {
				t.Fatalf("pos %d token %d: incremental %g batch %g", i, v, one[v], all[i*V+v])
			}
		}
	}
}

func TestGreedyGolden(t *testing.T) {
	var g greedyGolden
	readJSON(t, shared.Path(t, "golden", "stories260K", "greedy.json"), &g)
	m := openStories(t)
	for _, c := range g.Cases {
		ids := m.Tokenizer.Encode(c.PromptText, true)
		if !equalInts(ids, c.PromptIDs) {
			t.Fatalf("%q encodes to %v, golden %v", c.PromptText, ids, c.PromptIDs)
		}
		out, err := m.Generate(context.Background(), ids, GenerateOptions{MaxTokens: c.NNew})
		if err != nil {
			t.Fatal(err)
		}
		if !equalInts(out, c.GeneratedIDs) {
			t.Errorf("%q: generated %v\nwant %v", c.PromptText, out, c.GeneratedIDs)
		}
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// dequantizedTwin converts m to an all-F32 GGUF (each tensor dequantized
// by the quant codecs) and opens it: the same function, computed without
// the dequantizing kernels.
func dequantizedTwin(t *testing.T, m *Model) *Model {
	t.Helper()
	var buf bytes.Buffer
	if _, err := Quantize(m, &buf, quant.F32); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "f32.gguf")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := Open(p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func maxLogitDiff(t *testing.T, a, b *Model, toks []int) float64 {
	t.Helper()
	V := a.Config.Vocab
	la := make([]float32, len(toks)*V)
	lb := make([]float32, len(toks)*V)
	if err := a.Forward(a.NewState(len(toks)), toks, la, true); err != nil {
		t.Fatal(err)
	}
	if err := b.Forward(b.NewState(len(toks)), toks, lb, true); err != nil {
		t.Fatal(err)
	}
	var worst float64
	for i := range la {
		d := math.Abs(float64(la[i] - lb[i]))
		if math.IsNaN(d) {
			return math.Inf(1)
		}
		worst = math.Max(worst, d)
	}
	return worst
}

// TestQuantizedGoldenFiles: ggml's own F16/Q8_0/Q4_0 conversions of
// stories260K run through the dequantizing kernels exactly as the same
// weights expanded to F32 do.
func TestQuantizedGoldenFiles(t *testing.T) {
	toks := []int{1, 403, 407, 261, 378, 432, 383, 286, 261, 376}
	for _, file := range []string{"stories260K-f16.gguf", "stories260K-q8_0.gguf", "stories260K-q4_0.gguf"} {
		m, err := Open(shared.Path(t, "golden", "gguf", file), Options{})
		if err != nil {
			t.Fatal(err)
		}
		if d := maxLogitDiff(t, m, dequantizedTwin(t, m), toks); d > 1e-4 {
			t.Errorf("%s: logits differ from its F32 twin by %.3g", file, d)
		}
		m.Close()
	}
}

func TestForwardRejectsBadTokens(t *testing.T) {
	m := openStories(t)
	s := m.NewState(4)
	out := make([]float32, m.Config.Vocab)
	if err := m.Forward(s, []int{1, 512}, out, false); err == nil {
		t.Fatal("token 512 accepted by a 512-token vocabulary")
	}
	if err := m.Forward(s, []int{1, 2, 3, 4, 5}, out, false); err == nil {
		t.Fatal("5 tokens accepted by a state of 4")
	}
}

// TestStateReservations: a state books its KV cache with the accountant and
// gives it back on Free; Generate frees its own.
func TestStateReservations(t *testing.T) {
	m := openStories(t)
	m.Acct = budget.NewAccountant(0)
	defer func() { m.Acct = nil }()
	s := m.NewState(64)
	if got, want := m.Acct.Live(), m.Config.KVBytes(64); got != want {
		t.Fatalf("reserved %d, want the KV cache's %d", got, want)
	}
	s.Free()
	if m.Acct.Live() != 0 {
		t.Fatalf("%d bytes still reserved after Free", m.Acct.Live())
	}
	if _, err := m.Generate(context.Background(), []int{1, 403}, GenerateOptions{MaxTokens: 3}); err != nil {
		t.Fatal(err)
	}
	if m.Acct.Live() != 0 || m.Acct.Peak() == 0 {
		t.Fatalf("after Generate: used %d, peak %d", m.Acct.Live(), m.Acct.Peak())
	}
	m.Acct = budget.NewAccountant(1 << 10) // far too small for any cache
	if err := m.Forward(m.NewState(64), []int{1}, make([]float32, m.Config.Vocab), false); err == nil {
		t.Fatal("a state over the budget was usable")
	}
}
