//go:build amd64 && !noasm

package kernels

// Dispatch of the attention-side kernels (ops.go) to the vector bodies of
// ops_amd64.s: the bulk of a row (a multiple of the lane count) goes to the
// level's assembly, the tail to the generic loop.

// bulk returns how many of n elements the level's vector body takes, and
// whether that body is the AVX-512 one.
func bulk(n int) (k int, z bool) {
	switch curLevel {
	case levelAVX512:
		return n &^ 15, true
	case levelAVX2:
		return n &^ 7, false
	}
	return 0, false
}

// rowISA picks the vector body for row kernels of width d, which take no
// tail: zmm when d is a multiple of 16 at AVX-512, ymm when it is a multiple
// of 8 at AVX2 or above (so head size 8 still vectorises), else none.
func rowISA(d int) (ok, z bool) {
	switch {
	case curLevel >= levelAVX512 && d%16 == 0:
		return true, true
	case curLevel >= levelAVX2 && d%8 == 0:
		return true, false
	}
	return false, false
}

func axpy(y []float32, a float32, x []float32) {
	x = x[:len(y)]
	k, z := bulk(len(y))
	if k > 0 {
		if z {
			axpyAVX512(&y[0], &x[0], k, a)
		} else {
			axpyAVX2(&y[0], &x[0], k, a)
		}
	}
	axpyGeneric(y[k:], a, x[k:])
}

func scal(x []float32, a float32) {
	k, z := bulk(len(x))
	if k > 0 {
		if z {
			scalAVX512(&x[0], k, a)
		} else {
			scalAVX2(&x[0], k, a)
		}
	}
	scalGeneric(x[k:], a)
}

func mulScale(out, x, w []float32, a float32) {
	out, w = out[:len(x)], w[:len(x)]
	k, z := bulk(len(x))
	if k > 0 {
		if z {
			mulScaleAVX512(&out[0], &x[0], &w[0], k, a)
		} else {
			mulScaleAVX2(&out[0], &x[0], &w[0], k, a)
		}
	}
	mulScaleGeneric(out[k:], x[k:], w[k:], a)
}

func maxOf(x []float32) float32 {
	k, z := bulk(len(x))
	if k == 0 {
		return maxGeneric(x)
	}
	var m float32
	if z {
		m = maxAVX512(&x[0], k)
	} else {
		m = maxAVX2(&x[0], k)
	}
	if k < len(x) {
		m = max(m, maxGeneric(x[k:]))
	}
	return m
}

func expSum(dst, x []float32, m float32) float32 {
	k, z := bulk(len(x))
	var s float32
	if k > 0 {
		var d *float32
		if dst != nil {
			dst = dst[:len(x)]
			d = &dst[0]
		}
		if z {
			s = expSumAVX512(d, &x[0], k, m)
		} else {
			s = expSumAVX2(d, &x[0], k, m)
		}
	}
	if dst != nil {
		dst = dst[k:]
	}
	return s + expSumGeneric(dst, x[k:], m)
}

func addExp(dst, x []float32, m, a float32) {
	x = x[:len(dst)]
	k, z := bulk(len(dst))
	if k > 0 {
		if z {
			addExpAVX512(&dst[0], &x[0], k, m, a)
		} else {
			addExpAVX2(&dst[0], &x[0], k, m, a)
		}
	}
	addExpGeneric(dst[k:], x[k:], m, a)
}

func swiglu(out, gate, up []float32) {
	n := len(gate)
	out, up = out[:n], up[:n]
	k, z := bulk(n)
	if k > 0 {
		if z {
			swigluAVX512(&out[0], &gate[0], &up[0], k)
		} else {
			swigluAVX2(&out[0], &gate[0], &up[0], k)
		}
	}
	swigluGeneric(out[k:], gate[k:], up[k:])
}

func swigluBack(dgate, dup, dy, gate, up []float32) {
	n := len(gate)
	dgate, dup, dy, up = dgate[:n], dup[:n], dy[:n], up[:n]
	k, z := bulk(n)
	if k > 0 {
		if z {
			swigluBackAVX512(&dgate[0], &dup[0], &dy[0], &gate[0], &up[0], k)
		} else {
			swigluBackAVX2(&dgate[0], &dup[0], &dy[0], &gate[0], &up[0], k)
		}
	}
	swigluBackGeneric(dgate[k:], dup[k:], dy[k:], gate[k:], up[k:])
}

func dot3(a, b, c []float32) float32 {
	n := len(a)
	b, c = b[:n], c[:n]
	k, z := bulk(n)
	var s float32
	if k > 0 {
		if z {
			s = dot3AVX512(&a[0], &b[0], &c[0], k)
		} else {
			s = dot3AVX2(&a[0], &b[0], &c[0], k)
		}
	}
	return s + dot3Generic(a[k:], b[k:], c[k:])
}

func rmsBack(dx, dw, dy, x, w []float32, r, c float32) {
	n := len(x)
	dx, dy, w = dx[:n], dy[:n], w[:n]
	k, z := bulk(n)
	if k > 0 {
		var pw *float32
		if dw != nil {
			dw = dw[:n]
			pw = &dw[0]
		}
		if z {
			rmsBackAVX512(&dx[0], pw, &dy[0], &x[0], &w[0], k, r, c)
		} else {
			rmsBackAVX2(&dx[0], pw, &dy[0], &x[0], &w[0], k, r, c)
		}
	}
	if dw != nil {
		dw = dw[k:]
	}
	rmsBackGeneric(dx[k:], dw, dy[k:], x[k:], w[k:], r, c)
}

