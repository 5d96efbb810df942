package model

import (
	"errors"

	"github.com/qtune/qtune/budget"
	"math"
	"math/rand/v2"
	"testing"
)

// rowAdapter adds w·x[j mod in] to output j of each row: a row-wise map, as
// every real adapter is, so chunking rows must not change it.
type rowAdapter struct {
	in, out int
	w       float32
}

func (a rowAdapter) Forward(y, x []float32, M int) {
	for i := 0; i < M; i++ {
		for j := 0; j < a.out; j++ {
			y[i*a.out+j] += a.w * x[i*a.in+j%a.in]
		}
	}
}

func (a rowAdapter) Backward(dx, dy, x []float32, M int) {}

// TestScorerMatchesLossGrad: the chunked, layer-major Scorer gives
// LossGrad's loss and target count on batches with padded rows, masked
// prompts, an empty row, rows longer than a chunk, and adapters, and gives
// the same again when its buffers are reused for a smaller batch.
func TestScorerMatchesLossGrad(t *testing.T) {
	m := openStories(t)
	c := m.Config
	r := rand.New(rand.NewPCG(3, 4))
	B, T := 4, 300 // 516 positions: block chunks and logit chunks straddle rows
	lens := []int{300, 200, 0, 21}
	tokens, targets := make([]int, B*T), make([]int, B*T)
	for b := 0; b < B; b++ {
		for t := 0; t < T; t++ {
			tokens[b*T+t] = r.IntN(c.Vocab)
			targets[b*T+t] = -1
			if t < lens[b] && t >= 5*(b%2) { // odd rows: a masked prompt of 5
				targets[b*T+t] = r.IntN(c.Vocab)
			}
		}
	}
	ad := make(Adapters, c.Layers)
	qd, kvd := c.Heads*c.HeadDim, c.KVHeads*c.HeadDim
	ad[1][ModQ] = rowAdapter{c.Dim, qd, 0.05}
	ad[c.Layers-1][ModV] = rowAdapter{c.Dim, kvd, -0.03}
	ad[0][ModDown] = rowAdapter{c.Hidden, c.Dim, 0.02}
	s := m.NewScorer()
	defer s.Free()
	for _, a := range []Adapters{nil, ad} {
		want, wn, err := m.LossGrad(tokens, targets, B, T, StepOptions{Adapters: a}, false, 0)
		if err != nil {
			t.Fatal(err)
		}
		got, gn, err := s.Loss(tokens, targets, B, T, a)
		if err != nil {
			t.Fatal(err)
		}
		if gn != wn || math.Abs(got-want) > 1e-5*math.Abs(want) {
			t.Fatalf("adapters %v: scorer %.7f over %d targets, LossGrad %.7f over %d", a != nil, got, gn, want, wn)
		}
	}
	// A smaller batch on the grown buffers: row 3 alone.
	want, _, err := m.LossGrad(tokens[3*T:], targets[3*T:], 1, T, StepOptions{Adapters: ad}, false, 0)
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := s.Loss(tokens[3*T:], targets[3*T:], 1, T, ad)
	if err != nil || math.Abs(got-want) > 1e-5*math.Abs(want) {
		t.Fatalf("reused buffers: %.7f, want %.7f (%v)", got, want, err)
	}
}

// TestScorerReservesAndRejects: the Scorer's buffers are reserved against
// the budget before they exist, a budget too small for them is an error,
// and bad ids are rejected.
func TestScorerReservesAndRejects(t *testing.T) {
	m := openStories(t)
	toks, tgs := []int{1, 2, 3, 4}, []int{2, 3, 4, -1}
	s := m.NewScorer()
	if _, _, err := s.Loss([]int{1, m.Config.Vocab}, []int{2, 3}, 1, 2, nil); err == nil {
		t.Fatal("token outside the vocabulary accepted")
	}
	if _, _, err := s.Loss(toks, []int{2, 3, m.Config.Vocab, -1}, 1, 4, nil); err == nil {
		t.Fatal("target outside the vocabulary accepted")
	}
	if _, _, err := s.Loss(toks, tgs, 1, 4, nil); err != nil {
		t.Fatal(err)
	}
	m.Acct = budget.NewAccountant(0)
	s = m.NewScorer()
	if _, _, err := s.Loss(toks, tgs, 1, 4, nil); err != nil {
		t.Fatal(err)
	}
	if m.Acct.Live() < m.Config.ScoreBytes(3) {
		t.Fatalf("scorer holds %d bytes booked, its buffers are %d", m.Acct.Live(), m.Config.ScoreBytes(3))
	}
	s.Free()
	if m.Acct.Live() != 0 {
		t.Fatalf("%d bytes booked after Free", m.Acct.Live())
	}
	m.Acct = budget.NewAccountant(m.Config.ScoreBytes(3) - 1) // 3 positions reach the last target
	if _, _, err := m.NewScorer().Loss(toks, tgs, 1, 4, nil); !errors.Is(err, budget.ErrOverBudget) {
		t.Fatalf("scorer over its budget: %v", err)
	}
	// One slab for all the buffers: each padded to 64 bytes, the whole to a page.
	m.Acct = budget.NewAccountant(m.Config.ScoreBytes(3) + 10*64 + 4096)
	if _, _, err := m.NewScorer().Loss(toks, tgs, 1, 4, nil); err != nil {
		t.Fatalf("scorer within its budget: %v", err)
	}
}
