package model

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
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
	// StopAtEOS ends generation when an end-of-generation id is drawn: one
	// of Stop, or when Stop is empty the tokenizer's EOG ids (EOS, EOT,
	// EOM and the turn-end tokens the vocabulary declares). The stop id is
	// not returned.
	StopAtEOS bool
	Stop      []int
	// OnToken, when set, is called with each new token as it is chosen.
	OnToken func(id int)
}

// Generate continues prompt (token ids, BOS included if wanted) and returns
// only the new ids. It stops at MaxTokens, at an end-of-generation id (when
// asked), at the model's context length, or when ctx is cancelled
// (returning ctx.Err()).
func (m *Model) Generate(ctx context.Context, prompt []int, o GenerateOptions) ([]int, error) {
	if len(prompt) == 0 {
		return nil, fmt.Errorf("model: empty prompt")
	}
	maxLen := min(len(prompt)+o.MaxTokens, m.Config.Context)
	if len(prompt) > maxLen {
		return nil, fmt.Errorf("model: prompt of %d tokens exceeds the context of %d", len(prompt), m.Config.Context)
	}
	se := m.NewSession(maxLen)
	defer se.Free()
	return se.Generate(ctx, prompt, o)
}

// Session is a conversation's inference state: a KV cache and the tokens it
// holds. Each Generate call is given the whole conversation so far; the
// longest prefix the cache already holds is kept and only the rest is run
// through the model, so a chat does not prefill its history again each turn.
// A prompt that departs from the cached tokens (a template that rewrites
// earlier turns, a reply that tokenizes differently when rendered) rewinds
// the cache to where they part.
type Session struct {
	m      *Model
	s      *State      // the CPU's cache, or
	dev    *GPUSession // the device's (GPU.Session)
	toks   []int       // the tokens whose keys and values the cache holds
	logits []float32   // (V)
	// Reused and Ran count the last Generate call's prompt tokens taken from
	// the cache and run through the model.
	Reused, Ran int
}

// NewSession makes a session for conversations of up to maxLen tokens
// (capped at the model's context). Its KV cache is reserved with the model's
// accountant; Free returns it.
func (m *Model) NewSession(maxLen int) *Session {
	return &Session{m: m, s: m.NewState(maxLen), logits: make([]float32, m.Config.Vocab)}
}

// Session is a session whose model runs on the device, with the adapters
// ad: its KV cache there too (GPUSession).
func (g *GPU) Session(maxLen int, ad GPUAdapters) (*Session, error) {
	dev, err := g.NewSession(GPUSessionOptions{MaxLen: maxLen}, ad)
	if err != nil {
		return nil, err
	}
	return dev.Session(), nil
}

// Session wraps the device's session as a Session (Free frees it).
func (dev *GPUSession) Session() *Session {
	return &Session{m: dev.g.m, dev: dev, logits: make([]float32, dev.g.m.Config.Vocab)}
}

// Free returns the session's memory; it must not be used after.
func (se *Session) Free() {
	if se.dev != nil {
		se.dev.Free()
		return
	}
	se.s.Free()
}

// MaxLen is the longest conversation the session holds, in tokens.
func (se *Session) MaxLen() int {
	if se.dev != nil {
		return se.dev.MaxLen()
	}
	return se.s.MaxLen()
}

// WarmUp is the device session's WarmUp (a CPU session has nothing to
// do); the cache is empty after it.
func (se *Session) WarmUp() error {
	if se.dev == nil {
		return nil
	}
	se.toks = se.toks[:0]
	return se.dev.WarmUp()
}

// pos is the positions the cache holds; setPos rewinds it.
func (se *Session) pos() int {
	if se.dev != nil {
		return se.dev.Pos
	}
	return se.s.Pos
}

func (se *Session) setPos(p int) {
	if se.dev != nil {
		se.dev.Pos = p
		return
	}
	se.s.Pos = p
}

// forward runs tokens at the cache's end, the last one's logits to
// se.logits.
func (se *Session) forward(tokens []int) error {
	if se.dev == nil {
		return se.m.Forward(se.s, tokens, se.logits, false)
	}
	l, err := se.dev.Forward(tokens)
	if err != nil {
		return err
	}
	copy(se.logits, l)
	return nil
}

// Cached is the number of tokens the cache holds.
func (se *Session) Cached() int { return len(se.toks) }

// Generate continues prompt, the whole conversation so far, reusing the
// cached prefix, and returns only the new ids (see Model.Generate). The
// generated ids stay in the cache except the last one drawn, which was never
// run through the model.
func (se *Session) Generate(ctx context.Context, prompt []int, o GenerateOptions) ([]int, error) {
	m := se.m
	if len(prompt) == 0 {
		return nil, fmt.Errorf("model: empty prompt")
	}
	if len(prompt) > se.MaxLen() {
		return nil, fmt.Errorf("model: prompt of %d tokens exceeds the session's %d", len(prompt), se.MaxLen())
	}
	if o.Sampler == nil {
		o.Sampler = NewSampler(0, 1, 0)
	}
	// Keep the common prefix, less one token when the prompt is all cached:
	// the logits of its last position are needed.
	keep := 0
	for keep < len(se.toks) && keep < len(prompt) && se.toks[keep] == prompt[keep] {
		keep++
	}
	keep = min(keep, len(prompt)-1)
	se.toks = se.toks[:keep]
	se.setPos(keep)
	se.Reused, se.Ran = keep, len(prompt)-keep
	if err := se.forward(prompt[keep:]); err != nil {
		se.toks = se.toks[:0]
		se.setPos(0)
		return nil, err
	}
	se.toks = append(se.toks, prompt[keep:]...)
	stop := o.Stop
	if o.StopAtEOS && len(stop) == 0 && m.Tokenizer != nil {
		stop = m.Tokenizer.EOG()
	}
	var out []int
	for len(out) < o.MaxTokens {
		if err := ctx.Err(); err != nil {
			return out, err
		}
		id := o.Sampler.Sample(se.logits)
		if o.StopAtEOS && slices.Contains(stop, id) {
			break
		}
		out = append(out, id)
		if o.OnToken != nil {
			o.OnToken(id)
		}
		if se.pos() >= se.MaxLen() || len(out) == o.MaxTokens {
			break
		}
		if err := se.forward([]int{id}); err != nil {
			se.setPos(len(se.toks)) // what the cache holds for certain
			return out, err
		}
		se.toks = append(se.toks, id)
	}
	return out, nil
}
