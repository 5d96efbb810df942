package kernels

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// Table tests of the attention-side kernels: every level this machine has
// (generic included) against a float64 reference, held to the bounds that
// doc.go states, on lengths with and without vector tails. The check
// functions are shared with the fuzz targets in ops_fuzz_test.go.

const u24 = 0x1p-24 // unit roundoff of float32

// expULP is exp32's documented bound in units in the last place.
const expULP = 2

var opLengths = []int{1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 24, 31, 32, 33, 48, 63, 64, 65, 100, 288, 513, 768, 2053}

func ulpOf(x float64) float64 {
	x = math.Abs(x)
	if x < 0x1p-126 {
		return 0x1p-149
	}
	_, e := math.Frexp(x)
	return math.Ldexp(1, e-24)
}

func copyOf(x []float32) []float32 { return append([]float32(nil), x...) }

// near fails unless |got−want| ≤ tol.
func near(t testing.TB, what string, i int, got float32, want, tol float64) {
	t.Helper()
	if d := math.Abs(float64(got) - want); !(d <= tol) {
		t.Fatalf("%s: element %d = %g, want %g (|d| %.3g > tol %.3g)", what, i, got, want, d, tol)
	}
}

// TestExp32 measures exp32 (generic) and the vector exp (every level)
// against math.Exp over a dense sweep of [−87, 88] and holds them to expULP.
func TestExp32(t *testing.T) {
	var xs []float32
	for x := float32(-87); x <= 88; x = math.Nextafter32(x, 100) {
		xs = append(xs, x)
		// every 241st float: 4.6·10⁶ points, all exponents densely
		b := math.Float32bits(x)
		if x < 0 {
			b -= 240
		} else {
			b += 240
		}
		x = math.Float32frombits(b)
	}
	xs = append(xs, -87, 88, 0, -0.3465736, 0.3465736, -1e-30, 1e-30)
	for _, l := range levels() {
		withLevel(t, l, func() {
			got := make([]float32, len(xs))
			expSum(got, xs, 0)
			worst := 0.0
			for i, x := range xs {
				want := math.Exp(float64(x))
				e := math.Abs(float64(got[i])-want) / ulpOf(want)
				g := math.Abs(float64(exp32(x))-want) / ulpOf(want)
				worst = max(worst, e, g)
				if e > expULP || g > expULP {
					t.Fatalf("%s: exp(%g) = %g (vector) %g (scalar), want %g: %.2f ulp > %d", l, x, got[i], exp32(x), want, max(e, g), expULP)
				}
			}
			t.Logf("%s: worst %.3f ulp over %d points", l, worst, len(xs))
		})
	}
	// saturation outside the clamp
	for _, x := range []float32{-88, -100, -1e30, float32(math.Inf(-1))} {
		if g := exp32(x); !(g >= 0 && g <= 1.7e-38) {
			t.Fatalf("exp32(%g) = %g, want ≤ e^-87", x, g)
		}
	}
	if g := exp32(1000); math.IsInf(float64(g), 0) || g < 1.6e38 {
		t.Fatalf("exp32(1000) = %g, want e^88", g)
	}
}

func checkSoftmax(t testing.TB, n int, seed uint64) {
	r := rand.New(rand.NewPCG(seed, 10))
	x0 := randSlice(r, n)
	for i := range x0 {
		x0[i] *= 6
	}
	m := float64(x0[0])
	for _, v := range x0 {
		m = math.Max(m, float64(v))
	}
	var s, dev float64
	for _, v := range x0 {
		s += math.Exp(float64(v) - m)
		dev = math.Max(dev, m-float64(v))
	}
	lse := m + math.Log(s)
	for _, l := range levels() {
		withLevel(t, l, func() {
			x := copyOf(x0)
			l2 := Softmax(x)
			near(t, fmt.Sprintf("Softmax's log-sum-exp %s n=%d", l, n), 0, l2, lse, lseTol(n, lse, dev))
			for i, v := range x0 {
				want := math.Exp(float64(v) - lse)
				near(t, fmt.Sprintf("Softmax %s n=%d", l, n), i, x[i], want, softmaxTol(n, m-float64(v), want))
			}
			near(t, fmt.Sprintf("LogSumExp %s n=%d", l, n), 0, LogSumExp(x0), lse, lseTol(n, lse, dev))
		})
	}
}

