package nn

import (
	"math"
	"math/rand/v2"
	"testing"
)

func TestRMSNorm(t *testing.T) {
	x := []float32{1, -2, 3, -4}
	w := []float32{1, 0.5, 2, 1}
	out := make([]float32, 4)
	RMSNorm(out, x, w, 1e-5)
	r := 1 / math.Sqrt((1+4+9+16)/4.0+1e-5)
	for i := range x {
		want := float64(x[i]) * r * float64(w[i])
		if math.Abs(float64(out[i])-want) > 1e-6 {
			t.Fatalf("out[%d] = %g, want %g", i, out[i], want)
		}
	}
}

// TestRopeConventions: rotating a vector in the adjacent-pair convention
// equals rotating its half-split permutation in the NeoX convention.
func TestRopeConventions(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 1))
	D := 16
	adj := NewRope(D, 10000, false, nil, 0)
	neox := NewRope(D, 10000, true, nil, 0)
	for pos := 0; pos < 40; pos += 7 {
		v := make([]float32, D)
		for i := range v {
			v[i] = float32(r.NormFloat64())
		}
		// HF row a·D/2+b holds GGUF row 2b+a.
		h := make([]float32, D)
		for b := 0; b < D/2; b++ {
			h[b], h[D/2+b] = v[2*b], v[2*b+1]
		}
		adj.Apply(v, pos)
		neox.Apply(h, pos)
		for b := 0; b < D/2; b++ {
			if math.Abs(float64(h[b]-v[2*b])) > 1e-6 || math.Abs(float64(h[D/2+b]-v[2*b+1])) > 1e-6 {
				t.Fatalf("pos %d pair %d: neox (%g,%g) adjacent (%g,%g)", pos, b, h[b], h[D/2+b], v[2*b], v[2*b+1])
			}
		}
	}
}

func TestRopeRotationAndScaling(t *testing.T) {
	rp := NewRope(2, 10000, false, nil, 0)
	v := []float32{1, 0}
	rp.Apply(v, 1) // θ = 1 rad for j = 0
	if math.Abs(float64(v[0])-math.Cos(1)) > 1e-6 || math.Abs(float64(v[1])-math.Sin(1)) > 1e-6 {
		t.Fatalf("rotation by 1 rad gave %v", v)
	}
	lin := NewRope(2, 10000, false, nil, 4) // positions divided by 4
	w := []float32{1, 0}
	lin.Apply(w, 4)
	if math.Abs(float64(w[0])-math.Cos(1)) > 1e-6 {
		t.Fatalf("linear scaling: %v", w)
	}
	f := NewRope(4, 10000, false, []float32{1, 2}, 0)
	if math.Abs(f.Freq[1]-math.Pow(10000, -0.5)/2) > 1e-12 {
		t.Fatalf("freq factor not applied: %v", f.Freq)
	}
}

func TestSoftmaxAndLogSumExp(t *testing.T) {
	x := []float32{1000, 1001, 999}
	l := LogSumExp(x)
	want := 1001 + math.Log(math.Exp(-1)+1+math.Exp(-2))
	if math.Abs(l-want) > 1e-9 {
		t.Fatalf("LogSumExp %g, want %g", l, want)
	}
	Softmax(x)
	var s float64
	for _, v := range x {
		s += float64(v)
	}
	if math.Abs(s-1) > 1e-6 || !(x[1] > x[0] && x[0] > x[2]) {
		t.Fatalf("softmax %v", x)
	}
}

// TestAttentionMatchesNaive compares grouped-query attention with a float64
// loop written from the definition.
func TestAttentionMatchesNaive(t *testing.T) {
	r := rand.New(rand.NewPCG(2, 2))
	H, Hkv, D, n := 4, 2, 8, 5
	q := make([]float32, H*D)
	keys := make([]float32, n*Hkv*D)
	vals := make([]float32, n*Hkv*D)
	for _, s := range [][]float32{q, keys, vals} {
		for i := range s {
			s[i] = float32(r.NormFloat64())
		}
	}
	out := make([]float32, H*D)
	Attention(out, q, keys, vals, n, Hkv*D, H, Hkv, D, make([]float32, n))
	for h := 0; h < H; h++ {
		g := h / (H / Hkv)
		sc := make([]float64, n)
		var mx float64 = -1e300
		for t := 0; t < n; t++ {
			for i := 0; i < D; i++ {
				sc[t] += float64(q[h*D+i]) * float64(keys[t*Hkv*D+g*D+i])
			}
			sc[t] /= math.Sqrt(float64(D))
			mx = math.Max(mx, sc[t])
		}
		var z float64
		for t := range sc {
			sc[t] = math.Exp(sc[t] - mx)
			z += sc[t]
		}
		for i := 0; i < D; i++ {
			var want float64
			for t := 0; t < n; t++ {
				want += sc[t] / z * float64(vals[t*Hkv*D+g*D+i])
			}
			if math.Abs(float64(out[h*D+i])-want) > 1e-5 {
				t.Fatalf("head %d dim %d: %g, want %g", h, i, out[h*D+i], want)
			}
		}
	}
}

func TestSwiGLU(t *testing.T) {
	g := []float32{0, 1, -2}
	u := []float32{3, 2, 1}
	out := make([]float32, 3)
	SwiGLU(out, g, u)
	for i := range g {
		gv := float64(g[i])
		want := gv / (1 + math.Exp(-gv)) * float64(u[i])
		if math.Abs(float64(out[i])-want) > 1e-6 {
			t.Fatalf("out[%d] = %g, want %g", i, out[i], want)
		}
	}
}