func ropeI(v, cos, sin []float32, sign float32) {
	half := len(cos)
	v, sin = v[:2*half], sin[:half]
	k, z := bulk(2 * half) // elements of v; k/2 table entries
	if k > 0 {
		if z {
			ropeIAVX512(&v[0], &cos[0], &sin[0], k, sign)
		} else {
			ropeIAVX2(&v[0], &cos[0], &sin[0], k, sign)
		}
	}
	ropeIGeneric(v[k:], cos[k/2:], sin[k/2:], sign)
}

func ropeN(v, cos, sin []float32, sign float32) {
	half := len(cos)
	v, sin = v[:2*half], sin[:half]
	k, z := bulk(half)
	if k > 0 {
		if z {
			ropeNAVX512(&v[0], &cos[0], &sin[0], k, half, sign)
		} else {
			ropeNAVX2(&v[0], &cos[0], &sin[0], k, half, sign)
		}
	}
	if k == half {
		return
	}
	// the tail pairs (v[j], v[j+half]) for k ≤ j < half
	for j := k; j < half; j++ {
		s := sign * sin[j]
		a, b := v[j], v[j+half]
		v[j] = a*cos[j] - b*s
		v[j+half] = b*cos[j] + a*s
	}
}

func gemv(y, a, x []float32, n, d, lda int, alpha float32) {
	ok, z := rowISA(d)
	switch {
	case !ok || d == 0:
		gemvGeneric(y, a, x, n, d, lda, alpha)
	case z:
		gemvAVX512(&y[0], &a[0], &x[0], n, d, lda, alpha)
	default:
		gemvAVX2(&y[0], &a[0], &x[0], n, d, lda, alpha)
	}
}

func gemvT(y, a, x []float32, n, d, lda int) {
	ok, z := rowISA(d)
	switch {
	case !ok:
		gemvTGeneric(y, a, x, n, d, lda)
	case z:
		gemvTAVX512(&y[0], &a[0], &x[0], n, d, lda)
	default:
		gemvTAVX2(&y[0], &a[0], &x[0], n, d, lda)
	}
}

func ger(a, x, y []float32, n, d, lda int) {
	ok, z := rowISA(d)
	switch {
	case !ok:
		gerGeneric(a, x, y, n, d, lda)
	case z:
		gerAVX512(&a[0], &x[0], &y[0], n, d, lda)
	default:
		gerAVX2(&a[0], &x[0], &y[0], n, d, lda)
	}
}

//go:noescape
func axpyAVX512(y, x *float32, n int, a float32)

//go:noescape
func scalAVX512(x *float32, n int, a float32)

//go:noescape
func mulScaleAVX512(out, x, w *float32, n int, a float32)

//go:noescape
func maxAVX512(x *float32, n int) float32

//go:noescape
func expSumAVX512(dst, x *float32, n int, m float32) float32

//go:noescape
func addExpAVX512(dst, x *float32, n int, m, a float32)

//go:noescape
func swigluAVX512(out, gate, up *float32, n int)

//go:noescape
func swigluBackAVX512(dg, du, dy, gate, up *float32, n int)

//go:noescape
func dot3AVX512(a, b, c *float32, n int) float32

//go:noescape
func rmsBackAVX512(dx, dw, dy, x, w *float32, n int, r, c float32)

//go:noescape
func ropeIAVX512(v, cos, sin *float32, n int, sign float32)

//go:noescape
func ropeNAVX512(v, cos, sin *float32, n, half int, sign float32)

//go:noescape
func gemvAVX512(y, a, x *float32, n, d, lda int, alpha float32)

//go:noescape
func gemvTAVX512(y, a, x *float32, n, d, lda int)

//go:noescape
func gerAVX512(a, x, y *float32, n, d, lda int)

//go:noescape
func axpyAVX2(y, x *float32, n int, a float32)

//go:noescape
func scalAVX2(x *float32, n int, a float32)

//go:noescape
func mulScaleAVX2(out, x, w *float32, n int, a float32)

//go:noescape
func maxAVX2(x *float32, n int) float32

//go:noescape
func expSumAVX2(dst, x *float32, n int, m float32) float32

//go:noescape
func addExpAVX2(dst, x *float32, n int, m, a float32)

//go:noescape
func swigluAVX2(out, gate, up *float32, n int)

//go:noescape
func swigluBackAVX2(dg, du, dy, gate, up *float32, n int)

//go:noescape
func dot3AVX2(a, b, c *float32, n int) float32

//go:noescape
func rmsBackAVX2(dx, dw, dy, x, w *float32, n int, r, c float32)

//go:noescape
func ropeIAVX2(v, cos, sin *float32, n int, sign float32)

//go:noescape
func ropeNAVX2(v, cos, sin *float32, n, half int, sign float32)

//go:noescape
func gemvAVX2(y, a, x *float32, n, d, lda int, alpha float32)

//go:noescape
func gemvTAVX2(y, a, x *float32, n, d, lda int)

//go:noescape
func gerAVX2(a, x, y *float32, n, d, lda int)
