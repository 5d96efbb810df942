package kernels

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// BenchmarkMatMul measures the dequantizing matmul Y = X·Wᵀ per type on a
// 110M-class projection (768×768, and 2048×2048 for 1B-class), at B·T = 1
// (matrix-vector, memory-bound) and 64. It reports GFLOP/s and the GB/s of
// weight bytes streamed.
func BenchmarkMatMul(b *testing.B) {
	r := rand.New(rand.NewPCG(1, 1))
	p := Default()
	for _, typ := range testTypes {
		for _, sh := range [][3]int{{1, 768, 768}, {64, 768, 768}, {1, 2048, 2048}} {
			M, N, K := sh[0], sh[1], sh[2]
			b.Run(fmt.Sprintf("%s/M=%d,N=%d,K=%d", typ, M, N, K), func(b *testing.B) {
				w, _ := randMatrix(b, typ, N, K, r)
				x := make([]float32, M*K)
				for i := range x {
					x[i] = float32(r.NormFloat64())
				}
				y := make([]float32, M*N)
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					MatMul(p, y, x, M, w)
				}
				s := b.Elapsed().Seconds() / float64(b.N)
				b.ReportMetric(2*float64(M*N*K)/s/1e9, "GFLOP/s")
				b.ReportMetric(float64(len(w.Data))/s/1e9, "GB/s")
			})
		}
	}
}
