package nn

import (
	"math"
	"math/rand/v2"
	"testing"
)

// Finite-difference checks in float64: for a scalar L = Σ c·f(inputs) with
// random c, the analytic gradient of each input element must equal
// (L(x+h) − L(x−h)) / 2h.

func randVec(r *rand.Rand, n int) []float64 {
	v := make([]float64, n)
	for i := range v {
		v[i] = r.NormFloat64()
	}
	return v
}

func dot64(a, b []float64) float64 {
	var s float64
	for i := range a {
		s += a[i] * b[i]
	}
	return s
}

// checkGrad compares grad with central differences of loss at each element of x.
func checkGrad(t *testing.T, name string, x, grad []float64, loss func() float64) {
	t.Helper()
	const h = 1e-6
	for i := range x {
		old := x[i]
		x[i] = old + h
		lp := loss()
		x[i] = old - h
		lm := loss()
		x[i] = old
		fd := (lp - lm) / (2 * h)
		if math.Abs(fd-grad[i]) > 1e-6*(1+math.Abs(fd)) {
			t.Fatalf("%s[%d]: analytic %.9g, finite difference %.9g", name, i, grad[i], fd)
		}
	}
}

func TestRMSNormBackwardFD(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 1))
	n := 13
	x, w, c := randVec(r, n), randVec(r, n), randVec(r, n)
	out := make([]float64, n)
	loss := func() float64 { RMSNorm(out, x, w, 1e-5); return dot64(c, out) }
	dx, dw := make([]float64, n), make([]float64, n)
	RMSNormBackward(dx, dw, c, x, w, 1e-5)
	checkGrad(t, "dx", x, dx, loss)
	checkGrad(t, "dw", w, dw, loss)
}

func TestSwiGLUBackwardFD(t *testing.T) {
	r := rand.New(rand.NewPCG(2, 2))
	n := 9
	g, u, c := randVec(r, n), randVec(r, n), randVec(r, n)
	out := make([]float64, n)
	loss := func() float64 { SwiGLU(out, g, u); return dot64(c, out) }
	dg, du := make([]float64, n), make([]float64, n)
	SwiGLUBackward(dg, du, c, g, u)
	checkGrad(t, "dgate", g, dg, loss)
	checkGrad(t, "dup", u, du, loss)
}

func TestCrossEntropyFD(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 3))
	logits := randVec(r, 11)
	d := make([]float64, 11)
	CrossEntropy(d, logits, 4, 0.5)
	checkGrad(t, "dlogits", logits, d, func() float64 { return 0.5 * CrossEntropy[float64](nil, logits, 4, 0) })
	want := LogSumExp(f32(logits)) - logits[4]
	if got := CrossEntropy[float64](nil, logits, 4, 0); math.Abs(got-want) > 1e-5 {
		t.Fatalf("loss %g, want %g", got, want)
	}
}

func f32(x []float64) []float32 {
	o := make([]float32, len(x))
	for i, v := range x {
		o[i] = float32(v)
	}
	return o
}

func TestAttentionSeqBackwardFD(t *testing.T) {
	r := rand.New(rand.NewPCG(4, 4))
	T, H, Hkv, D := 5, 4, 2, 3
	q, k, v := randVec(r, T*H*D), randVec(r, T*Hkv*D), randVec(r, T*Hkv*D)
	c := randVec(r, T*H*D)
	out := make([]float64, T*H*D)
	lse := make([]float64, H*T)
	sc := make([]float64, T)
	loss := func() float64 { AttentionSeq(out, lse, q, k, v, T, H, Hkv, D, sc); return dot64(c, out) }
	loss()
	dq, dk, dv := make([]float64, len(q)), make([]float64, len(k)), make([]float64, len(v))
	AttentionSeqBackward(dq, dk, dv, c, q, k, v, lse, T, H, Hkv, D, make([]float64, 2*T))
	checkGrad(t, "dq", q, dq, loss)
	checkGrad(t, "dk", k, dk, loss)
	checkGrad(t, "dv", v, dv, loss)
}

// TestAttentionSeqMatchesCached: the training attention equals the
// inference attention through a KV cache, position by position.
func TestAttentionSeqMatchesCached(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 5))
	T, H, Hkv, D := 6, 4, 2, 8
	q, k, v := f32(randVec(r, T*H*D)), f32(randVec(r, T*Hkv*D)), f32(randVec(r, T*Hkv*D))
	out := make([]float32, T*H*D)
	AttentionSeq(out, make([]float32, H*T), q, k, v, T, H, Hkv, D, make([]float32, T))
	one := make([]float32, H*D)
	for tpos := 0; tpos < T; tpos++ {
		Attention(one, q[tpos*H*D:(tpos+1)*H*D], k, v, tpos+1, Hkv*D, H, Hkv, D, make([]float32, T))
		for i, want := range one {
			if math.Abs(float64(out[tpos*H*D+i]-want)) > 1e-5 {
				t.Fatalf("t=%d i=%d: seq %g cached %g", tpos, i, out[tpos*H*D+i], want)
			}
		}
	}
}

// TestRopeAdjoint: ⟨Apply(x), y⟩ = ⟨x, RotateBack(y)⟩, the exact statement
// that RotateBack is RoPE's backward (RoPE is linear, so this is its
// finite-difference check without rounding).
func TestRopeAdjoint(t *testing.T) {
	r := rand.New(rand.NewPCG(6, 6))
	for _, neox := range []bool{false, true} {
		rp := NewRope(8, 10000, neox, nil, 0)
		for pos := 0; pos < 50; pos += 13 {
			checkAdjoint(t, &rp, f32(randVec(r, 8)), f32(randVec(r, 8)), pos, 1e-5)
		}
	}
}

// checkAdjoint: ⟨Apply(x), y⟩ = ⟨x, RotateBack(y)⟩ within tol.
func checkAdjoint(t *testing.T, rp *Rope, x, y []float32, pos int, tol float64) {
	t.Helper()
	ax := append([]float32(nil), x...)
	rp.Apply(ax, pos)
	by := append([]float32(nil), y...)
	rp.RotateBack(by, pos)
	var l, rr float64
	for i := range x {
		l += float64(ax[i]) * float64(y[i])
		rr += float64(x[i]) * float64(by[i])
	}
	if math.Abs(l-rr) > tol {
		t.Fatalf("neox=%v pos=%d: <Rx,y>=%g <x,Rᵀy>=%g", rp.Neox, pos, l, rr)
	}
}
