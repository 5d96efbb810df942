package nn

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// The []float32 instantiations run the kernels; the float64 ones run the
// reference loops the finite-difference checks validate. These tests hold
// the first to the second.

func f64(x []float32) []float64 {
	o := make([]float64, len(x))
	for i, v := range x {
		o[i] = float64(v)
	}
	return o
}

// close32 fails unless each got[i] is within tol·(max|want|) of want[i].
func close32(t *testing.T, what string, got []float32, want []float64, tol float64) {
	t.Helper()
	var scale float64
	for _, w := range want {
		scale = math.Max(scale, math.Abs(w))
	}
	for i := range want {
		if d := math.Abs(float64(got[i]) - want[i]); !(d <= tol*(scale+1e-30)) {
			t.Fatalf("%s[%d]: float32 %g, float64 %g (|d| %.3g > %.3g)", what, i, got[i], want[i], d, tol*scale)
		}
	}
}

func randF32(r *rand.Rand, n int) []float32 { return f32(randVec(r, n)) }

func TestFloat32OpsMatchFloat64(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	for _, n := range []int{1, 7, 16, 33, 288} {
		x, w, dy := randF32(r, n), randF32(r, n), randF32(r, n)
		out := make([]float32, n)
		out64 := make([]float64, n)
		RMSNorm(out, x, w, 1e-5)
		RMSNorm(out64, f64(x), f64(w), 1e-5)
		close32(t, fmt.Sprint("RMSNorm n=", n), out, out64, 1e-6)
		dx, dw := make([]float32, n), make([]float32, n)
		dx64, dw64 := make([]float64, n), make([]float64, n)
		RMSNormBackward(dx, dw, dy, x, w, 1e-5)
		RMSNormBackward(dx64, dw64, f64(dy), f64(x), f64(w), 1e-5)
		close32(t, fmt.Sprint("RMSNormBackward dx n=", n), dx, dx64, 1e-5)
		close32(t, fmt.Sprint("RMSNormBackward dw n=", n), dw, dw64, 1e-6)
		SwiGLU(out, x, w)
		SwiGLU(out64, f64(x), f64(w))
		close32(t, fmt.Sprint("SwiGLU n=", n), out, out64, 1e-6)
		dg, du := make([]float32, n), make([]float32, n)
		dg64, du64 := make([]float64, n), make([]float64, n)
		SwiGLUBackward(dg, du, dy, x, w)
		SwiGLUBackward(dg64, du64, f64(dy), f64(x), f64(w))
		close32(t, fmt.Sprint("SwiGLUBackward dg n=", n), dg, dg64, 1e-6)
		close32(t, fmt.Sprint("SwiGLUBackward du n=", n), du, du64, 1e-6)
		d := make([]float32, n)
		d64 := make([]float64, n)
		tg := n / 2
		l := CrossEntropy(d, x, tg, 0.25)
		l64 := CrossEntropy(d64, f64(x), tg, 0.25)
		if math.Abs(l-l64) > 1e-6*(1+math.Abs(l64)) {
			t.Fatalf("CrossEntropy n=%d: float32 %g, float64 %g", n, l, l64)
		}
		close32(t, fmt.Sprint("CrossEntropy grad n=", n), d, d64, 1e-6)
	}
}

func TestFloat32AttentionMatchesFloat64(t *testing.T) {
	r := rand.New(rand.NewPCG(8, 8))
	for _, sh := range [][4]int{{5, 4, 2, 3}, {9, 4, 2, 8}, {20, 6, 6, 48}, {17, 4, 1, 64}, {3, 2, 2, 24}} {
		T, H, Hkv, D := sh[0], sh[1], sh[2], sh[3]
		q, k, v := randF32(r, T*H*D), randF32(r, T*Hkv*D), randF32(r, T*Hkv*D)
		dout := randF32(r, T*H*D)
		out, lse := make([]float32, T*H*D), make([]float32, H*T)
		out64, lse64 := make([]float64, T*H*D), make([]float64, H*T)
		AttentionSeq(out, lse, q, k, v, T, H, Hkv, D, make([]float32, T))
		AttentionSeq(out64, lse64, f64(q), f64(k), f64(v), T, H, Hkv, D, make([]float64, T))
		what := fmt.Sprintf("T=%d H=%d Hkv=%d D=%d", T, H, Hkv, D)
		close32(t, "AttentionSeq out "+what, out, out64, 1e-5)
		close32(t, "AttentionSeq lse "+what, lse, lse64, 1e-6)
		dq, dk, dv := make([]float32, len(q)), make([]float32, len(k)), make([]float32, len(v))
		dq64, dk64, dv64 := make([]float64, len(q)), make([]float64, len(k)), make([]float64, len(v))
		AttentionSeqBackward(dq, dk, dv, dout, q, k, v, lse, T, H, Hkv, D, make([]float32, 2*T))
		AttentionSeqBackward(dq64, dk64, dv64, f64(dout), f64(q), f64(k), f64(v), lse64, T, H, Hkv, D, make([]float64, 2*T))
		close32(t, "AttentionSeqBackward dq "+what, dq, dq64, 1e-5)
		close32(t, "AttentionSeqBackward dk "+what, dk, dk64, 1e-5)
		close32(t, "AttentionSeqBackward dv "+what, dv, dv64, 1e-5)
	}
}
