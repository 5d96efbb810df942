package nn

import (
	"math"
)

// Float is the element type of the ops: float32 in the engine, float64 in
// the finite-difference checks of the backward passes.
type Float interface{ ~float32 | ~float64 }

// RMSNorm writes out[i] = x[i] / sqrt(mean(x²) + eps) · w[i] for one row,
// accumulating the mean of squares in float64. Reference:
//
//	ss = Σ x[i]²/n;  r = 1/sqrt(ss+eps);  out[i] = x[i]·r·w[i]
func RMSNorm[F Float](out, x, w []F, eps float32) {
	r := F(rmsInv(x, eps))
	w = w[:len(x)]
	for i, v := range x {
		out[i] = v * r * w[i]
	}
}

// rmsInv returns 1/sqrt(mean(x²)+eps), accumulated in float64.
func rmsInv[F Float](x []F, eps float32) float64 {
	var ss float64
	for _, v := range x {
		ss += float64(v) * float64(v)
	}
	return 1 / math.Sqrt(ss/float64(len(x))+float64(eps))
}

// Rope holds the rotation frequencies of rotary position embeddings.
type Rope struct {
	Dims  int       // rotated dimensions per head (≤ head size)
	Neox  bool      // false: pairs (2j, 2j+1) as GGUF/llama2.c; true: pairs (j, j+Dims/2) as HF
	Freq  []float64 // Dims/2 inverse frequencies, scaling already applied
	Scale float64   // linear position scale (1 = none)
}

// NewRope builds frequencies theta^(-2j/dims), divided by factors[j] when
// factors is non-empty (Llama 3's rope_freqs), with linear scaling of
// positions by 1/linear when linear > 0.
func NewRope(dims int, theta float64, neox bool, factors []float32, linear float64) Rope {
	r := Rope{Dims: dims, Neox: neox, Freq: make([]float64, dims/2), Scale: 1}
	for j := range r.Freq {
		f := math.Pow(theta, -float64(2*j)/float64(dims))
		if j < len(factors) && factors[j] != 0 {
			f /= float64(factors[j])
		}
		r.Freq[j] = f
	}
	if linear > 0 {
		r.Scale = 1 / linear
	}
	return r
}

// Apply rotates one head vector v (len ≥ Dims) at position pos in place:
// (a, b) → (a cos θ − b sin θ, a sin θ + b cos θ), θ = pos·Freq[j].
func (r *Rope) Apply(v []float32, pos int) {
	half := r.Dims / 2
	p := float64(pos) * r.Scale
	for j := 0; j < half; j++ {
		s, c := math.Sincos(p * r.Freq[j])
		i0, i1 := 2*j, 2*j+1
		if r.Neox {
			i0, i1 = j, j+half
		}
		a, b := float64(v[i0]), float64(v[i1])
		v[i0] = float32(a*c - b*s)
		v[i1] = float32(a*s + b*c)
	}
}

// Softmax normalises x in place (max subtracted first; sum in float64).
func Softmax(x []float32) {
	if len(x) == 0 {
		return
	}
	m := x[0]
	for _, v := range x[1:] {
		if v > m {
			m = v
		}
	}
	var s float64
	for i, v := range x {
		e := math.Exp(float64(v - m))
		x[i] = float32(e)
		s += e
	}
	inv := 1 / s
	for i := range x {
		x[i] = float32(float64(x[i]) * inv)
	}
}

// LogSumExp returns log Σ exp(x[i]) computed stably in float64.
func LogSumExp(x []float32) float64 {
	m := x[0]
	for _, v := range x[1:] {
		if v > m {
			m = v
		}
	}
	var s float64
	for _, v := range x {
		s += math.Exp(float64(v - m))
	}
	return float64(m) + math.Log(s)
}

// SwiGLU writes out[i] = silu(gate[i]) · up[i], silu(g) = g/(1+e^−g).
func SwiGLU[F Float](out, gate, up []F) {
	up = up[:len(gate)]
	for i, g := range gate {
		out[i] = F(float64(g)/(1+math.Exp(-float64(g)))) * up[i]
	}
}

// Attention computes causal grouped-query attention for one query position.
// q is (H·D) for the query, keys and values are the cached rows for
// positions 0..n-1, each (Hkv·D) with stride kvStride; out is (H·D). scores
// is scratch of length ≥ n. Query head h uses kv head h / (H/Hkv).
//
// Reference: out_h = Σ_t softmax_t(q_h·k_{t,g}/√D) · v_{t,g}.
func Attention(out, q []float32, keys, values []float32, n, kvStride, H, Hkv, D int, scores []float32) {
	group := H / Hkv
	scale := float32(1 / math.Sqrt(float64(D)))
	for h := 0; h < H; h++ {
		g := h / group
		qh := q[h*D : (h+1)*D]
		sc := scores[:n]
		for t := 0; t < n; t++ {
			k := keys[t*kvStride+g*D : t*kvStride+(g+1)*D]
			var s float32
			for i, v := range qh {
				s += v * k[i]
			}
			sc[t] = s * scale
		}
		Softmax(sc)
		oh := out[h*D : (h+1)*D]
		for i := range oh {
			oh[i] = 0
		}
		for t := 0; t < n; t++ {
			a := sc[t]
			v := values[t*kvStride+g*D : t*kvStride+(g+1)*D]
			for i := range oh {
				oh[i] += a * v[i]
			}
		}
	}
}
