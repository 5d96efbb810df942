package nn

import (
	"math"

	"github.com/qtune/qtune/kernels"
)

// Float is the element type of the ops: float32 in the engine, float64 in
// the finite-difference checks of the backward passes.
//
// The []float32 instantiations run the vectorised float32 kernels of
// package kernels (see kernels/doc.go for their bounds); every other
// instantiation, float64 in particular, runs the loops written here, which
// are the reference the kernels are checked against. f32s picks the path.
type Float interface{ ~float32 | ~float64 }

// f32s reports whether F's slices are []float32 (the kernel path) and
// converts them.
func f32s[F Float](s []F) ([]float32, bool) {
	v, ok := any(s).([]float32)
	return v, ok
}

// RMSNorm writes out[i] = x[i] / sqrt(mean(x²) + eps) · w[i] for one row.
// Reference (float64 here; kernels.RMSNorm for float32):
//
//	ss = Σ x[i]²/n;  r = 1/sqrt(ss+eps);  out[i] = x[i]·r·w[i]
func RMSNorm[F Float](out, x, w []F, eps float32) {
	if o, ok := f32s(out); ok {
		x32, _ := f32s(x)
		w32, _ := f32s(w)
		kernels.RMSNorm(o, x32, w32, eps)
		return
	}
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

// Rope holds the rotation frequencies of rotary position embeddings and
// the cos/sin tables of the first positions.
type Rope struct {
	Dims  int       // rotated dimensions per head (≤ head size)
	Neox  bool      // false: pairs (2j, 2j+1) as GGUF/llama2.c; true: pairs (j, j+Dims/2) as HF
	Freq  []float64 // Dims/2 inverse frequencies, scaling already applied
	Scale float64   // linear position scale (1 = none)
	// Mscale multiplies cos and sin (Phi-3's LongRoPE attention factor; 1 =
	// none): the rotation then also scales the vector, as llama.cpp's and
	// Hugging Face's do.
	Mscale float64
	cos    []float32 // (P, Dims/2) cos(pos·Scale·Freq[j]) for pos < P ≤ 4096 (ropeTableBytes)
	sin    []float32 // (P, Dims/2) sin(pos·Scale·Freq[j])
}

// ropeTableBytes caps the precomputed tables (cos and sin together) below
// the size that would have to be reserved with the budget; later positions
// compute their row on the fly.
const ropeTableBytes = 1 << 20

// NewRope builds frequencies theta^(-2j/dims), divided by factors[j] when
// factors is non-empty (Llama 3's rope_freqs), with linear scaling of
// positions by 1/linear when linear > 0.
func NewRope(dims int, theta float64, neox bool, factors []float32, linear float64) Rope {
	return NewRopeScaled(dims, theta, neox, factors, linear, 1)
}

// NewRopeScaled is NewRope with cos and sin multiplied by mscale.
func NewRopeScaled(dims int, theta float64, neox bool, factors []float32, linear, mscale float64) Rope {
	if mscale == 0 {
		mscale = 1
	}
	r := Rope{Dims: dims, Neox: neox, Freq: make([]float64, dims/2), Scale: 1, Mscale: mscale}
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
	half := len(r.Freq)
	if half > 0 {
		n := min(4096, ropeTableBytes/(8*half))
		r.cos, r.sin = make([]float32, n*half), make([]float32, n*half)
		for p := 0; p < n; p++ {
			r.row(r.cos[p*half:(p+1)*half], r.sin[p*half:(p+1)*half], p)
		}
	}
	return r
}

// table returns the cos/sin row of position pos: the precomputed one, or
// one computed into buf (length ≥ Dims) past the table.
func (r *Rope) table(pos int, buf []float32) (cos, sin []float32) {
	half := len(r.Freq)
	if pos >= 0 && (pos+1)*half <= len(r.cos) {
		return r.cos[pos*half : (pos+1)*half], r.sin[pos*half : (pos+1)*half]
	}
	cos, sin = buf[:half], buf[half:2*half]
	r.row(cos, sin, pos)
	return cos, sin
}

// Row computes position pos's cos/sin row (len(cos) = len(sin) = Dims/2),
// times Mscale: the table a device applies.
func (r *Rope) Row(cos, sin []float32, pos int) { r.row(cos, sin, pos) }

// row computes position pos's cos/sin row, times Mscale.
func (r *Rope) row(cos, sin []float32, pos int) {
	kernels.RopeTable(cos, sin, r.Freq, float64(pos)*r.Scale)
	if r.Mscale != 1 && r.Mscale != 0 {
		m := float32(r.Mscale)
		for j := range cos {
			cos[j] *= m
			sin[j] *= m
		}
	}
}

// Apply rotates one head vector v (len ≥ Dims) at position pos in place
// (kernels.Rope): (a, b) → (a cos θ − b sin θ, a sin θ + b cos θ),
// θ = pos·Scale·Freq[j], with cos θ and sin θ rounded to float32.
func (r *Rope) Apply(v []float32, pos int) { r.ApplyHeads(v, 1, 0, pos) }

// ApplyHeads rotates n head vectors v[h·stride:] of one position, sharing
// one table row.
func (r *Rope) ApplyHeads(v []float32, n, stride, pos int) { r.heads(v, n, stride, pos, false) }

func (r *Rope) heads(v []float32, n, stride, pos int, back bool) {
	if len(r.Freq) == 0 {
		return
	}
	var buf [256]float32
	var cos, sin []float32
	if r.Dims <= len(buf) {
		cos, sin = r.table(pos, buf[:])
	} else {
		cos, sin = r.table(pos, make([]float32, r.Dims))
	}
	for h := 0; h < n; h++ {
		if back {
			kernels.RopeBack(v[h*stride:], cos, sin, r.Neox)
		} else {
			kernels.Rope(v[h*stride:], cos, sin, r.Neox)
		}
	}
}

// Softmax normalises x in place (kernels.Softmax: max subtracted first).
func Softmax(x []float32) { kernels.Softmax(x) }

// LogSumExp returns log Σ exp(x[i]) computed stably in float64 (the
// evaluation's exact figure; kernels.LogSumExp is the float32 kernel).
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
	if o, ok := f32s(out); ok {
		g32, _ := f32s(gate)
		u32, _ := f32s(up)
		kernels.SwiGLU(o, g32, u32)
		return
	}
	up = up[:len(gate)]
	for i, g := range gate {
		out[i] = F(float64(g)/(1+math.Exp(-float64(g)))) * up[i]
	}
}

