package kernels

import "math"

// The generic loops of the attention-side kernels (ops.go): the reference
// each vector body in ops_amd64.s mirrors operation for operation, and what
// -tags noasm, other architectures and the vector tails run.

// exp32 constants: the clamp, the rounding shift 1.5·2²³, log₂e, ln 2 split
// in two (Cody–Waite: ln2Hi has 9 significant bits, so n·ln2Hi is exact for
// |n| ≤ 127), and the Taylor coefficients 1/k! of eʳ on |r| ≤ ln2/2.
const (
	expLo    = -87
	expHi    = 88
	expMagic = 0x1.8p23
	expLog2e = 1.44269504088896341
	expLn2Hi = 0.693359375
	expLn2Lo = -2.12194440e-4
)

var expC = [8]float32{1, 1, 1.0 / 2, 1.0 / 6, 1.0 / 24, 1.0 / 120, 1.0 / 720, 1.0 / 5040}

// exp32 is the kernels' eˣ in float32: x clamped to [−87, 88], n =
// round(x·log₂e), r = x − n·ln2 (|r| ≤ ln2/2 + rounding), p = Σ_{k≤7} rᵏ/k!
// by Horner, and 2ⁿ added to p's exponent bits. Error (measured against
// math.Exp over every float32 in [−87, 88] in TestExp32): at most expULP
// units in the last place; outside the clamp the result saturates at e⁻⁸⁷
// (≈1.6·10⁻³⁸, absolute error below that) or e⁸⁸.
func exp32(x float32) float32 {
	x = min(max(x, expLo), expHi)
	t := x*expLog2e + expMagic
	n := t - expMagic
	r := x - n*expLn2Hi
	r -= n * expLn2Lo
	p := expC[7]
	for k := 6; k >= 0; k-- {
		p = p*r + expC[k]
	}
	return math.Float32frombits(math.Float32bits(p) + math.Float32bits(t)<<23)
}

func axpyGeneric(y []float32, a float32, x []float32) {
	x = x[:len(y)]
	for i := range y {
		y[i] += a * x[i]
	}
}

func scalGeneric(x []float32, a float32) {
	for i := range x {
		x[i] *= a
	}
}

func mulScaleGeneric(out, x, w []float32, a float32) {
	out, w = out[:len(x)], w[:len(x)]
	for i, v := range x {
		out[i] = v * a * w[i]
	}
}

func maxGeneric(x []float32) float32 {
	m := x[0]
	for _, v := range x[1:] {
		m = max(m, v)
	}
	return m
}

// expSumGeneric sets dst[i] = exp32(x[i]−m) (dst may be nil or x) and
// returns Σ of them in order.
func expSumGeneric(dst, x []float32, m float32) float32 {
	var s float32
	if dst == nil {
		for _, v := range x {
			s += exp32(v - m)
		}
		return s
	}
	dst = dst[:len(x)]
	for i, v := range x {
		e := exp32(v - m)
		dst[i] = e
		s += e
	}
	return s
}

func addExpGeneric(dst, x []float32, m, a float32) {
	x = x[:len(dst)]
	for i := range dst {
		dst[i] += a * exp32(x[i]-m)
	}
}

func swigluGeneric(out, gate, up []float32) {
	out, up = out[:len(gate)], up[:len(gate)]
	for i, g := range gate {
		out[i] = g / (exp32(-g) + 1) * up[i]
	}
}

func swigluBackGeneric(dgate, dup, dy, gate, up []float32) {
	n := len(gate)
	dgate, dup, dy, up = dgate[:n], dup[:n], dy[:n], up[:n]
	for i, g := range gate {
		s := 1 / (exp32(-g) + 1)
		d := dy[i]
		dup[i] += d * g * s
		dgate[i] += d * up[i] * s * (1 + g*(1-s))
	}
}

func dot3Generic(a, b, c []float32) float32 {
	b, c = b[:len(a)], c[:len(a)]
	var s float32
	for i := range a {
		s += a[i] * b[i] * c[i]
	}
	return s
}

func rmsBackGeneric(dx, dw, dy, x, w []float32, r, c float32) {
	n := len(x)
	dx, dy, w = dx[:n], dy[:n], w[:n]
	for i := range x {
		dx[i] += r*w[i]*dy[i] - x[i]*c
	}
	if dw != nil {
		dw = dw[:n]
		for i := range x {
			dw[i] += dy[i] * x[i] * r
		}
	}
}

// ropeIGeneric rotates the adjacent pairs (v[2j], v[2j+1]), j < len(cos),
// by the angle whose cosine and sine are cos[j] and sign·sin[j].
func ropeIGeneric(v, cos, sin []float32, sign float32) {
	v, sin = v[:2*len(cos)], sin[:len(cos)]
	for j, c := range cos {
		s := sign * sin[j]
		a, b := v[2*j], v[2*j+1]
		v[2*j] = a*c - b*s
		v[2*j+1] = b*c + a*s
	}
}

// ropeNGeneric rotates the half-split pairs (v[j], v[j+half]), half =
// len(cos).
func ropeNGeneric(v, cos, sin []float32, sign float32) {
	half := len(cos)
	v, sin = v[:2*half], sin[:half]
	for j, c := range cos {
		s := sign * sin[j]
		a, b := v[j], v[j+half]
		v[j] = a*c - b*s
		v[j+half] = b*c + a*s
	}
}

func gemvGeneric(y, a, x []float32, n, d, lda int, alpha float32) {
	x = x[:d]
	for u := 0; u < n; u++ {
		row := a[u*lda : u*lda+d]
		var s float32
		for i, v := range row {
			s += v * x[i]
		}
		y[u] = alpha * s
	}
}

func gemvTGeneric(y, a, x []float32, n, d, lda int) {
	y = y[:d]
	for u := 0; u < n; u++ {
		xu := x[u]
		row := a[u*lda : u*lda+d]
		for i, v := range row {
			y[i] += xu * v
		}
	}
}

func gerGeneric(a, x, y []float32, n, d, lda int) {
	y = y[:d]
	for u := 0; u < n; u++ {
		xu := x[u]
		row := a[u*lda : u*lda+d]
		for i, v := range y {
			row[i] += xu * v
		}
	}
}