// softmaxTol: p·(n + E + 4 + |x−m|)·2⁻²⁴ (the sum's order, exp, the scale,
// and the rounding of x−m), plus exp's saturation near 10⁻³⁸.
func softmaxTol(n int, dev, p float64) float64 {
	return p*float64(n+expULP+4)*u24 + p*dev*u24 + 2e-38
}

// lseTol: (|lse| + n + E + 2 + max|x−m|)·2⁻²⁴.
func lseTol(n int, lse, dev float64) float64 {
	return (math.Abs(lse) + float64(n+expULP+2) + dev) * u24
}

func TestSoftmaxLogSumExp(t *testing.T) {
	for _, n := range opLengths {
		checkSoftmax(t, n, uint64(n))
	}
}

func checkCrossEntropy(t testing.TB, n int, seed uint64) {
	r := rand.New(rand.NewPCG(seed, 11))
	x := randSlice(r, n)
	for i := range x {
		x[i] *= 4
	}
	d0 := randSlice(r, n)
	target := int(seed % uint64(n))
	scale := float32(0.5 + r.Float64())
	m := float64(x[0])
	for _, v := range x {
		m = math.Max(m, float64(v))
	}
	var s, dev float64
	for _, v := range x {
		s += math.Exp(float64(v) - m)
		dev = math.Max(dev, m-float64(v))
	}
	lse := m + math.Log(s)
	bl := lseTol(n, lse, dev)
	for _, l := range levels() {
		withLevel(t, l, func() {
			d := copyOf(d0)
			loss := CrossEntropy(d, x, target, scale)
			want := lse - float64(x[target])
			near(t, fmt.Sprintf("CrossEntropy loss %s n=%d", l, n), 0, loss, want, bl+2*ulpOf(want))
			for i, v := range x {
				p := math.Exp(float64(v) - lse)
				w := float64(d0[i]) + float64(scale)*p
				tol := float64(scale)*p*(bl/u24+float64(expULP+4)+math.Abs(float64(v)-lse))*u24 + 2*ulpOf(w) + 2e-38
				if i == target {
					w -= float64(scale)
					tol += 2 * ulpOf(w)
				}
				near(t, fmt.Sprintf("CrossEntropy grad %s n=%d", l, n), i, d[i], w, tol)
			}
			if got := CrossEntropy(nil, x, target, scale); math.Float32bits(got) != math.Float32bits(loss) {
				t.Fatalf("CrossEntropy without gradient: %g, with: %g", got, loss)
			}
		})
	}
}

func TestCrossEntropy(t *testing.T) {
	for _, n := range opLengths {
		checkCrossEntropy(t, n, uint64(n))
	}
}

func checkRMSNorm(t testing.TB, n int, seed uint64) {
	r := rand.New(rand.NewPCG(seed, 12))
	x, w, dy := randSlice(r, n), randSlice(r, n), randSlice(r, n)
	dx0, dw0 := randSlice(r, n), randSlice(r, n)
	const eps = 1e-5
	var ss, dot, adot float64
	for i, v := range x {
		ss += float64(v) * float64(v)
		dot += float64(dy[i]) * float64(w[i]) * float64(v)
		adot += math.Abs(float64(dy[i]) * float64(w[i]) * float64(v))
	}
	rr := 1 / math.Sqrt(ss/float64(n)+eps)
	c := rr * rr * rr / float64(n) * dot
	ca := rr * rr * rr / float64(n) * adot
	for _, l := range levels() {
		withLevel(t, l, func() {
			out := make([]float32, n)
			RMSNorm(out, x, w, eps)
			for i, v := range x {
				want := float64(v) * rr * float64(w[i])
				near(t, fmt.Sprintf("RMSNorm %s n=%d", l, n), i, out[i], want, rmsTol(n)*math.Abs(want)+1e-37)
			}
			dx, dw := copyOf(dx0), copyOf(dw0)
			RMSNormBackward(dx, dw, dy, x, w, eps)
			for i, v := range x {
				a := rr * float64(w[i]) * float64(dy[i])
				want := float64(dx0[i]) + a - float64(v)*c
				tol := rmsTol(n)*math.Abs(a) + 3*rmsTol(n)*math.Abs(float64(v))*(ca+math.Abs(c)) + 2*ulpOf(want) + 1e-37
				near(t, fmt.Sprintf("RMSNormBackward dx %s n=%d", l, n), i, dx[i], want, tol)
				g := float64(dy[i]) * float64(v) * rr
				wantW := float64(dw0[i]) + g
				near(t, fmt.Sprintf("RMSNormBackward dw %s n=%d", l, n), i, dw[i], wantW, rmsTol(n)*math.Abs(g)+2*ulpOf(wantW)+1e-37)
			}
			dx2 := copyOf(dx0)
			RMSNormBackward(dx2, nil, dy, x, w, eps)
			for i := range dx2 {
				if math.Float32bits(dx2[i]) != math.Float32bits(dx[i]) {
					t.Fatalf("RMSNormBackward %s: dx with dw nil differs at %d", l, i)
				}
			}
		})
	}
}

