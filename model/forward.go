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
	acct   *budget.Accountant
	kv     slabs // the KV cache's slab
	// Forward's buffers, kept between calls so that scoring or generating
	// makes no garbage: sized for the longest call so far (rows positions),
	// one slab of the accountant's held until Free.
	buf fwdBuf
	bs  slabs
}

// fwdBuf is Forward's working set for up to rows positions.
type fwdBuf struct {
	rows                       int
	x, xb, q, att, kk, vv, tmp []float32
	g, u                       []float32
	scores                     [][]float32 // one per worker slot, maxLen each
}

// NewState allocates a KV cache for sequences of up to maxLen tokens.
func (m *Model) NewState(maxLen int) *State {
	c := m.Config
	if maxLen > c.Context && c.Context > 0 {
		maxLen = c.Context
	}
	kvd := c.KVHeads * c.HeadDim
	s := &State{maxLen: maxLen, k: make([][]float32, c.Layers), v: make([][]float32, c.Layers), acct: m.Acct}
	s.kv.acct, s.bs.acct = m.Acct, m.Acct
	parts := make([]part, 0, 2*c.Layers)
	for i := range s.k {
		parts = append(parts, part{&s.k[i], maxLen * kvd}, part{&s.v[i], maxLen * kvd})
	}
	if s.err = s.kv.carve(budget.KVCache, -1, parts...); s.err != nil {
		s.maxLen = 0
		return s
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

// Free returns the KV cache and the buffers to the accountant; the state
// must not be used after.
func (s *State) Free() {
	if s.err == nil {
		s.kv.free()
		s.bs.free()
		s.err = fmt.Errorf("model: state used after Free")
		s.k, s.v, s.buf = nil, nil, fwdBuf{}
	}
}

// buffers returns Forward's working set for T positions, growing it (a new
// slab, the old one returned first) when T is more than any call so far.
func (s *State) buffers(c Config, T, workers int) (*fwdBuf, error) {
	if T <= s.buf.rows {
		return &s.buf, nil
	}
	s.bs.free()
	s.buf = fwdBuf{}
	C, F := c.Dim, c.Hidden
	qd, kvd := c.Heads*c.HeadDim, c.KVHeads*c.HeadDim
	b := fwdBuf{rows: T, scores: make([][]float32, workers)}
	parts := []part{{&b.x, T * C}, {&b.xb, T * C}, {&b.tmp, T * C}, {&b.q, T * qd}, {&b.att, T * qd},
		{&b.kk, T * kvd}, {&b.vv, T * kvd}, {&b.g, T * F}, {&b.u, T * F}}
	for i := range b.scores {
		parts = append(parts, part{&b.scores[i], s.maxLen})
	}
	if err := s.bs.carve(budget.Workspace, -1, parts...); err != nil {
		return nil, err
	}
	s.buf = b
	return &s.buf, nil
}

// MaxLen is the capacity of the state.
func (s *State) MaxLen() int { return s.maxLen }

// Reset forgets the sequence so the state can be reused.
func (s *State) Reset() { s.Pos = 0 }

// Forward runs tokens (T) at positions s.Pos.. through the model, appending
// their keys and values to the cache. When all is true logits gets (T, V)
// rows, otherwise only the last position's (V). It returns an error for a
// token outside the vocabulary or a sequence longer than the state. The
// model's Adapters apply.
func (m *Model) Forward(s *State, tokens []int, logits []float32, all bool) error {
	return m.ForwardWith(s, tokens, logits, all, m.Adapters)
}

// ForwardWith is Forward with the adapters ad in place of the model's.
func (m *Model) ForwardWith(s *State, tokens []int, logits []float32, all bool, ad Adapters) error {
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
	C := c.Dim
	qd, kvd := c.Heads*c.HeadDim, c.KVHeads*c.HeadDim
	p := m.pool
	bf, err := s.buffers(c, T, p.Workers())
	if err != nil {
		return err
	}
	x, xb, tmp := bf.x[:T*C], bf.xb[:T*C], bf.tmp[:T*C] // (T, C) residual stream, normalised, block output
	q, att := bf.q[:T*qd], bf.att[:T*qd]                // (T, H*D)
	kk, vv := bf.kk[:T*kvd], bf.vv[:T*kvd]              // (T, Hkv*D)
	g, u := bf.g[:T*c.Hidden], bf.u[:T*c.Hidden]        // (T, F)
	m.embedRows(x, tokens)
	D := c.HeadDim
	slots := min(T, len(bf.scores))
	pos := func(r int) int { return s.Pos + r }
	for li := range m.Layers {
		l := &m.Layers[li]
		m.normRows(xb, x, l.AttnNorm, T)
		m.queries(li, q, xb, T, pos, ad, nil)
		m.keysValues(li, kk, vv, xb, T, pos, ad, nil)
		copy(s.k[li][s.Pos*kvd:], kk)
		copy(s.v[li][s.Pos*kvd:], vv)
		keys, vals := s.k[li], s.v[li]
		// Each worker slot takes a contiguous share of the rows and its own
		// scores buffer. A sliding window starts the keys later.
		p.Parallel(slots, 1, func(lo, hi int) {
			for w := lo; w < hi; w++ {
				for t := w * T / slots; t < (w+1)*T/slots; t++ {
					n := s.Pos + t + 1
					k0 := 0
					if l.Window > 0 {
						k0 = max(0, n-l.Window)
					}
					nn.Attention(att[t*qd:(t+1)*qd], q[t*qd:(t+1)*qd], keys[k0*kvd:], vals[k0*kvd:], n-k0, kvd, c.Heads, c.KVHeads, D, bf.scores[w])
				}
			}
		})
		m.attnOutInto(x, att, tmp, T, li, ad, nil)
		m.ffnInto(x, xb, g, u, tmp, T, li, ad)
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
