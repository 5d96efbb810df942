package nn

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// Finite-difference and cross-path checks of the ops the model families
// beyond Llama 2 add: GeGLU (Gemma), the sliding-window mask (Gemma 3),
// RoPE on part of a head (Phi-4-mini) and with a LongRoPE attention factor
// (Phi-3).

func TestGeGLUBackwardFD(t *testing.T) {
	r := rand.New(rand.NewPCG(21, 21))
	n := 17
	g, u, c := randVec(r, n), randVec(r, n), randVec(r, n)
	for i := range g {
		g[i] *= 2.5 // reach the tails of tanh too
	}
	out := make([]float64, n)
	loss := func() float64 { GeGLU(out, g, u); return dot64(c, out) }
	dg, du := make([]float64, n), make([]float64, n)
	GeGLUBackward(dg, du, c, g, u)
	checkGrad(t, "dgate", g, dg, loss)
	checkGrad(t, "dup", u, du, loss)
	// The float32 kernel computes the same function.
	o32 := make([]float32, n)
	GeGLU(o32, f32(g), f32(u))
	GeGLU(out, g, u)
	close32(t, "GeGLU float32", o32, out, 1e-6)
	dg32, du32 := make([]float32, n), make([]float32, n)
	GeGLUBackward(dg32, du32, f32(c), f32(g), f32(u))
	close32(t, "GeGLUBackward dgate float32", dg32, dg, 1e-6)
	close32(t, "GeGLUBackward dup float32", du32, du, 1e-6)
}

// TestGeGLUValues pins gelu_tanh at known points of the function
// (0.5·x·(1+tanh(√(2/π)(x+0.044715x³))), values from the formula in
// float64 by hand: gelu(1) = 0.8411919906082768, gelu(−1) = −0.15880800939172324).
func TestGeGLUValues(t *testing.T) {
	out := make([]float64, 3)
	GeGLU(out, []float64{1, -1, 0}, []float64{1, 1, 1})
	for i, want := range []float64{0.8411919906082768, -0.15880800939172324, 0} {
		if math.Abs(out[i]-want) > 1e-12 {
			t.Fatalf("gelu_tanh(%d) = %.16g, want %.16g", i, out[i], want)
		}
	}
}

func TestWindowAttentionBackwardFD(t *testing.T) {
	r := rand.New(rand.NewPCG(22, 22))
	T, H, Hkv, D, W := 7, 4, 2, 3, 3
	q, k, v := randVec(r, T*H*D), randVec(r, T*Hkv*D), randVec(r, T*Hkv*D)
	c := randVec(r, T*H*D)
	out := make([]float64, T*H*D)
	lse := make([]float64, H*T)
	sc := make([]float64, T)
	loss := func() float64 { AttentionSeqWindow(out, lse, q, k, v, T, H, Hkv, D, W, sc); return dot64(c, out) }
	loss()
	dq, dk, dv := make([]float64, len(q)), make([]float64, len(k)), make([]float64, len(v))
	AttentionSeqBackwardWindow(dq, dk, dv, c, q, k, v, lse, T, H, Hkv, D, W, make([]float64, 2*T))
	checkGrad(t, "dq", q, dq, loss)
	checkGrad(t, "dk", k, dk, loss)
	checkGrad(t, "dv", v, dv, loss)
}

// TestWindowAttentionSemantics: under window W, query t's output is the
// unwindowed attention over keys t−W+1..t alone.
func TestWindowAttentionSemantics(t *testing.T) {
	r := rand.New(rand.NewPCG(23, 23))
	T, H, Hkv, D, W := 9, 2, 1, 4, 3
	q, k, v := randVec(r, T*H*D), randVec(r, T*Hkv*D), randVec(r, T*Hkv*D)
	out := make([]float64, T*H*D)
	AttentionSeqWindow(out, make([]float64, H*T), q, k, v, T, H, Hkv, D, W, make([]float64, T))
	for tq := 0; tq < T; tq++ {
		lo := max(0, tq-W+1)
		n := tq + 1 - lo
		// The last query of a sequence made of keys lo..tq sees exactly them.
		qq := make([]float64, n*H*D)
		copy(qq[(n-1)*H*D:], q[tq*H*D:(tq+1)*H*D])
		o := make([]float64, n*H*D)
		AttentionSeq(o, make([]float64, H*n), qq, k[lo*Hkv*D:(tq+1)*Hkv*D], v[lo*Hkv*D:(tq+1)*Hkv*D], n, H, Hkv, D, make([]float64, n))
		for i := 0; i < H*D; i++ {
			if d := math.Abs(o[(n-1)*H*D+i] - out[tq*H*D+i]); d > 1e-12 {
				t.Fatalf("t=%d i=%d: windowed %g, over the window alone %g", tq, i, out[tq*H*D+i], o[(n-1)*H*D+i])
			}
		}
	}
}