// rmsTol: relative bound (n/2 + 4)·2⁻²⁴ of r (the sum of squares in any
// order, halved by the square root) and the two products.
func rmsTol(n int) float64 { return (float64(n)/2 + 4) * u24 }

func TestRMSNorm(t *testing.T) {
	for _, n := range opLengths {
		checkRMSNorm(t, n, uint64(n))
	}
}

func checkSwiGLU(t testing.TB, n int, seed uint64) {
	r := rand.New(rand.NewPCG(seed, 13))
	g, u, dy := randSlice(r, n), randSlice(r, n), randSlice(r, n)
	for i := range g {
		g[i] *= 4
	}
	dg0, du0 := randSlice(r, n), randSlice(r, n)
	for _, l := range levels() {
		withLevel(t, l, func() {
			out := make([]float32, n)
			SwiGLU(out, g, u)
			dg, du := copyOf(dg0), copyOf(du0)
			SwiGLUBackward(dg, du, dy, g, u)
			for i := range g {
				gv, uv, d := float64(g[i]), float64(u[i]), float64(dy[i])
				s := 1 / (1 + math.Exp(-gv))
				want := gv * s * uv
				near(t, fmt.Sprintf("SwiGLU %s n=%d", l, n), i, out[i], want, float64(expULP+4)*u24*math.Abs(want)+1e-37)
				wu := float64(du0[i]) + d*gv*s
				near(t, fmt.Sprintf("SwiGLUBackward du %s n=%d", l, n), i, du[i], wu, float64(expULP+5)*u24*math.Abs(d*gv*s)+2*ulpOf(wu)+1e-37)
				a := d * uv * s
				wg := float64(dg0[i]) + a*(1+gv*(1-s))
				tol := float64(expULP+8)*u24*math.Abs(a)*(1+3*math.Abs(gv)) + 2*ulpOf(wg) + 1e-37
				near(t, fmt.Sprintf("SwiGLUBackward dg %s n=%d", l, n), i, dg[i], wg, tol)
			}
			// in place (out = gate), as the generation path calls it
			gg := copyOf(g)
			SwiGLU(gg, gg, u)
			for i := range gg {
				if math.Float32bits(gg[i]) != math.Float32bits(out[i]) {
					t.Fatalf("SwiGLU %s in place differs at %d", l, i)
				}
			}
		})
	}
}

func TestSwiGLU(t *testing.T) {
	for _, n := range opLengths {
		checkSwiGLU(t, n, uint64(n))
	}
}

// checkRope: Rope then RopeBack against float64 rotations built from the
// same float32 table, both layouts; each output within 3·2⁻²⁴·(|a·c|+|b·s|).
func checkRope(t testing.TB, half int, seed uint64) {
	r := rand.New(rand.NewPCG(seed, 14))
	v0 := randSlice(r, 2*half+3) // a head longer than the rotated part
	freq := make([]float64, half)
	for j := range freq {
		freq[j] = math.Pow(10000, -float64(2*j)/float64(2*half))
	}
	cos, sin := make([]float32, half), make([]float32, half)
	RopeTable(cos, sin, freq, float64(seed%4096))
	for _, neox := range []bool{false, true} {
		pair := func(j int) (int, int) {
			if neox {
				return j, j + half
			}
			return 2 * j, 2*j + 1
		}
		for _, l := range levels() {
			withLevel(t, l, func() {
				for _, sign := range []float64{1, -1} {
					v := copyOf(v0)
					if sign > 0 {
						Rope(v, cos, sin, neox)
					} else {
						RopeBack(v, cos, sin, neox)
					}
					for j := 0; j < half; j++ {
						i0, i1 := pair(j)
						a, b := float64(v0[i0]), float64(v0[i1])
						c, s := float64(cos[j]), sign*float64(sin[j])
						tol := 3 * u24 * (math.Abs(a*c) + math.Abs(b*s) + math.Abs(a*s) + math.Abs(b*c))
						what := fmt.Sprintf("Rope neox=%v sign=%v %s half=%d", neox, sign, l, half)
						near(t, what, i0, v[i0], a*c-b*s, tol)
						near(t, what, i1, v[i1], b*c+a*s, tol)
					}
					for i := 2 * half; i < len(v); i++ {
						if v[i] != v0[i] {
							t.Fatalf("Rope %s touched element %d past the rotated dimensions", l, i)
						}
					}
				}
			})
		}
	}
}

