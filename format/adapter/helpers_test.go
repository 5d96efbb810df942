package adapter

import (
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

// shapes of a tiny Llama: C channels, F feed-forward, H heads of D, KV heads.
type dims struct{ C, F, H, KV, D int }

// outIn returns (Out, In) of a kind's base matrix.
func (d dims) outIn(kind string) (int, int) {
	switch kind {
	case "q":
		return d.H * d.D, d.C
	case "k", "v":
		return d.KV * d.D, d.C
	case "o":
		return d.C, d.H * d.D
	case "gate", "up":
		return d.F, d.C
	case "down":
		return d.C, d.F
	}
	panic(kind)
}

// newAdapter builds an adapter with random A and B on the given layers and
// kinds, in canonical order.
func newAdapter(seed uint64, d dims, rank int, layers []int, kinds []string) *Adapter {
	rng := rand.New(rand.NewPCG(seed, 1))
	a := &Adapter{Rank: rank, Alpha: 16, Dropout: 0.05, Targets: kinds, BaseModel: "meta-llama/Llama-3.2-1B"}
	for _, n := range layers {
		for _, k := range kinds {
			out, in := d.outIn(k)
			name, _ := TargetName(n, k)
			l := LoRA{Target: name, In: in, Out: out, Rank: rank, A: make([]float32, rank*in), B: make([]float32, out*rank)}
			for i := range l.A {
				l.A[i] = float32(rng.NormFloat64())
			}
			for i := range l.B {
				l.B[i] = float32(rng.NormFloat64() * 0.1)
			}
			a.Layers = append(a.Layers, l)
		}
	}
	return a
}

var tiny = dims{C: 16, F: 24, H: 4, KV: 2, D: 4}

// sameAdapter fails unless got equals want, with values within rel·|x| (+
// abs) of each other (0, 0 for identical).
func sameAdapter(t *testing.T, got, want *Adapter, rel, abs float64) {
	t.Helper()
	if got.Rank != want.Rank || got.Alpha != want.Alpha || got.Dropout != want.Dropout || got.BaseModel != want.BaseModel || got.UseRSLoRA != want.UseRSLoRA {
		t.Fatalf("hyper-parameters: got %+v, want %+v", hyper(got), hyper(want))
	}
	if strings.Join(got.Targets, ",") != strings.Join(want.Targets, ",") {
		t.Fatalf("targets %v, want %v", got.Targets, want.Targets)
	}
	if len(got.Layers) != len(want.Layers) {
		t.Fatalf("%d layers, want %d", len(got.Layers), len(want.Layers))
	}
	for i := range want.Layers {
		g, w := &got.Layers[i], &want.Layers[i]
		if g.Target != w.Target || g.In != w.In || g.Out != w.Out || g.Rank != w.Rank {
			t.Fatalf("layer %d: %s (%d, %d) R %d, want %s (%d, %d) R %d", i, g.Target, g.Out, g.In, g.Rank, w.Target, w.Out, w.In, w.Rank)
		}
		closeSlices(t, g.Target+" A", g.A, w.A, rel, abs)
		closeSlices(t, g.Target+" B", g.B, w.B, rel, abs)
	}
}

func closeSlices(t *testing.T, what string, got, want []float32, rel, abs float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, want %d", what, len(got), len(want))
	}
	for i := range want {
		g, w := float64(got[i]), float64(want[i])
		if rel == 0 && abs == 0 {
			if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
				t.Fatalf("%s[%d] = %v, want %v", what, i, g, w)
			}
			continue
		}
		if math.Abs(g-w) > rel*math.Abs(w)+abs {
			t.Fatalf("%s[%d] = %v, want %v ± %g", what, i, g, w, rel*math.Abs(w)+abs)
		}
	}
}

type hyperParams struct {
	Rank           int
	Alpha, Dropout float64
	Base           string
	RS             bool
}

func hyper(a *Adapter) hyperParams {
	return hyperParams{a.Rank, a.Alpha, a.Dropout, a.BaseModel, a.UseRSLoRA}
}

// wantErr fails unless err matches kind, starts with "adapter: " and
// contains every one of subs.
func wantErr(t *testing.T, err, kind error, subs ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %v", kind)
	}
	if kind != nil && !errors.Is(err, kind) {
		t.Fatalf("error %q does not match %v", err, kind)
	}
	if !strings.HasPrefix(err.Error(), "adapter: ") {
		t.Fatalf("error %q lacks the adapter: prefix", err)
	}
	for _, s := range subs {
		if !strings.Contains(err.Error(), s) {
			t.Fatalf("error %q does not mention %q", err, s)
		}
	}
}
