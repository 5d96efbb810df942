package nn

import (
	"math"

	"github.com/qtune/qtune/kernels"
)

// This file holds the training-side ops: each forward op's backward (and the
// forward pieces whose backward needs saved statistics). Backward functions
// accumulate into their gradient outputs (+=); callers zero them.

// RMSNormBackward accumulates the gradients of out = x·r·w, r =
// 1/sqrt(mean(x²)+eps), for one row:
//
//	dx[i] += r·w[i]·dy[i] − x[i]·r³/n · Σ_j dy[j]·w[j]·x[j]
//	dw[i] += dy[i]·x[i]·r                     (skipped when dw is nil)
func RMSNormBackward[F Float](dx, dw, dy, x, w []F, eps float32) {
	if dx32, ok := f32s(dx); ok {
		dw32, _ := f32s(dw)
		dy32, _ := f32s(dy)
		x32, _ := f32s(x)
		w32, _ := f32s(w)
		kernels.RMSNormBackward(dx32, dw32, dy32, x32, w32, eps)
		return
	}
	n := len(x)
	r := rmsInv(x, eps)
	var dot float64
	for j := 0; j < n; j++ {
		dot += float64(dy[j]) * float64(w[j]) * float64(x[j])
	}
	c := r * r * r / float64(n) * dot
	for i := 0; i < n; i++ {
		dx[i] += F(r*float64(w[i])*float64(dy[i]) - float64(x[i])*c)
	}
	if dw != nil {
		for i := 0; i < n; i++ {
			dw[i] += F(float64(dy[i]) * float64(x[i]) * r)
		}
	}
}

// SwiGLUBackward accumulates the gradients of out = silu(g)·u:
//
//	dg += dy·u·σ(g)·(1 + g·(1−σ(g)))      du += dy·silu(g)
func SwiGLUBackward[F Float](dgate, dup, dy, gate, up []F) {
	if dg32, ok := f32s(dgate); ok {
		du32, _ := f32s(dup)
		dy32, _ := f32s(dy)
		g32, _ := f32s(gate)
		u32, _ := f32s(up)
		kernels.SwiGLUBackward(dg32, du32, dy32, g32, u32)
		return
	}
	for i, g := range gate {
		gv := float64(g)
		s := 1 / (1 + math.Exp(-gv))
		d := float64(dy[i])
		dgate[i] += F(d * float64(up[i]) * s * (1 + gv*(1-s)))
		dup[i] += F(d * gv * s)
	}
}

// GeGLUBackward accumulates the gradients of out = gelu_tanh(g)·u
// (kernels.GeGLUBackward's formula).
func GeGLUBackward[F Float](dgate, dup, dy, gate, up []F) {
	if dg32, ok := f32s(dgate); ok {
		du32, _ := f32s(dup)
		dy32, _ := f32s(dy)
		g32, _ := f32s(gate)
		u32, _ := f32s(up)
		kernels.GeGLUBackward(dg32, du32, dy32, g32, u32)
		return
	}
	const c = 0.7978845608028654
	for i, gv := range gate {
		g := float64(gv)
		th := math.Tanh(c * (g + 0.044715*g*g*g))
		d := float64(dy[i])
		dup[i] += F(d * 0.5 * g * (1 + th))
		dgate[i] += F(d * float64(up[i]) * (0.5*(1+th) + 0.5*g*(1-th*th)*c*(1+3*0.044715*g*g)))
	}
}

// GatedBackward is the backward of Gated.
func GatedBackward[F Float](a Activation, dgate, dup, dy, gate, up []F) {
	if a == GELUTanh || a == GELUTable {
		GeGLUBackward(dgate, dup, dy, gate, up)
	} else {
		SwiGLUBackward(dgate, dup, dy, gate, up)
	}
}

// CrossEntropy returns −log softmax(logits)[target] and, when dlogits is
// not nil, accumulates scale·(softmax(logits) − onehot(target)) into it.
func CrossEntropy[F Float](dlogits, logits []F, target int, scale float64) float64 {
	if l32, ok := f32s(logits); ok {
		d32, _ := f32s(dlogits)
		return float64(kernels.CrossEntropy(d32, l32, target, float32(scale)))
	}
	m := logits[0]
	for _, v := range logits[1:] {
		if v > m {
			m = v
		}
	}
	var s float64
	for _, v := range logits {
		s += math.Exp(float64(v - m))
	}
	lse := float64(m) + math.Log(s)
	if dlogits != nil {
		for i, v := range logits {
			dlogits[i] += F(scale * math.Exp(float64(v)-lse))
		}
		dlogits[target] -= F(scale)
	}
	return lse - float64(logits[target])
}

// AttentionSeq is causal grouped-query attention over one whole sequence,
// the training form of Attention: q (T, H·D), k and v (T, Hkv·D), out
// (T, H·D). It also stores each score row's log-sum-exp in lse (H, T) so the
// backward can rebuild the probabilities without keeping the (T, T) matrix.
// scores is scratch of length ≥ T.
func AttentionSeq[F Float](out, lse, q, k, v []F, T, H, Hkv, D int, scores []F) {
	AttentionSeqWindow(out, lse, q, k, v, T, H, Hkv, D, 0, scores)
}

