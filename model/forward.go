package model

import (
	"fmt"

	"github.com/qtune/qtune/budget"
	"github.com/qtune/qtune/kernels"
	"github.com/qtune/qtune/nn"
)

// State is one sequence's inference state: the KV cache and the position
// reached. It is sized for a maximum length when created.
type State struct {
	Pos    int
	maxLen int
	k, v   [][]float32 // per layer: (maxLen, Hkv*D)
	// Hidden is the final normalised hidden state of the last position of the
	// last Forward call (C), as fed to the output matrix.
	Hidden []float32
	err    error // the KV cache could not be reserved
	kvb    int64
	acct   *budget.Accountant
}

// NewState allocates a KV cache for sequences of up to maxLen tokens.
func (m *Model) NewState(maxLen int) *State {
	c := m.Config
	if maxLen > c.Context && c.Context > 0 {
		maxLen = c.Context
	}
	kvd := c.KVHeads * c.HeadDim
	s := &State{maxLen: maxLen, k: make([][]float32, c.Layers), v: make([][]float32, c.Layers), acct: m.Acct}
	s.kvb = c.KVBytes(maxLen)
	if s.err = m.Acct.Reserve(budget.KVCache, -1, s.kvb); s.err != nil {
		s.maxLen = 0
		return s
	}
	for i := range s.k {
		s.k[i] = make([]float32, maxLen*kvd)
		s.v[i] = make([]float32, maxLen*kvd)
	}
	s.Hidden = make([]float32, c.Dim)
	return s
}

// ForwardBytes is the size of Forward's buffers for T tokens.
func (c *Config) ForwardBytes(T int) int64 {
	qd, kvd := int64(c.Heads*c.HeadDim), int64(c.KVHeads*c.HeadDim)
	return 4 * int64(T) * (3*int64(c.Dim) + 2*qd + 2*kvd + 2*int64(c.Hidden))
}

// KVBytes is the size of a KV cache for maxLen tokens.
func (c *Config) KVBytes(maxLen int) int64 {
	return int64(c.Layers) * int64(maxLen) * int64(c.KVHeads*c.HeadDim) * 2 * 4
}

// Free returns the KV cache's reservation; the state must not be used after.
func (s *State) Free() {
	if s.err == nil {
		s.acct.Release(budget.KVCache, -1, s.kvb)
		s.err = fmt.Errorf("model: state used after Free")
		s.k, s.v = nil, nil
	}
}

// MaxLen is the capacity of the state.
func (s *State) MaxLen() int { return s.maxLen }

// Reset forgets the sequence so the state can be reused.
func (s *State) Reset() { s.Pos = 0 }

// Forward runs tokens (T) at positions s.Pos.. through the model, appending
// their keys and values to the cache. When all is true logits gets (T, V)
// rows, otherwise only the last position's (V). It returns an error for a
// token outside the vocabulary or a sequence longer than the state.
func (m *Model) Forward(s *State, tokens []int, logits []float32, all bool) error {
	c := m.Config
	T := len(tokens)
	if s.err != nil {
		return s.err
	}
	if T == 0 {
		return nil
	}
	if s.Pos+T > s.maxLen {
		return fmt.Errorf("model: sequence of %d tokens exceeds the context of %d", s.Pos+T, s.maxLen)
	}
	for _, t := range tokens {
		if t < 0 || t >= c.Vocab {
			return fmt.Errorf("model: token id %d outside the vocabulary (%d)", t, c.Vocab)
		}
	}
	nl := 1
	if all {
		nl = T
	}
	if len(logits) < nl*c.Vocab {
		return fmt.Errorf("model: logits buffer of %d for %d rows of %d", len(logits), nl, c.Vocab)
	}
	C, F := c.Dim, c.Hidden
	qd, kvd := c.Heads*c.HeadDim, c.KVHeads*c.HeadDim
	p := m.pool
	work := c.ForwardBytes(T)
	if err := m.Acct.Reserve(budget.Workspace, -1, work); err != nil {
		return err
	}
	defer m.Acct.Release(budget.Workspace, -1, work)
	x := make([]float32, T*C)    // (T, C) residual stream
	xb := make([]float32, T*C)   // (T, C) normalised
	q := make([]float32, T*qd)   // (T, H*D)
	att := make([]float32, T*qd) // (T, H*D)
	kk := make([]float32, T*kvd) // (T, Hkv*D)
	vv := make([]float32, T*kvd) // (T, Hkv*D)
	tmp := make([]float32, T*C)  // (T, C)
	g := make([]float32, T*F)    // (T, F)
	u := make([]float32, T*F)    // (T, F)
	for t, id := range tokens {
		m.Embed.Row(x[t*C:(t+1)*C], id)
	}
	m.embedDone()
	D := c.HeadDim
	for li := range m.Layers {
		l := &m.Layers[li]
		for t := 0; t < T; t++ {
			nn.RMSNorm(xb[t*C:(t+1)*C], x[t*C:(t+1)*C], l.AttnNorm, c.Eps)
		}
		m.linear(q, xb, T, li, ModQ, m.Adapters)
		m.linear(kk, xb, T, li, ModK, m.Adapters)
		m.linear(vv, xb, T, li, ModV, m.Adapters)
		for t := 0; t < T; t++ {
			pos := s.Pos + t
			m.rope.ApplyHeads(q[t*qd:(t+1)*qd], c.Heads, D, pos)
			m.rope.ApplyHeads(kk[t*kvd:(t+1)*kvd], c.KVHeads, D, pos)
		}
		copy(s.k[li][s.Pos*kvd:], kk)
		copy(s.v[li][s.Pos*kvd:], vv)
		keys, vals := s.k[li], s.v[li]
		p.Parallel(T, 1, func(lo, hi int) {
			scores := make([]float32, s.Pos+hi)
			for t := lo; t < hi; t++ {
				n := s.Pos + t + 1
				nn.Attention(att[t*qd:(t+1)*qd], q[t*qd:(t+1)*qd], keys, vals, n, kvd, c.Heads, c.KVHeads, D, scores)
			}
		})
		m.linear(tmp, att, T, li, ModO, m.Adapters)
		addInto(x, tmp)
		for t := 0; t < T; t++ {
			nn.RMSNorm(xb[t*C:(t+1)*C], x[t*C:(t+1)*C], l.FFNNorm, c.Eps)
		}
		m.linear(g, xb, T, li, ModGate, m.Adapters)
		m.linear(u, xb, T, li, ModUp, m.Adapters)
		nn.SwiGLU(g, g, u)
		m.linear(tmp, g, T, li, ModDown, m.Adapters)
		addInto(x, tmp)
		m.layerDone(li, li+1)
	}
	first := 0
	if !all {
		first = T - 1
	}
	for t := first; t < T; t++ {
		nn.RMSNorm(xb[t*C:(t+1)*C], x[t*C:(t+1)*C], m.OutNorm, c.Eps)
	}
	copy(s.Hidden, xb[(T-1)*C:T*C])
	kernels.MatMul(p, logits[:nl*c.Vocab], xb[first*C:T*C], nl, m.Output)
	m.prefetch(0) // for the next call
	s.Pos += T
	return nil
}

func addInto(dst, src []float32) {
	for i, v := range src {
		dst[i] += v
	}
}
