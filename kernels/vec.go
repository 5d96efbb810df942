package kernels

// Dot returns Σ a[i]·b[i] over len(a) elements, summed in four interleaved
// partial sums (i mod 4) that are added at the end: (s0+s1)+(s2+s3).
func Dot(a, b []float32) float32 {
	n := len(a)
	b = b[:n]
	var s0, s1, s2, s3 float32
	i := 0
	for ; i+4 <= n; i += 4 {
		s0 += a[i] * b[i]
		s1 += a[i+1] * b[i+1]
		s2 += a[i+2] * b[i+2]
		s3 += a[i+3] * b[i+3]
	}
	for ; i < n; i++ {
		s0 += a[i] * b[i]
	}
	return (s0 + s1) + (s2 + s3)
}

// Axpy computes y += a·x:
//
//	for i := range y { y[i] += a·x[i] }     // fused multiply-add on the fast paths
func Axpy(y []float32, a float32, x []float32) { axpy(y, a, x) }
