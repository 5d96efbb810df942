//go:build !amd64 || noasm

package kernels

func axpy(y []float32, a float32, x []float32)   { axpyGeneric(y, a, x) }
func scal(x []float32, a float32)                { scalGeneric(x, a) }
func mulScale(out, x, w []float32, a float32)    { mulScaleGeneric(out, x, w, a) }
func maxOf(x []float32) float32                  { return maxGeneric(x) }
func expSum(dst, x []float32, m float32) float32 { return expSumGeneric(dst, x, m) }
func addExp(dst, x []float32, m, a float32)      { addExpGeneric(dst, x, m, a) }
func swiglu(out, gate, up []float32)             { swigluGeneric(out, gate, up) }
func swigluBack(dgate, dup, dy, gate, up []float32) {
	swigluBackGeneric(dgate, dup, dy, gate, up)
}
func dot3(a, b, c []float32) float32                   { return dot3Generic(a, b, c) }
func rmsBack(dx, dw, dy, x, w []float32, r, c float32) { rmsBackGeneric(dx, dw, dy, x, w, r, c) }
func ropeI(v, cos, sin []float32, sign float32)        { ropeIGeneric(v, cos, sin, sign) }
func ropeN(v, cos, sin []float32, sign float32)        { ropeNGeneric(v, cos, sin, sign) }
func gemv(y, a, x []float32, n, d, lda int, alpha float32) {
	gemvGeneric(y, a, x, n, d, lda, alpha)
}
func gemvT(y, a, x []float32, n, d, lda int) { gemvTGeneric(y, a, x, n, d, lda) }
func ger(a, x, y []float32, n, d, lda int)   { gerGeneric(a, x, y, n, d, lda) }