// GeGLU writes out[i] = gelu(gate[i])·up[i], gelu in its tanh form
// (kernels.GeGLU for float32).
func GeGLU[F Float](out, gate, up []F) {
	if o, ok := f32s(out); ok {
		g32, _ := f32s(gate)
		u32, _ := f32s(up)
		kernels.GeGLU(o, g32, u32)
		return
	}
	up = up[:len(gate)]
	for i, g := range gate {
		gv := float64(g)
		out[i] = F(0.5*gv*(1+math.Tanh(0.7978845608028654*(gv+0.044715*gv*gv*gv)))) * up[i]
	}
}

// Activation is the gated feed-forward's nonlinearity.
type Activation uint8

const (
	SiLU     Activation = iota // SwiGLU: silu(gate)·up (Llama, Qwen, Phi, Mistral, SmolLM)
	GELUTanh                   // GeGLU: gelu_tanh(gate)·up (Gemma)
	// GELUTable is GeGLU as llama.cpp's CPU backend computes it, gelu read
	// from a float16 table (kernels.GeGLUTable): for matching that backend
	// bit for bit in tests, inference only (its backward is GeGLU's).
	GELUTable
)

func (a Activation) String() string {
	switch a {
	case GELUTanh:
		return "gelu-tanh"
	case GELUTable:
		return "gelu-tanh-fp16-table"
	}
	return "silu"
}

// Gated writes out = act(gate)·up.
func Gated[F Float](a Activation, out, gate, up []F) {
	switch {
	case a == GELUTable:
		if o, ok := f32s(out); ok {
			g32, _ := f32s(gate)
			u32, _ := f32s(up)
			kernels.GeGLUTable(o, g32, u32)
			return
		}
		GeGLU(out, gate, up)
	case a == GELUTanh:
		GeGLU(out, gate, up)
	default:
		SwiGLU(out, gate, up)
	}
}

// Attention computes causal grouped-query attention for one query position.
// q is (H·D) for the query, keys and values are the cached rows for
// positions 0..n-1, each (Hkv·D) with stride kvStride; out is (H·D). scores
// is scratch of length ≥ n. Query head h uses kv head h / (H/Hkv).
//
// Reference: out_h = Σ_t softmax_t(q_h·k_{t,g}/√D) · v_{t,g}.
//
// Kernels: scores = kernels.Gemv over the key rows, kernels.Softmax, and
// out = kernels.GemvT over the value rows.
func Attention(out, q []float32, keys, values []float32, n, kvStride, H, Hkv, D int, scores []float32) {
	group := H / Hkv
	scale := float32(1 / math.Sqrt(float64(D)))
	for h := 0; h < H; h++ {
		g := h / group
		sc := scores[:n]
		kernels.Gemv(sc, keys[g*D:], q[h*D:(h+1)*D], n, D, kvStride, scale)
		kernels.Softmax(sc)
		oh := out[h*D : (h+1)*D]
		clear(oh)
		kernels.GemvT(oh, values[g*D:], sc, n, D, kvStride)
	}
}
