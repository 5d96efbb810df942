package model

import (
	"math"
	"testing"

	"github.com/qtune/qtune/internal/shared"
	"github.com/qtune/qtune/offload"
)

// golden names of full_grads.json → GGUF tensor names.
var fullGradNames = map[string]string{
	"layers.0.attention_norm.weight":  "blk.0.attn_norm.weight",
	"layers.0.attention.wq.weight":    "blk.0.attn_q.weight",
	"layers.0.attention.wk.weight":    "blk.0.attn_k.weight",
	"layers.0.attention.wv.weight":    "blk.0.attn_v.weight",
	"layers.0.attention.wo.weight":    "blk.0.attn_output.weight",
	"layers.0.ffn_norm.weight":        "blk.0.ffn_norm.weight",
	"layers.0.feed_forward.w1.weight": "blk.0.ffn_gate.weight",
	"layers.0.feed_forward.w2.weight": "blk.0.ffn_down.weight",
	"layers.0.feed_forward.w3.weight": "blk.0.ffn_up.weight",
	"norm.weight":                     "output_norm.weight",
	"output.weight":                   "output.weight",
	"tok_embeddings.weight":           "token_embd.weight",
}

// GoldenBatch turns the golden 2×32 batch into tokens and shifted targets.
func goldenBatch(batch [][]int) (tokens, targets []int, B, T int) {
	B, T = len(batch), len(batch[0])
	for _, seq := range batch {
		for t, id := range seq {
			tokens = append(tokens, id)
			if t+1 < T {
				targets = append(targets, seq[t+1])
			} else {
				targets = append(targets, -1)
			}
		}
	}
	return
}

func flatten(v any) []float64 {
	switch x := v.(type) {
	case float64:
		return []float64{x}
	case []any:
		var out []float64
		for _, e := range x {
			out = append(out, flatten(e)...)
		}
		return out
	}
	return nil
}

// compareGrad applies the golden tolerance: max |g − ref| ≤ 1e-3·max |ref|.
func compareGrad(t *testing.T, name string, got []float32, ref []float64) {
	t.Helper()
	if len(got) != len(ref) {
		t.Fatalf("%s: %d values, golden %d", name, len(got), len(ref))
	}
	var worst, big float64
	for i, r := range ref {
		big = math.Max(big, math.Abs(r))
		worst = math.Max(worst, math.Abs(float64(got[i])-r))
	}
	if worst > 1e-3*big || math.IsNaN(worst) {
		t.Errorf("%s: max |g − ref| = %.3g > 1e-3 · %.3g", name, worst, big)
	}
}

// TestFullGradsGolden: gradients of every weight of layer 0, the final norm,
// the output projection and the embedding match the float64 reference, with
// and without activation checkpointing (which must give identical values).
func TestFullGradsGolden(t *testing.T) {
	var g struct {
		Batch [][]int        `json:"batch"`
		Loss  float64        `json:"loss"`
		Grads map[string]any `json:"grads"`
	}
	readJSON(t, shared.Path(t, "golden", "stories260K", "full_grads.json"), &g)
	m := openStories(t)
	tokens, targets, B, T := goldenBatch(g.Batch)
	var first map[string][]float32
	for _, ckpt := range []bool{false, true} {
		grads := map[string][]float32{}
		for _, name := range fullGradNames {
			grads[name] = make([]float32, tensorElems(m, name))
		}
		sum, n, err := m.LossGrad(tokens, targets, B, T, StepOptions{WeightGrads: grads, Checkpoint: ckpt}, true, 1.0/62)
		if err != nil {
			t.Fatal(err)
		}
		if n != 62 || math.Abs(sum/62-g.Loss)/g.Loss > 1e-5 {
			t.Fatalf("loss %.7f over %d, golden %.7f", sum/float64(n), n, g.Loss)
		}
		for gold, name := range fullGradNames {
			compareGrad(t, gold, grads[name], flatten(g.Grads[gold]))
		}
		if first == nil {
			first = grads
			continue
		}
		for name, v := range grads {
			for i := range v {
				if math.Float32bits(v[i]) != math.Float32bits(first[name][i]) {
					t.Fatalf("checkpointing changed %s[%d]: %g vs %g", name, i, v[i], first[name][i])
				}
			}
		}
	}
}

func tensorElems(m *Model, name string) int64 {
	for _, t := range m.Tensors {
		if t.Name == name {
			return t.Elems()
		}
	}
	panic("no tensor " + name)
}

// TestLossGradForwardOnly: without backward the summed loss equals the
// eval path's, and FirstLayer stops gradients below it.
func TestLossGradFirstLayer(t *testing.T) {
	m := openStories(t)
	tokens := []int{1, 403, 407, 261, 378, 432}
	targets := []int{403, 407, 261, 378, 432, -1}
	grads := map[string][]float32{"blk.0.attn_q.weight": make([]float32, 64*64), "blk.3.attn_q.weight": make([]float32, 64*64)}
	if _, _, err := m.LossGrad(tokens, targets, 1, 6, StepOptions{WeightGrads: grads, FirstLayer: 2}, true, 1); err != nil {
		t.Fatal(err)
	}
	nz := func(v []float32) bool {
		for _, x := range v {
			if x != 0 {
				return true
			}
		}
		return false
	}
	if nz(grads["blk.0.attn_q.weight"]) || !nz(grads["blk.3.attn_q.weight"]) {
		t.Fatal("FirstLayer=2: gradient reached layer 0 or missed layer 3")
	}
	if _, _, err := m.LossGrad(tokens, []int{1, 2}, 1, 6, StepOptions{}, false, 1); err == nil {
		t.Fatal("mismatched targets accepted")
	}
}

// TestSpillGivesSameGradients: checkpointed block inputs kept in a
// file-backed scratch (evicted between passes) give bit-identical
// gradients to keeping them on the heap.
func TestSpillGivesSameGradients(t *testing.T) {
	m := openStories(t)
	tokens := []int{1, 403, 407, 261, 378, 432, 383, 286}
	targets := []int{403, 407, 261, 378, 432, 383, 286, -1}
	run := func() []float32 {
		g := map[string][]float32{"blk.1.attn_q.weight": make([]float32, 64*64)}
		if _, _, err := m.LossGrad(tokens, targets, 1, 8, StepOptions{WeightGrads: g, Checkpoint: true}, true, 1); err != nil {
			t.Fatal(err)
		}
		return g["blk.1.attn_q.weight"]
	}
	heap := run()
	sp, err := offload.NewScratch(t.TempDir(), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	m.Spill = sp
	defer func() { m.Spill = nil }()
	for rep := 0; rep < 2; rep++ { // the scratch is reused step after step
		spilled := run()
		for i := range heap {
			if math.Float32bits(heap[i]) != math.Float32bits(spilled[i]) {
				t.Fatalf("step %d: gradient %d: %v spilled, %v on the heap", rep, i, spilled[i], heap[i])
			}
		}
	}
}
