package adapter

import (
	"math"
	"testing"
)

func TestScale(t *testing.T) {
	for _, c := range []struct {
		a    Adapter
		want float64
	}{
		{Adapter{Rank: 8, Alpha: 16}, 2},
		{Adapter{Rank: 16, Alpha: 16, UseRSLoRA: true}, 4},
		{Adapter{Rank: 0, Alpha: 16}, 0},
	} {
		if got := c.a.Scale(); got != c.want {
			t.Errorf("%+v: Scale %v, want %v", c.a, got, c.want)
		}
	}
}

func TestTargetNames(t *testing.T) {
	for _, c := range []struct {
		layer      int
		kind, name string
	}{
		{0, "q", "blk.0.attn_q.weight"},
		{3, "k", "blk.3.attn_k.weight"},
		{12, "v", "blk.12.attn_v.weight"},
		{1, "o", "blk.1.attn_output.weight"},
		{7, "gate", "blk.7.ffn_gate.weight"},
		{7, "up", "blk.7.ffn_up.weight"},
		{7, "down", "blk.7.ffn_down.weight"},
	} {
		name, ok := TargetName(c.layer, c.kind)
		if !ok || name != c.name {
			t.Errorf("TargetName(%d, %q) = %q, %v; want %q", c.layer, c.kind, name, ok, c.name)
		}
		l, k, ok := ParseTarget(c.name)
		if !ok || l != c.layer || k != c.kind {
			t.Errorf("ParseTarget(%q) = %d, %q, %v", c.name, l, k, ok)
		}
	}
	for _, bad := range []string{"blk.01.attn_q.weight", "blk.-1.attn_q.weight", "blk.1.attn_norm.weight", "token_embd.weight",
		"output.weight", "blk.1.attn_q.bias", "blk..attn_q.weight", "blk.1234567.attn_q.weight", "model.layers.0.self_attn.q_proj.weight"} {
		if _, _, ok := ParseTarget(bad); ok {
			t.Errorf("ParseTarget(%q) accepted", bad)
		}
	}
	if _, ok := TargetName(0, "lm_head"); ok {
		t.Error("TargetName accepted lm_head")
	}
	if got := Kinds(); len(got) != 7 || got[0] != "q" || got[6] != "down" {
		t.Errorf("Kinds() = %v", got)
	}
}

// TestDelta compares Delta with the triple loop in float64, and DeltaRows
// tiles with Delta.
func TestDelta(t *testing.T) {
	a := newAdapter(7, tiny, 3, []int{0}, []string{"gate"})
	l := &a.Layers[0]
	base := make([]float32, l.Out*l.In)
	for i := range base {
		base[i] = float32(i%7) - 3
	}
	const scale = 2.5
	got := append([]float32(nil), base...)
	l.Delta(scale, got)
	for o := 0; o < l.Out; o++ {
		for i := 0; i < l.In; i++ {
			var s float64
			for r := 0; r < l.Rank; r++ {
				s += float64(l.B[o*l.Rank+r]) * float64(l.A[r*l.In+i])
			}
			want := float64(base[o*l.In+i]) + scale*s
			if d := math.Abs(float64(got[o*l.In+i]) - want); d > 1e-5*(1+math.Abs(want)) {
				t.Fatalf("dst[%d, %d] = %v, want %v", o, i, got[o*l.In+i], want)
			}
		}
	}
	// The same in tiles of 5 rows (the last one short).
	tiles := append([]float32(nil), base...)
	for r0 := 0; r0 < l.Out; r0 += 5 {
		r1 := min(r0+5, l.Out)
		l.DeltaRows(scale, tiles[r0*l.In:r1*l.In], r0)
	}
	closeSlices(t, "tiles", tiles, got, 0, 0)

	defer func() {
		if recover() == nil {
			t.Error("Delta with a short dst did not panic")
		}
	}()
	l.Delta(1, make([]float32, 3))
}

func TestCheckRejects(t *testing.T) {
	for _, c := range []struct {
		name   string
		modify func(a *Adapter)
		sub    string
	}{
		{"nil layers", func(a *Adapter) { a.Layers = nil }, "no layers"},
		{"rank", func(a *Adapter) { a.Rank = 0 }, "rank 0"},
		{"alpha", func(a *Adapter) { a.Alpha = math.NaN() }, "alpha"},
		{"dropout", func(a *Adapter) { a.Dropout = 1 }, "dropout"},
		{"target kind", func(a *Adapter) { a.Targets = []string{"q", "lm_head"} }, `"lm_head"`},
		{"kind twice", func(a *Adapter) { a.Targets = []string{"q", "q"} }, "twice"},
		{"kind not in targets", func(a *Adapter) { a.Targets = []string{"q"} }, `kind "v" is not in Targets`},
		{"bad target", func(a *Adapter) { a.Layers[0].Target = "token_embd.weight" }, "token_embd.weight"},
		{"duplicate", func(a *Adapter) { a.Layers[1].Target = a.Layers[0].Target }, "twice"},
		{"layer rank", func(a *Adapter) { a.Layers[0].Rank = 3 }, "rank 3"},
		{"short A", func(a *Adapter) { a.Layers[0].A = a.Layers[0].A[1:] }, "A has"},
		{"short B", func(a *Adapter) { a.Layers[1].B = a.Layers[1].B[1:] }, "B has"},
	} {
		a := newAdapter(1, tiny, 2, []int{0}, []string{"q", "v"})
		c.modify(a)
		_, err := check(a)
		wantErr(t, err, ErrInvalid, c.sub)
	}
	_, err := check(nil)
	wantErr(t, err, ErrInvalid, "nil")
}
