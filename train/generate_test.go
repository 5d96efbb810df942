package train

import (
	"context"
	"errors"
	"runtime/debug"
	"slices"
	"testing"

	"github.com/qtune/qtune/budget"
)

// Generate as a library call: options out of range are ErrBadOptions, the
// plan comes before any work (and can stop there), tokens stream as they
// are made, a budget too small is refused naming one that fits, and the
// Go heap's limit is the caller's again afterwards.
func TestGenerateLibraryCall(t *testing.T) {
	m := openStories(t)
	ctx := context.Background()
	for _, o := range []GenerateOptions{{MaxTokens: -1, TopP: 1}, {MaxTokens: 4, Temp: -1, TopP: 1}, {MaxTokens: 4, TopP: 2}} {
		if _, err := Generate(ctx, m, o); !errors.Is(err, ErrBadOptions) {
			t.Errorf("%+v: %v, want ErrBadOptions", o, err)
		}
	}
	var streamed []int
	planned := 0
	o := GenerateOptions{Prompt: "Once upon a time", MaxTokens: 12, TopP: 1, MaxMem: 64 << 20,
		OnPlan:  func(*budget.Plan) bool { planned++; return planned > 1 },
		OnToken: func(id int, piece string) { streamed = append(streamed, id) }}
	g, err := Generate(ctx, m, o)
	if err != nil || g.Plan == nil || len(g.Tokens) != 0 || len(streamed) != 0 {
		t.Fatalf("stopped at the plan: %v, %+v, streamed %v", err, g, streamed)
	}
	before := debug.SetMemoryLimit(-1)
	g, err = Generate(ctx, m, o)
	if err != nil {
		t.Fatal(err)
	}
	if len(g.Tokens) != 12 || !slices.Equal(g.Tokens, streamed) || g.Text == "" {
		t.Errorf("generated %v (%q), streamed %v", g.Tokens, g.Text, streamed)
	}
	if after := debug.SetMemoryLimit(-1); after != before {
		t.Errorf("the heap limit is %d after the call, %d before", after, before)
	}
	want := g.Tokens
	again, err := Generate(ctx, m, GenerateOptions{Prompt: "Once upon a time", MaxTokens: 12, TopP: 1})
	if err != nil || !slices.Equal(again.Tokens, want) {
		t.Errorf("greedy again: %v %v, want %v", again.Tokens, err, want)
	}
	o.MaxMem, o.OnPlan = 1<<20, nil
	if _, err := Generate(ctx, m, o); !errors.Is(err, budget.ErrNoFit) {
		t.Errorf("a 1 MiB budget: %v, want ErrNoFit", err)
	}
}
