package model

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
)

// Sampler picks the next token from logits.
type Sampler struct {
	Temp float64 // 0: greedy (lowest id on ties)
	TopP float64 // nucleus mass in (0, 1]; 1 or 0 keeps every token
	rng  *rand.Rand
}

// NewSampler seeds a sampler; the same seed gives the same choices.
func NewSampler(temp, topP float64, seed uint64) *Sampler {
	return &Sampler{Temp: temp, TopP: topP, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

// Argmax returns the index of the largest value, the lowest on ties.
func Argmax(x []float32) int {
	best := 0
	for i, v := range x {
		if v > x[best] {
			best = i
		}
	}
	return best
}

// Sample draws a token id.
func (s *Sampler) Sample(logits []float32) int {
	if s.Temp <= 0 {
		return Argmax(logits)
	}
	type cand struct {
		id int
		p  float64
	}
	m := logits[Argmax(logits)]
	cs := make([]cand, len(logits))
	var sum float64
	for i, v := range logits {
		e := math.Exp(float64(v-m) / s.Temp)
		cs[i] = cand{i, e}
		sum += e
	}
	for i := range cs {
		cs[i].p /= sum
	}
	if s.TopP > 0 && s.TopP < 1 {
		sort.SliceStable(cs, func(a, b int) bool { return cs[a].p > cs[b].p })
		var acc float64
		cut := len(cs)
		for i, c := range cs {
			acc += c.p
			if acc >= s.TopP {
				cut = i + 1
				break
			}
		}
		cs = cs[:cut]
		sum = acc
		if cut == len(logits) {
			sum = 1
		}
	}
	r := s.rng.Float64() * sum
	for _, c := range cs {
		r -= c.p
		if r <= 0 {
			return c.id
		}
	}
	return cs[len(cs)-1].id
}

// GenerateOptions control Generate.
type GenerateOptions struct {
	MaxTokens int
	Sampler   *Sampler
	// StopAtEOS ends generation when the tokenizer's end-of-sequence id is
	// drawn (the EOS id is not returned).
	StopAtEOS bool
	// OnToken, when set, is called with each new token as it is chosen.
	OnToken func(id int)
}

// Generate continues prompt (token ids, BOS included if wanted) and returns
// only the new ids. It stops at MaxTokens, at EOS (when asked), at the
// model's context length, or when ctx is cancelled (returning ctx.Err()).
func (m *Model) Generate(ctx context.Context, prompt []int, o GenerateOptions) ([]int, error) {
	if len(prompt) == 0 {
		return nil, fmt.Errorf("model: empty prompt")
	}
	if o.Sampler == nil {
		o.Sampler = NewSampler(0, 1, 0)
	}
	maxLen := len(prompt) + o.MaxTokens
	if maxLen > m.Config.Context {
		maxLen = m.Config.Context
	}
	if len(prompt) > maxLen {
		return nil, fmt.Errorf("model: prompt of %d tokens exceeds the context of %d", len(prompt), m.Config.Context)
	}
	s := m.NewState(maxLen)
	defer s.Free()
	logits := make([]float32, m.Config.Vocab)
	if err := m.Forward(s, prompt, logits, false); err != nil {
		return nil, err
	}
	eos := -1
	if m.Tokenizer != nil {
		eos = m.Tokenizer.EOS()
	}
	var out []int
	for len(out) < o.MaxTokens {
		if err := ctx.Err(); err != nil {
			return out, err
		}
		id := o.Sampler.Sample(logits)
		if o.StopAtEOS && id == eos {
			break
		}
		out = append(out, id)
		if o.OnToken != nil {
			o.OnToken(id)
		}
		if s.Pos >= s.maxLen || len(out) == o.MaxTokens {
			break
		}
		if err := m.Forward(s, []int{id}, logits, false); err != nil {
			return out, err
		}
	}
	return out, nil
}
