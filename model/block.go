package model

import (
	"math"

	"github.com/qtune/qtune/nn"
)

// The pieces of one transformer block that the three forward paths
// (Forward with its KV cache, LossGrad's layerForward, the Scorer) share,
// so that every family switch is written once (design.md, rule 11):
//
//	x   += PostAttnNorm( Wo · attention( qk(Wq·n1(x) + bq), qk(Wk·n1(x) + bk), Wv·n1(x) + bv ) )
//	x   += PostFFNNorm( Wdown · act(Wgate·n2(x)) ⊙ (Wup·n2(x)) )
//	qk(y) = QScale · rope_l( QKNorm_per_head(y) )
//
// with each optional step present only where the family has it (biases:
// Qwen2; q/k norms: Qwen3, Gemma 3; post norms: Gemma 3; rope_l: the
// layer's own table, none on SmolLM3's no-RoPE layers, the local base on
// Gemma 3's sliding-window layers).

// ropeOf returns block l's rotary table, nil for a block without RoPE.
func (m *Model) ropeOf(l int) *nn.Rope {
	L := &m.Layers[l]
	switch {
	case L.NoRope:
		return nil
	case L.Window > 0 && m.ropeSWA.Freq != nil:
		return &m.ropeSWA
	}
	return &m.rope
}

// qScale is the factor queries are multiplied by after RoPE, so that the
// kernels' 1/√D gives the family's attention scale.
func (m *Model) qScale() float32 {
	c := &m.Config
	if c.AttnScale == 0 {
		return 1
	}
	return float32(c.AttnScale * math.Sqrt(float64(c.HeadDim)))
}

// embedRows looks up the embedding rows of ids into x (len(ids), C),
// scaled by the family's embedding scale.
func (m *Model) embedRows(x []float32, ids []int) {
	C := m.Config.Dim
	for r, id := range ids {
		m.Embed.Row(x[r*C:(r+1)*C], id)
	}
	if s := m.Config.EmbedScale; s != 0 && s != 1 {
		for i := range x[:len(ids)*C] {
			x[i] *= s
		}
	}
	m.embedDone()
}

// finishQK turns M rows of projected queries or keys y (M, n·D) into
// attention inputs in place: + bias, per-head RMSNorm, RoPE at pos(r),
// and (queries) the query scale. raw, when not nil, receives the rows
// before the norm (the norm's backward needs them).
func (m *Model) finishQK(l int, y []float32, M, n int, bias, norm []float32, pos func(r int) int, query bool, raw []float32) {
	c := &m.Config
	D := c.HeadDim
	w := n * D
	if bias != nil {
		for r := 0; r < M; r++ {
			addInto(y[r*w:(r+1)*w], bias)
		}
	}
	if raw != nil {
		copy(raw[:M*w], y[:M*w])
	}
	if norm != nil {
		for h := 0; h < M*n; h++ {
			nn.RMSNorm(y[h*D:(h+1)*D], y[h*D:(h+1)*D], norm, c.Eps)
		}
	}
	if rp := m.ropeOf(l); rp != nil {
		for r := 0; r < M; r++ {
			rp.ApplyHeads(y[r*w:(r+1)*w], n, D, pos(r))
		}
	}
	if s := m.qScale(); query && s != 1 {
		for i := range y[:M*w] {
			y[i] *= s
		}
	}
}

// queries computes block l's attention queries for M rows of the
// normalised input xn (M, C) into q (M, H·D); qraw as finishQK's raw.
func (m *Model) queries(l int, q, xn []float32, M int, pos func(int) int, ad Adapters, qraw []float32) {
	L := &m.Layers[l]
	m.linear(q, xn, M, l, ModQ, ad)
	m.finishQK(l, q, M, m.Config.Heads, L.BQ, L.QNorm, pos, true, qraw)
}

// keysValues computes block l's keys and values for M rows of xn into k
// and v (M, Hkv·D); kraw as finishQK's raw.
func (m *Model) keysValues(l int, k, v, xn []float32, M int, pos func(int) int, ad Adapters, kraw []float32) {
	L := &m.Layers[l]
	m.linear(k, xn, M, l, ModK, ad)
	m.finishQK(l, k, M, m.Config.KVHeads, L.BK, L.KNorm, pos, false, kraw)
	m.linear(v, xn, M, l, ModV, ad)
	if L.BV != nil {
		kvd := m.Config.KVHeads * m.Config.HeadDim
		for r := 0; r < M; r++ {
			addInto(v[r*kvd:(r+1)*kvd], L.BV)
		}
	}
}

// normRows applies RMSNorm with weight w to M rows of x (M, C) into out
// (which may be x).
func (m *Model) normRows(out, x, w []float32, M int) {
	C := m.Config.Dim
	for r := 0; r < M; r++ {
		nn.RMSNorm(out[r*C:(r+1)*C], x[r*C:(r+1)*C], w, m.Config.Eps)
	}
}

// attnOutInto adds block l's attention output for M rows to the residual
// x (M, C): tmp = Wo·att, post-normed when the family has the norm. pre,
// when not nil, receives Wo·att before that norm.
func (m *Model) attnOutInto(x, att, tmp []float32, M, l int, ad Adapters, pre []float32) {
	m.linear(tmp, att, M, l, ModO, ad)
	if pn := m.Layers[l].PostAttnNorm; pn != nil {
		if pre != nil {
			copy(pre, tmp[:M*m.Config.Dim])
		}
		m.normRows(tmp, tmp, pn, M)
	}
	addInto(x[:M*m.Config.Dim], tmp[:M*m.Config.Dim])
}

// ffnInto adds block l's feed-forward output to the M rows of the residual
// stream x (M, C), with scratch xn and tmp (M, C) and g, u (M, F).
func (m *Model) ffnInto(x, xn, g, u, tmp []float32, M, l int, ad Adapters) {
	L := &m.Layers[l]
	m.normRows(xn, x, L.FFNNorm, M)
	m.linear(g, xn, M, l, ModGate, ad)
	m.linear(u, xn, M, l, ModUp, ad)
	nn.Gated(m.Config.Act, g, g, u)
	m.linear(tmp, g, M, l, ModDown, ad)
	if L.PostFFNNorm != nil {
		m.normRows(tmp, tmp, L.PostFFNNorm, M)
	}
	addInto(x[:M*m.Config.Dim], tmp[:M*m.Config.Dim])
}
