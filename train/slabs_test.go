package train

import (
	"context"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"unsafe"

	"github.com/qtune/qtune/budget"
	"github.com/qtune/qtune/data"
	"github.com/qtune/qtune/internal/synth"
	"github.com/qtune/qtune/methods/lora"
	"github.com/qtune/qtune/model"
	"github.com/qtune/qtune/quant"
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
	cfg.moments.left, cfg.moments.booked = want, true
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

// Every method keeps its state (values, gradients, index arrays, dense
// deltas, copies of float matrices, optimizer moments) in slabs of the
// model's accountant, not on the Go heap: after it is built and has
// stepped (LoReML past its transition), the live heap has grown by little,
// what is booked is within what the plan counts, and freeing the run's
// slabs leaves nothing booked or mapped, and the model as it was.
func TestEveryMethodStateInSlabs(t *testing.T) {
	q4 := filepath.Join(t.TempDir(), "15M.gguf")
	if err := synth.Write(q4, synth.Presets["15M"], quant.Q4_0, 1); err != nil {
		t.Fatal(err)
	}
	stories := smallRun(t, t.TempDir()).Model
	cases := []struct{ method, target, model string }{
		{"lora", "", q4}, {"mezo", "lora", q4}, {"mezo", "scales", q4}, {"mezo", "float", stories},
		{"loho", "", q4}, {"loho-intra", "complement", q4}, {"loho-intra", "lora", q4}, {"loreml", "", q4},
	}
	for _, c := range cases {
		t.Run(c.method+"-"+c.target, func(t *testing.T) {
			m, err := model.Open(c.model, model.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			m.Acct = budget.NewAccountant(0)
			cfg := smallRun(t, t.TempDir())
			cfg.Model, cfg.Method, cfg.ZOTarget = c.model, c.method, c.target
			cfg.Stage1Iters, cfg.FOLayers = 1, "3"
			cfg.moments = &slabMoments{m: m}
			cfg.tensors = &slabSet{}
			emb := m.Embed
			// Live heap, once the kernels' pooled scratch (sync.Pool, bounded
			// and counted as the runtime's) has gone with two collections.
			heap := func() uint64 {
				runtime.GC()
				runtime.GC()
				var ms runtime.MemStats
				runtime.ReadMemStats(&ms)
				return ms.HeapAlloc
			}
			const B, T = 2, 16
			b := data.Batch{B: B, T: T, Tokens: make([]int, B*T), Targets: make([]int, B*T), Lengths: []int{T, T}}
			for i := range b.Tokens {
				b.Tokens[i], b.Targets[i] = 1+i%50, 1+(i+1)%50
			}
			steps := func() Method {
				meth, err := newMethod(m, cfg)
				if err != nil {
					t.Fatal(err)
				}
				for it := 1; it <= 2; it++ {
					if _, _, err := meth.Step(context.Background(), it, []data.Batch{b}, 1e-3); err != nil {
						t.Fatal(err)
					}
				}
				return meth
			}
			// A first method warms what a step keeps for the next (the
			// kernels' free lists, the scorer's buffers), then goes.
			steps()
			cfg.moments.free()
			cfg.tensors.free()
			before := heap()
			meth := steps()
			state := meth.StateBytes()
			grown := int64(heap()) - int64(before)
			m.Acct.Trim()
			booked := m.Acct.SlabsOf(budget.Trainable) + m.Acct.SlabsOf(budget.Gradients) + m.Acct.SlabsOf(budget.OptimizerState)
			t.Logf("state %.2f MiB: %.2f MiB booked in slabs, live heap grew %.1f KiB", float64(state)/(1<<20), float64(booked)/(1<<20), float64(grown)/1024)
			if grown > 256<<10+state/20 {
				t.Errorf("the live heap grew %d bytes for a state of %d", grown, state)
			}
			if planned := state + 4096*int64(cfg.tensors.count()+laterSlabs(meth)); booked < state/3 || booked > planned {
				t.Errorf("%d bytes booked in slabs; the state is %d, the plan counts %d", booked, state, planned)
			}
			cfg.moments.free()
			cfg.tensors.free()
			if left := m.Acct.SlabsOf(budget.Trainable) + m.Acct.SlabsOf(budget.Gradients) + m.Acct.SlabsOf(budget.OptimizerState); left != 0 {
				t.Errorf("after the run's slabs were freed: %d bytes of the method's still booked", left)
			}
			if unsafe.SliceData(m.Embed.Data) != unsafe.SliceData(emb.Data) || m.Embed.Type != emb.Type {
				t.Error("the model's embedding is not its own after the slabs went")
			}
		})
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
	without, err := PlanGenerate(m, 64, 8, 0, "")
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
		"generate": func() (*budget.Plan, error) { return PlanGenerate(m, 64, 8, 0, "") },
		"eval":     func() (*budget.Plan, error) { return PlanEval(m, 64, 1000, 0, "") },
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
	with, _ := PlanGenerate(m, 64, 8, 0, "")
	if with.Peak-without.Peak < want {
		t.Errorf("generate's peak rose by %d with the adapter, its values are %d", with.Peak-without.Peak, want)
	}
}