func TestRope(t *testing.T) {
	for _, half := range []int{1, 2, 3, 4, 5, 8, 12, 16, 17, 24, 32, 40, 64, 65} {
		checkRope(t, half, uint64(half*7))
	}
}

// checkRows: Gemv, GemvT, Ger and Axpy on n rows of width d with a row
// stride, held to gemmTol with the number of terms summed.
func checkRows(t testing.TB, n, d int, seed uint64) {
	r := rand.New(rand.NewPCG(seed, 15))
	lda := d + int(seed%5)
	a0 := randSlice(r, (n-1)*lda+d)
	xd, xn := randSlice(r, d), randSlice(r, n)
	yn0, yd0 := randSlice(r, n), randSlice(r, d)
	alpha := float32(0.125)
	for _, l := range levels() {
		withLevel(t, l, func() {
			y := copyOf(yn0)
			Gemv(y, a0, xd, n, d, lda, alpha)
			for u := 0; u < n; u++ {
				var s, abs float64
				for i := 0; i < d; i++ {
					s += float64(a0[u*lda+i]) * float64(xd[i])
					abs += math.Abs(float64(a0[u*lda+i]) * float64(xd[i]))
				}
				near(t, fmt.Sprintf("Gemv %s n=%d d=%d", l, n, d), u, y[u], float64(alpha)*s, float64(alpha)*gemmTol(d+1, abs))
			}
			yt := copyOf(yd0)
			GemvT(yt, a0, xn, n, d, lda)
			for i := 0; i < d; i++ {
				s, abs := float64(yd0[i]), math.Abs(float64(yd0[i]))
				for u := 0; u < n; u++ {
					s += float64(xn[u]) * float64(a0[u*lda+i])
					abs += math.Abs(float64(xn[u]) * float64(a0[u*lda+i]))
				}
				near(t, fmt.Sprintf("GemvT %s n=%d d=%d", l, n, d), i, yt[i], s, gemmTol(n, abs))
			}
			a := copyOf(a0)
			Ger(a, xn, xd, n, d, lda)
			for u := 0; u < n; u++ {
				for i := 0; i < lda && u*lda+i < len(a); i++ {
					want := float64(a0[u*lda+i])
					if i < d {
						want += float64(xn[u]) * float64(xd[i])
					}
					near(t, fmt.Sprintf("Ger %s n=%d d=%d", l, n, d), u*lda+i, a[u*lda+i], want, gemmTol(1, math.Abs(want)+math.Abs(float64(xn[u]))*3))
				}
			}
			ya := copyOf(yd0)
			Axpy(ya, alpha, xd)
			for i := range ya {
				p := float64(alpha) * float64(xd[i])
				near(t, fmt.Sprintf("Axpy %s d=%d", l, d), i, ya[i], float64(yd0[i])+p, gemmTol(1, math.Abs(float64(yd0[i]))+math.Abs(p)))
			}
			ys := copyOf(yd0)
			scal(ys, alpha)
			for i := range ys {
				if ys[i] != yd0[i]*alpha {
					t.Fatalf("Scal %s d=%d: element %d = %g, want %g", l, d, i, ys[i], yd0[i]*alpha)
				}
			}
		})
	}
}

func TestRows(t *testing.T) {
	for _, n := range []int{1, 2, 3, 17, 64} {
		for _, d := range []int{1, 3, 8, 16, 24, 48, 64, 72, 80, 128, 130} {
			checkRows(t, n, d, uint64(n*1000+d))
		}
	}
}

// TestMaxExact: the vector max is exact at every level.
func TestMaxExact(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 3))
	for _, n := range opLengths {
		x := randSlice(r, n)
		want := x[0]
		for _, v := range x {
			want = max(want, v)
		}
		for _, l := range levels() {
			withLevel(t, l, func() {
				if got := maxOf(x); got != want {
					t.Fatalf("max %s n=%d = %g, want %g", l, n, got, want)
				}
			})
		}
	}
}
