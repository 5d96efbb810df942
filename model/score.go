package model

import (
	"fmt"
	"math"

	"github.com/qtune/qtune/budget"
	"github.com/qtune/qtune/kernels"
	"github.com/qtune/qtune/nn"
)

// ScoreRows is how many positions a Scorer computes at once inside a
// block. Every chunk decodes each quantized weight panel again, so fewer
// rows cost time: on 110M Q4_0 (MeZO, batch 4 × 256) 64 rows took 1.48×
// LossGrad's time, 128 rows 1.01×, 256 rows 0.89×, 512 rows 0.80×, while
// the chunk's buffers grow by 4·(2C+2H·D+2F) bytes a row (28 KiB on 110M).
const ScoreRows = 256

// scoreLogitRows is how many positions' logits a Scorer makes at once: the
// (rows, V) logits are the largest buffer (125 KiB a row at V = 32000) and
// the output matrix is one matrix among the model's.
const scoreLogitRows = 64

// Scorer computes the loss of a batch without gradients, in the least
// memory an exact forward pass needs. It goes layer by layer over the whole
// batch, as LossGrad does (so streamed weights are read once per call), but
// keeps only the residual stream and the current block's keys and values
// for every position; the rest of a block runs ScoreRows positions at a
// time. Positions after a row's last target are not computed (causal
// attention: they cannot change the loss). Its buffers are kept between
// calls and grown (a new slab) when a batch needs more, so scoring
// makes no garbage. Not safe for concurrent use.
type Scorer struct {
	m    *Model
	rows int   // positions the buffers hold
	bs   slabs // one slab of the accountant's for all of them
	// (rows, ·): residual stream, this block's keys and values
	x, k, v []float32
	// (ScoreRows, ·): the chunk in flight
	xn, q, att, tmp, g, u, logits []float32
	off                           []int // (B+1) first compact row of each sequence
}

// NewScorer returns an empty Scorer; buffers come with the first batch.
func (m *Model) NewScorer() *Scorer { return &Scorer{m: m} }

// ScoreBytes is what a Scorer holds for batches of n computed positions
// (at most B·T): the planner's number.
func (c *Config) ScoreBytes(n int) int64 {
	kvd, qd := int64(c.KVHeads*c.HeadDim), int64(c.Heads*c.HeadDim)
	C, F, V := int64(c.Dim), int64(c.Hidden), int64(c.Vocab)
	r, lr := int64(min(n, ScoreRows)), int64(min(n, scoreLogitRows))
	return 4 * (int64(n)*(C+2*kvd) + r*(2*C+2*qd+2*F) + lr*V)
}

// Free returns the Scorer's slab and drops its buffers.
func (s *Scorer) Free() {
	s.bs.free()
	*s = Scorer{m: s.m}
}

func (s *Scorer) grow(n int) error {
	if n <= s.rows {
		return nil
	}
	c := s.m.Config
	s.bs.free() // the old slab goes back before the new one is made
	s.rows = 0
	s.bs.acct = s.m.Acct
	kvd, qd := c.KVHeads*c.HeadDim, c.Heads*c.HeadDim
	r := min(n, ScoreRows)
	if err := s.bs.carve(budget.Workspace, -1, part{&s.x, n * c.Dim}, part{&s.k, n * kvd}, part{&s.v, n * kvd},
		part{&s.xn, r * c.Dim}, part{&s.tmp, r * c.Dim}, part{&s.q, r * qd}, part{&s.att, r * qd},
		part{&s.g, r * c.Hidden}, part{&s.u, r * c.Hidden}, part{&s.logits, min(n, scoreLogitRows) * c.Vocab}); err != nil {
		return err
	}
	s.rows = n
	return nil
}