func TestFloat32WindowAttentionMatchesFloat64(t *testing.T) {
	r := rand.New(rand.NewPCG(24, 24))
	for _, sh := range [][5]int{{9, 4, 2, 8, 4}, {70, 4, 2, 16, 5}, {33, 2, 1, 64, 32}, {12, 2, 2, 8, 1}} {
		T, H, Hkv, D, W := sh[0], sh[1], sh[2], sh[3], sh[4]
		q, k, v := randF32(r, T*H*D), randF32(r, T*Hkv*D), randF32(r, T*Hkv*D)
		dout := randF32(r, T*H*D)
		out, lse := make([]float32, T*H*D), make([]float32, H*T)
		out64, lse64 := make([]float64, T*H*D), make([]float64, H*T)
		AttentionSeqWindow(out, lse, q, k, v, T, H, Hkv, D, W, make([]float32, T))
		AttentionSeqWindow(out64, lse64, f64(q), f64(k), f64(v), T, H, Hkv, D, W, make([]float64, T))
		what := fmt.Sprintf("T=%d H=%d Hkv=%d D=%d W=%d", T, H, Hkv, D, W)
		close32(t, "out "+what, out, out64, 1e-5)
		close32(t, "lse "+what, lse, lse64, 1e-5)
		dq, dk, dv := make([]float32, len(q)), make([]float32, len(k)), make([]float32, len(v))
		dq64, dk64, dv64 := make([]float64, len(q)), make([]float64, len(k)), make([]float64, len(v))
		AttentionSeqBackwardWindow(dq, dk, dv, dout, q, k, v, lse, T, H, Hkv, D, W, make([]float32, 2*T))
		AttentionSeqBackwardWindow(dq64, dk64, dv64, f64(dout), f64(q), f64(k), f64(v), lse64, T, H, Hkv, D, W, make([]float64, 2*T))
		close32(t, "dq "+what, dq, dq64, 1e-5)
		close32(t, "dk "+what, dk, dk64, 1e-5)
		close32(t, "dv "+what, dv, dv64, 1e-5)
	}
}

// TestRopePartialAndMscale: a rotation of the first dims of a head leaves
// the rest alone, scales by Mscale, and RotateBack is its adjoint.
func TestRopePartialAndMscale(t *testing.T) {
	r := rand.New(rand.NewPCG(25, 25))
	const head, dims = 12, 8
	for _, neox := range []bool{false, true} {
		rp := NewRopeScaled(dims, 10000, neox, []float32{1, 2, 4, 8}, 0, 1.19)
		for pos := 0; pos < 40; pos += 7 {
			x, y := f32(randVec(r, head)), f32(randVec(r, head))
			ax := append([]float32(nil), x...)
			rp.Apply(ax, pos)
			for i := dims; i < head; i++ {
				if ax[i] != x[i] {
					t.Fatalf("neox=%v: dimension %d past the rotated %d changed", neox, i, dims)
				}
			}
			var n0, n1 float64
			for i := 0; i < dims; i++ {
				n0 += float64(x[i]) * float64(x[i])
				n1 += float64(ax[i]) * float64(ax[i])
			}
			if math.Abs(math.Sqrt(n1/n0)-1.19) > 1e-5 {
				t.Fatalf("neox=%v pos=%d: norm ratio %g, want the mscale 1.19", neox, pos, math.Sqrt(n1/n0))
			}
			checkAdjoint(t, &rp, x, y, pos, 1e-4)
		}
	}
}
