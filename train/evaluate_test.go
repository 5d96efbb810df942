package train

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime/debug"
	"testing"

	"github.com/qtune/qtune/budget"
	"github.com/qtune/qtune/data"
	"github.com/qtune/qtune/internal/shared"
)

// Evaluate is `qtune eval` as a library call: its options are checked, bad
// data is a *data.Error, it plans before it runs (and can stop there), a
// budget that cannot hold it is refused, and it leaves the model's
// accounting and the heap limit as it found them.
func TestEvaluateLibraryCall(t *testing.T) {
	m := openStories(t)
	ctx := context.Background()
	valid := shared.Path(t, "assets", "data", "tinyshakespeare", "valid.jsonl")
	for _, o := range []EvaluateOptions{{}, {Data: valid, Limit: -1}, {Data: valid, MaxSeqLen: -3}, {Data: valid, MaxMem: -1}} {
		if _, err := Evaluate(ctx, m, o); !errors.Is(err, ErrBadOptions) {
			t.Errorf("%+v: %v, want ErrBadOptions", o, err)
		}
	}
	bad := filepath.Join(t.TempDir(), "bad.jsonl")
	if err := os.WriteFile(bad, []byte("{\"text\":\"a\"}\n{\"text\":\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var de *data.Error
	if _, err := Evaluate(ctx, m, EvaluateOptions{Data: bad}); !errors.As(err, &de) || de.Line != 2 || de.File != bad {
		t.Errorf("malformed line 2: %v", err)
	}

	acct := m.Acct
	planned := 0
	done := 0
	o := EvaluateOptions{Data: valid, Limit: 6, MaxMem: 64 << 20,
		OnPlan:   func(*budget.Plan) bool { planned++; return planned > 1 },
		Progress: func(d, total int) { done = d }}
	ev, err := Evaluate(ctx, m, o)
	if err != nil || ev.Plan == nil || ev.LM != nil || done != 0 {
		t.Fatalf("stopped at the plan: %v, %+v, %d records done", err, ev, done)
	}
	before := debug.SetMemoryLimit(-1)
	ev, err = Evaluate(ctx, m, o)
	if err != nil {
		t.Fatal(err)
	}
	if after := debug.SetMemoryLimit(-1); after != before {
		t.Errorf("the heap limit is %d after the call, %d before", after, before)
	}
	if m.Acct != acct {
		t.Error("the model's accountant was not put back")
	}
	if ev.Kind != data.Text || ev.LM == nil || ev.Class != nil || done != 6 {
		t.Fatalf("result %+v after %d records", ev, done)
	}
	// the same records scored directly
	recs, _, err := data.Load(valid)
	if err != nil {
		t.Fatal(err)
	}
	want, err := EvalLM(ctx, m, recs[:6], data.Text, EvalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if *ev.LM != want {
		t.Errorf("Evaluate %+v, EvalLM on the same 6 records %+v", *ev.LM, want)
	}
	o.MaxMem, o.OnPlan = 1<<20, nil
	if _, err := Evaluate(ctx, m, o); !errors.Is(err, budget.ErrNoFit) && !errors.Is(err, budget.ErrOverBudget) {
		t.Errorf("a 1 MiB budget: %v, want a budget error", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := Evaluate(cctx, m, EvaluateOptions{Data: valid, Limit: 2}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
}
