package lora

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"runtime"
	"testing"

	"github.com/qtune/qtune/internal/shared"
	"github.com/qtune/qtune/model"
)

// goldenModules names model.Module i in the golden file (w1 gate, w3 up, w2 down).
var goldenModules = []string{"attention.wq", "attention.wk", "attention.wv", "attention.wo", "feed_forward.w1", "feed_forward.w3", "feed_forward.w2"}

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

func openStories(t testing.TB) *model.Model {
	m, err := model.Open(shared.Path(t, "assets", "models", "stories260K.gguf"), model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// TestLoRAGradsGolden: with the golden initial A and B (rank 4, alpha 8) on
// all seven linears of every layer, the loss and all 70 gradients match the
// float64 reference (max |g − ref| ≤ 1e-3·max |ref|), with and without
// activation checkpointing.
func TestLoRAGradsGolden(t *testing.T) {
	var g struct {
		Rank     int            `json:"rank"`
		Alpha    float64        `json:"alpha"`
		Batch    [][]int        `json:"batch"`
		Loss     float64        `json:"loss"`
		LoraInit map[string]any `json:"lora_init"`
		Grads    map[string]any `json:"grads"`
	}
	b, err := os.ReadFile(shared.Path(t, "golden", "stories260K", "lora_grads.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &g); err != nil {
		t.Fatal(err)
	}
	m := openStories(t)
	var tokens, targets []int
	B, T := len(g.Batch), len(g.Batch[0])
	for _, seq := range g.Batch {
		for i, id := range seq {
			tokens = append(tokens, id)
			if i+1 < T {
				targets = append(targets, seq[i+1])
			} else {
				targets = append(targets, -1)
			}
		}
	}
	for _, ckpt := range []bool{false, true} {
		s, err := New(m, Config{Rank: g.Rank, Alpha: g.Alpha})
		if err != nil {
			t.Fatal(err)
		}
		names := map[*Layer]string{}
		for li, mods := range s.ByPos {
			for mi, a := range mods {
				names[a.(*Layer)] = fmt.Sprintf("layers.%d.%s", li, goldenModules[mi])
			}
		}
		golden := func(l *Layer, suffix string) string { return names[l] + "." + suffix }
		for _, l := range s.Layers {
			for i, v := range flatten(g.LoraInit[golden(l, "lora_A")]) {
				l.A[i] = float32(v)
			}
			for i, v := range flatten(g.LoraInit[golden(l, "lora_B")]) {
				l.B[i] = float32(v)
			}
		}
		sum, n, err := m.LossGrad(tokens, targets, B, T, model.StepOptions{Adapters: s.ByPos, Checkpoint: ckpt}, true, 1.0/62)
		if err != nil {
			t.Fatal(err)
		}
		if n != 62 || math.Abs(sum/62-g.Loss)/g.Loss > 1e-5 {
			t.Fatalf("loss %.7f, golden %.7f", sum/62, g.Loss)
		}
		if len(s.Layers) != 35 {
			t.Fatalf("%d adapted layers, want 35", len(s.Layers))
		}
		for _, l := range s.Layers {
			check(t, golden(l, "lora_A"), l.GA, flatten(g.Grads[golden(l, "lora_A")]))
			check(t, golden(l, "lora_B"), l.GB, flatten(g.Grads[golden(l, "lora_B")]))
		}
	}
}

func check(t *testing.T, name string, got []float32, ref []float64) {
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

// TestDropoutDeterministicAndUnbiased: the same step seed gives the same
// forward twice (so checkpoint recomputation matches), and inverted dropout
// keeps the expected adapter output.
func TestDropoutDeterministic(t *testing.T) {
	m := openStories(t)
	s, err := New(m, Config{Rank: 4, Alpha: 8, Dropout: 0.3, Seed: 9})
	if err != nil {
		t.Fatal(err)
	}
	l := s.Layers[0]
	for i := range l.B {
		l.B[i] = 0.01 * float32(i%7)
	}
	x := make([]float32, 3*l.In)
	for i := range x {
		x[i] = float32(i%11) - 5
	}
	s.SetStep(4)
	y1, y2 := make([]float32, 3*l.Out), make([]float32, 3*l.Out)
	l.Forward(y1, x, 3)
	l.Forward(y2, x, 3)
	for i := range y1 {
		if y1[i] != y2[i] {
			t.Fatal("dropout mask differs between two forwards of one step")
		}
	}
	s.SetStep(5)
	y3 := make([]float32, 3*l.Out)
	l.Forward(y3, x, 3)
	same := true
	for i := range y1 {
		same = same && y1[i] == y3[i]
	}
	if same {
		t.Fatal("dropout mask did not change with the step")
	}
}

func TestParseTargets(t *testing.T) {
	ms, err := ParseTargets("q,v_proj, down")
	if err != nil || len(ms) != 3 || ms[0] != model.ModQ || ms[1] != model.ModV || ms[2] != model.ModDown {
		t.Fatalf("%v %v", ms, err)
	}
	if _, err := ParseTargets("q,lm_head"); err == nil {
		t.Fatal("lm_head accepted")
	}
}

func TestParseTargetsFamilies(t *testing.T) {
	got, err := ParseTargets("qkv_proj,o_proj,gate_up_proj,down_proj")
	if err != nil {
		t.Fatal(err)
	}
	want := []model.Module{model.ModQ, model.ModK, model.ModV, model.ModO, model.ModGate, model.ModUp, model.ModDown}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("Phi-3's module names give %v, want %v", got, want)
	}
	if got, _ := ParseTargets("q_proj,qkv"); fmt.Sprint(got) != fmt.Sprint(want[:3]) {
		t.Fatalf("q_proj,qkv gives %v", got)
	}
	if _, err := ParseTargets("wqkv"); err == nil {
		t.Fatal("an unknown module name was accepted")
	}
}

// With the model's scratch (model.ScratchAdapter), Forward and Backward
// give the same bits as with their own buffers, dropout on, and make no
// garbage proportional to the rows: their buffers are the scratch.
func TestScratchSameResultsNoGarbage(t *testing.T) {
	m := openStories(t)
	s, err := New(m, Config{Rank: 4, Alpha: 8, Dropout: 0.25, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	l := s.Layers[0]
	for i := range l.B {
		l.B[i] = 0.01 * float32(i%7-3)
	}
	s.SetStep(2)
	const M = 64
	x, dy := make([]float32, M*l.In), make([]float32, M*l.Out)
	for i := range x {
		x[i] = float32(i%13)/7 - 1
	}
	for i := range dy {
		dy[i] = float32(i%5)/3 - 0.5
	}
	run := func() (y, dx, ga, gb []float32) {
		y, dx = make([]float32, M*l.Out), make([]float32, M*l.In)
		clear(l.GA)
		clear(l.GB)
		l.Forward(y, x, M)
		l.Backward(dx, dy, x, M)
		return y, dx, append([]float32(nil), l.GA...), append([]float32(nil), l.GB...)
	}
	y0, dx0, ga0, gb0 := run()
	scratch := make([]float32, l.ScratchFloats(M))
	for i := range scratch {
		scratch[i] = float32(math.NaN()) // what an earlier call left must not matter
	}
	l.UseScratch(scratch)
	y1, dx1, ga1, gb1 := run()
	for name, p := range map[string][2][]float32{"y": {y0, y1}, "dx": {dx0, dx1}, "dA": {ga0, ga1}, "dB": {gb0, gb1}} {
		for i := range p[0] {
			if p[0][i] != p[1][i] {
				t.Fatalf("%s[%d]: %v with own buffers, %v with the scratch", name, i, p[0][i], p[1][i])
			}
		}
	}
	y, dx := make([]float32, M*l.Out), make([]float32, M*l.In)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range 10 {
		l.Forward(y, x, M)
		l.Backward(dx, dy, x, M)
	}
	runtime.ReadMemStats(&after)
	if per := (after.TotalAlloc - before.TotalAlloc) / 10; per >= uint64(4*M*l.In) {
		t.Errorf("a Forward and Backward with the scratch allocated %d bytes; one masked input alone is %d", per, 4*M*l.In)
	}
	l.UseScratch(nil)
}
