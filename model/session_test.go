package model

import (
	"context"
	"slices"
	"testing"
)

// TestSessionReusesCache: a session given the conversation so far runs
// only what its cache lacks, rewinds where the prompt departs from the
// cache, and generates exactly what a fresh Generate on the whole prompt
// does.
func TestSessionReusesCache(t *testing.T) {
	m := openStories(t)
	ctx := context.Background()
	greedy := GenerateOptions{MaxTokens: 12}
	p1 := m.Tokenizer.Encode("Once upon a time", true)
	se := m.NewSession(m.Config.Context)
	defer se.Free()
	g1, err := se.Generate(ctx, p1, greedy)
	if err != nil {
		t.Fatal(err)
	}
	if se.Reused != 0 || se.Ran != len(p1) {
		t.Fatalf("first turn reused %d ran %d, want 0 and %d", se.Reused, se.Ran, len(p1))
	}
	// The last drawn token was never run, so it is not cached.
	if se.Cached() != len(p1)+len(g1)-1 {
		t.Fatalf("cached %d, want %d", se.Cached(), len(p1)+len(g1)-1)
	}
	check := func(prompt []int, wantReused int) {
		t.Helper()
		got, err := se.Generate(ctx, prompt, greedy)
		if err != nil {
			t.Fatal(err)
		}
		if se.Reused != wantReused || se.Ran != len(prompt)-wantReused {
			t.Fatalf("reused %d ran %d, want %d and %d", se.Reused, se.Ran, wantReused, len(prompt)-wantReused)
		}
		want, err := m.Generate(ctx, prompt, greedy)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("session generated %v, a fresh run %v", got, want)
		}
	}
	// The next turn extends the conversation: all of the cache is kept.
	p2 := slices.Concat(p1, g1, m.Tokenizer.Encode(" The dog said", false))
	check(p2, len(p1)+len(g1)-1)
	// A prompt that departs after p1's first tokens rewinds to there.
	p3 := slices.Concat(p1[:3], m.Tokenizer.Encode(" a big cat", false))
	check(p3, 3)
	// The same prompt again still runs its last token for the logits.
	check(p3, len(p3)-1)
	// Past the session's length: an error, not a panic.
	small := m.NewSession(8)
	defer small.Free()
	if _, err := small.Generate(ctx, make([]int, 9), greedy); err == nil {
		t.Fatal("a prompt longer than the session was accepted")
	}
}

// TestGenerateStopsOnEOG: generation stops on any of the stop ids, and on
// the tokenizer's EOG ids when none are given.
func TestGenerateStopsOnEOG(t *testing.T) {
	m := openStories(t)
	ctx := context.Background()
	p := m.Tokenizer.Encode("Once upon a time", true)
	free, err := m.Generate(ctx, p, GenerateOptions{MaxTokens: 20})
	if err != nil {
		t.Fatal(err)
	}
	// Stop on the fifth token drawn: four come back.
	out, err := m.Generate(ctx, p, GenerateOptions{MaxTokens: 20, StopAtEOS: true, Stop: []int{free[4], -7}})
	if err != nil {
		t.Fatal(err)
	}
	if n := slices.Index(free, free[4]); !slices.Equal(out, free[:n]) {
		t.Fatalf("stopped output %v, want %v", out, free[:n])
	}
	if eog := m.Tokenizer.EOG(); !slices.Equal(eog, []int{m.Tokenizer.EOS()}) {
		t.Fatalf("stories260K EOG %v, want its EOS %d", eog, m.Tokenizer.EOS())
	}
}