// AttentionSeqWindow is AttentionSeq where query t sees only the keys u
// with t−W < u ≤ t (W ≤ 0: all u ≤ t); kernels.AttentionSeqWindow.
func AttentionSeqWindow[F Float](out, lse, q, k, v []F, T, H, Hkv, D, W int, scores []F) {
	if o32, ok := f32s(out); ok {
		l32, _ := f32s(lse)
		q32, _ := f32s(q)
		k32, _ := f32s(k)
		v32, _ := f32s(v)
		s32, _ := f32s(scores)
		kernels.AttentionSeqWindow(o32, l32, q32, k32, v32, T, H, Hkv, D, W, s32)
		return
	}
	group := H / Hkv
	qd, kvd := H*D, Hkv*D
	scale := 1 / math.Sqrt(float64(D))
	for h := 0; h < H; h++ {
		g := h / group
		for t := 0; t < T; t++ {
			qh := q[t*qd+h*D : t*qd+(h+1)*D]
			lo := winStart(t, W)
			sc := scores[:t+1]
			m := math.Inf(-1)
			for u := 0; u < lo; u++ {
				sc[u] = 0
			}
			for u := lo; u <= t; u++ {
				kh := k[u*kvd+g*D : u*kvd+(g+1)*D]
				var s F
				for i, x := range qh {
					s += x * kh[i]
				}
				sc[u] = F(float64(s) * scale)
				m = math.Max(m, float64(sc[u]))
			}
			var z float64
			for u := lo; u <= t; u++ {
				e := math.Exp(float64(sc[u]) - m)
				sc[u] = F(e)
				z += e
			}
			lse[h*T+t] = F(m + math.Log(z))
			oh := out[t*qd+h*D : t*qd+(h+1)*D]
			for i := range oh {
				oh[i] = 0
			}
			inv := 1 / z
			for u := lo; u <= t; u++ {
				a := F(float64(sc[u]) * inv)
				vh := v[u*kvd+g*D : u*kvd+(g+1)*D]
				for i := range oh {
					oh[i] += a * vh[i]
				}
			}
		}
	}
}

// AttentionSeqBackward accumulates dq, dk, dv for AttentionSeq given dout,
// rebuilding each probability row from q, k and the saved lse:
//
//	P = softmax(q·kᵀ/√D)   dV += Pᵀ·dO   dP = dO·Vᵀ
//	dS = P ⊙ (dP − rowsum(dP ⊙ P)) / √D   dQ += dS·K   dK += dSᵀ·Q
//
// scratch needs length ≥ 2·T.
func AttentionSeqBackward[F Float](dq, dk, dv, dout, q, k, v, lse []F, T, H, Hkv, D int, scratch []F) {
	AttentionSeqBackwardWindow(dq, dk, dv, dout, q, k, v, lse, T, H, Hkv, D, 0, scratch)
}

// winStart is the first key position query t sees under window W.
func winStart(t, W int) int {
	if W <= 0 {
		return 0
	}
	return max(0, t-W+1)
}

// AttentionSeqBackwardWindow is AttentionSeqBackward for AttentionSeqWindow.
func AttentionSeqBackwardWindow[F Float](dq, dk, dv, dout, q, k, v, lse []F, T, H, Hkv, D, W int, scratch []F) {
	if dq32, ok := f32s(dq); ok {
		dk32, _ := f32s(dk)
		dv32, _ := f32s(dv)
		do32, _ := f32s(dout)
		q32, _ := f32s(q)
		k32, _ := f32s(k)
		v32, _ := f32s(v)
		l32, _ := f32s(lse)
		s32, _ := f32s(scratch)
		kernels.AttentionSeqBackwardWindow(dq32, dk32, dv32, do32, q32, k32, v32, l32, T, H, Hkv, D, W, s32)
		return
	}
	group := H / Hkv
	qd, kvd := H*D, Hkv*D
	scale := 1 / math.Sqrt(float64(D))
	p := scratch[:T]
	dp := scratch[T : 2*T]
	for h := 0; h < H; h++ {
		g := h / group
		for t := 0; t < T; t++ {
			qh := q[t*qd+h*D : t*qd+(h+1)*D]
			doh := dout[t*qd+h*D : t*qd+(h+1)*D]
			l := float64(lse[h*T+t])
			lo := winStart(t, W)
			var rowsum float64
			for u := lo; u <= t; u++ {
				kh := k[u*kvd+g*D : u*kvd+(g+1)*D]
				vh := v[u*kvd+g*D : u*kvd+(g+1)*D]
				var s, d F
				for i := range qh {
					s += qh[i] * kh[i]
					d += doh[i] * vh[i]
				}
				p[u] = F(math.Exp(float64(s)*scale - l))
				dp[u] = d
				rowsum += float64(p[u]) * float64(d)
			}
			dqh := dq[t*qd+h*D : t*qd+(h+1)*D]
			for u := lo; u <= t; u++ {
				ds := F(float64(p[u]) * (float64(dp[u]) - rowsum) * scale)
				kh := k[u*kvd+g*D : u*kvd+(g+1)*D]
				dkh := dk[u*kvd+g*D : u*kvd+(g+1)*D]
				dvh := dv[u*kvd+g*D : u*kvd+(g+1)*D]
				pu := p[u]
				for i := range dqh {
					dqh[i] += ds * kh[i]
					dkh[i] += ds * qh[i]
					dvh[i] += pu * doh[i]
				}
			}
		}
	}
}

// RotateBack applies the inverse rotation of Apply at pos (the RoPE
// backward: a rotation's adjoint is its inverse; kernels.RopeBack).
func (r *Rope) RotateBack(v []float32, pos int) { r.RotateBackHeads(v, 1, 0, pos) }

// RotateBackHeads applies RotateBack to n head vectors v[h·stride:] of one
// position.
func (r *Rope) RotateBackHeads(v []float32, n, stride, pos int) { r.heads(v, n, stride, pos, true) }
