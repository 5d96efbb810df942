package train

import (
	"context"
	"strings"
	"testing"

	"github.com/qtune/qtune/budget"
	"github.com/qtune/qtune/data"
	"github.com/qtune/qtune/methods/lora"
	"github.com/qtune/qtune/model"
)

// LoRA's values, gradients and AdamW moments live in slabs of the model's
// accountant (booked as trainable parameters, gradients and optimizer
// state), not on the Go heap, and go back when the run ends.
func TestLoRATensorsAndMomentsInSlabs(t *testing.T) {
	m := openStories(t)
	m.Acct = budget.NewAccountant(0)
	cfg := smallRun(t, t.TempDir())
	cfg.moments = &slabMoments{m: m}
	cfg.tensors = &slabSet{}
	meth, err := newMethod(m, cfg)
	if err != nil {
		t.Fatal(err)
	}
	// as Run does: the plan's optimizer state is booked, then becomes slabs
	want := 8 * meth.Trainable()
	if err := m.Acct.Reserve(budget.OptimizerState, -1, want); err != nil {
		t.Fatal(err)
	}
	cfg.moments.left = want
	const B, T = 2, 16
	b := data.Batch{B: B, T: T, Tokens: make([]int, B*T), Targets: make([]int, B*T), Lengths: []int{T, T}}
	for i := range b.Tokens {
		b.Tokens[i], b.Targets[i] = 1+i%50, 1+(i+1)%50
	}
	if _, _, err := meth.Step(context.Background(), 1, []data.Batch{b}, 1e-3); err != nil {
		t.Fatal(err)
	}
	// The step's own slabs went back to the cache; what stays mapped once
	// the cache is trimmed is the values and gradients (8 bytes a value)
	// and the moments (8 more), these in place of their booking. Each of
	// the three slabs rounds up to pages and 64-byte aligned pieces.
	m.Acct.Trim()
	slack := int64(3*4096 + 64*len(meth.Tensors()))
	if mapped := m.Acct.Mapped(); mapped < 2*want || mapped > 2*want+slack {
		t.Errorf("slabs mapped after a step: %d bytes; values, gradients and moments of %d values are %d", mapped, meth.Trainable(), 2*want)
	}
	if live := m.Acct.Live(); live != m.Acct.Mapped() {
		t.Errorf("booked %d bytes, mapped %d: the booking did not become the slabs", live, m.Acct.Mapped())
	}
	cfg.moments.free()
	cfg.tensors.free()
	m.Acct.Trim()
	if live, mapped := m.Acct.Live(), m.Acct.Mapped(); live != 0 || mapped != 0 {
		t.Errorf("after the moments were freed: %d bytes booked, %d mapped", live, mapped)
	}
}

// A run leaves no slab mapped behind it (an app that embeds qtune and
// trains several times keeps no memory of earlier runs).
func TestRunLeavesNoSlabs(t *testing.T) {
	before := budget.SlabBytes()
	cfg := smallRun(t, t.TempDir())
	cfg.Iters, cfg.StepsPerEval, cfg.SaveEvery = 2, 2, 2
	cfg.MaxMem = "64MiB"
	if _, err := Run(context.Background(), cfg, nil, nil); err != nil {
		t.Fatal(err)
	}
	if after := budget.SlabBytes(); after != before {
		t.Errorf("slabs mapped: %d bytes before the run, %d after", before, after)
	}
}

// An adapter applied for generation or evaluation is in the plan: its
// values are an item, and the planned peak rises by them.
func TestPlanCountsAppliedAdapter(t *testing.T) {
	m := openStories(t)
	without, err := PlanGenerate(m, 64, 8, 0)
	if err != nil {
		t.Fatal(err)
	}
	set, err := lora.New(m, lora.Config{Rank: 8, Alpha: 16, NoGrads: true})
	if err != nil {
		t.Fatal(err)
	}
	m.Adapters = set.ByPos
	want := model.AdapterBytes(m.Adapters)
	if want != 4*set.Params() {
		t.Fatalf("adapter bytes %d, want 4 per value (%d)", want, 4*set.Params())
	}
	for name, plan := range map[string]func() (*budget.Plan, error){
		"generate": func() (*budget.Plan, error) { return PlanGenerate(m, 64, 8, 0) },
		"eval":     func() (*budget.Plan, error) { return PlanEval(m, 64, 1000, 0) },
	} {
		p, err := plan()
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, it := range p.Items {
			found = found || it.Category == budget.Trainable && it.Bytes == want && strings.Contains(it.Note, "adapter")
		}
		if !found {
			t.Errorf("%s: no item of the applied adapter's %d bytes:\n%s", name, want, p)
		}
	}
	with, _ := PlanGenerate(m, 64, 8, 0)
	if with.Peak-without.Peak < want {
		t.Errorf("generate's peak rose by %d with the adapter, its values are %d", with.Peak-without.Peak, want)
	}
}