// Loss returns the summed cross-entropy over the targeted positions of B
// sequences of T tokens (as LossGrad takes them) with the adapters ad, and
// their count.
func (s *Scorer) Loss(tokens, targets []int, B, T int, ad Adapters) (float64, int, error) {
	m := s.m
	c := m.Config
	if B <= 0 || T <= 0 || len(tokens) != B*T || len(targets) != B*T {
		return 0, 0, fmt.Errorf("model: batch of %d tokens and %d targets for B=%d T=%d", len(tokens), len(targets), B, T)
	}
	if T > c.Context {
		return 0, 0, fmt.Errorf("model: sequence length %d exceeds the context of %d", T, c.Context)
	}
	// Compact layout: sequence b's positions 0..len_b-1 at rows off[b].., len_b
	// reaching its last target.
	s.off = append(s.off[:0], 0)
	for b := 0; b < B; b++ {
		end := T
		for end > 0 && targets[b*T+end-1] < 0 {
			end--
		}
		for t := b * T; t < b*T+end; t++ {
			if id := tokens[t]; id < 0 || id >= c.Vocab {
				return 0, 0, fmt.Errorf("model: token id %d at %d outside the vocabulary (%d)", id, t, c.Vocab)
			}
			if tg := targets[t]; tg < -1 || tg >= c.Vocab {
				return 0, 0, fmt.Errorf("model: target id %d at %d outside the vocabulary (%d)", tg, t, c.Vocab)
			}
		}
		s.off = append(s.off, s.off[b]+end)
	}
	N := s.off[B]
	if N == 0 {
		return 0, 0, nil
	}
	if err := s.grow(N); err != nil {
		return 0, 0, err
	}
	C, D := c.Dim, c.HeadDim
	qd, kvd, F := c.Heads*D, c.KVHeads*D, c.Hidden
	// seq and pos of a compact row.
	seq := 0
	where := func(r int) (int, int) {
		for r >= s.off[seq+1] {
			seq++
		}
		for r < s.off[seq] {
			seq--
		}
		return seq, r - s.off[seq]
	}
	posOf := func(r0 int) func(int) int {
		return func(i int) int { _, t := where(r0 + i); return t }
	}
	for r := 0; r < N; r++ {
		b, t := where(r)
		m.Embed.Row(s.x[r*C:(r+1)*C], tokens[b*T+t])
	}
	if es := c.EmbedScale; es != 0 && es != 1 {
		for i := range s.x[:N*C] {
			s.x[i] *= es
		}
	}
	m.embedDone()
	for l := range m.Layers {
		L := &m.Layers[l]
		// Keys and values of every position first: a chunk's queries read
		// those of the positions before it.
		for r0 := 0; r0 < N; r0 += ScoreRows {
			r1 := min(N, r0+ScoreRows)
			xn := s.xn[:(r1-r0)*C]
			m.normRows(xn, s.x[r0*C:r1*C], L.AttnNorm, r1-r0)
			m.keysValues(l, s.k[r0*kvd:r1*kvd], s.v[r0*kvd:r1*kvd], xn, r1-r0, posOf(r0), ad, nil)
		}
		for r0 := 0; r0 < N; r0 += ScoreRows {
			r1 := min(N, r0+ScoreRows)
			M := r1 - r0
			xn, q, att, tmp := s.xn[:M*C], s.q[:M*qd], s.att[:M*qd], s.tmp[:M*C]
			m.normRows(xn, s.x[r0*C:r1*C], L.AttnNorm, M)
			m.queries(l, q, xn, M, posOf(r0), ad, nil)
			// Attention, one sequence's part of the chunk at a time, heads
			// spread over the workers.
			for a := r0; a < r1; {
				b, t0 := where(a)
				e := min(r1, s.off[b+1])
				base := s.off[b]
				m.pool.Parallel(c.Heads, 1, func(h0, h1 int) {
					kernels.AttentionPrefixWindow(att[(a-r0)*qd:(e-r0)*qd], q[(a-r0)*qd:(e-r0)*qd], s.k[base*kvd:e*kvd], s.v[base*kvd:e*kvd],
						t0, e-a, c.Heads, c.KVHeads, D, L.Window, h0, h1)
				})
				a = e
			}
			xr := s.x[r0*C : r1*C]
			m.attnOutInto(xr, att, tmp, M, l, ad, nil)
			m.ffnInto(xr, xn, s.g[:M*F], s.u[:M*F], tmp, M, l, ad)
		}
		m.layerDone(l, l+1)
	}
	V := c.Vocab
	var loss float64
	n := 0
	for r0 := 0; r0 < N; r0 += scoreLogitRows {
		r1 := min(N, r0+scoreLogitRows)
		M := r1 - r0
		xn, lg := s.xn[:M*C], s.logits[:M*V]
		for r := r0; r < r1; r++ {
			nn.RMSNorm(xn[(r-r0)*C:(r-r0+1)*C], s.x[r*C:(r+1)*C], m.OutNorm, c.Eps)
		}
		kernels.MatMul(m.pool, lg, xn, M, m.Output)
		for r := r0; r < r1; r++ {
			b, t := where(r)
			if tg := targets[b*T+t]; tg >= 0 {
				loss += nn.CrossEntropy(nil, lg[(r-r0)*V:(r-r0+1)*V], tg, 0)
				n++
			}
		}
	}
	m.prefetch(0)
	if math.IsNaN(loss) || math.IsInf(loss, 0) {
		return loss, n, fmt.Errorf("model: loss is %v", loss)
	}
	return loss, n, nil
}
