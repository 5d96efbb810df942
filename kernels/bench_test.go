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

// BenchmarkAttention compares, at the fast level, the blocked GEMM form of
// causal attention (what AttentionSeq runs) with the row form (its generic
// structure on the vector primitives), one sequence on one thread, at the
// 110M and 1B head shapes and T = 512. It reports GFLOP/s (4·D·H per
// query-key pair forward, 10·D·H backward).
func BenchmarkAttention(b *testing.B) {
	r := rand.New(rand.NewPCG(2, 2))
	for _, sh := range [][3]int{{12, 12, 64}, {32, 8, 64}} {
		H, Hkv, D := sh[0], sh[1], sh[2]
		const T = 512
		qd, kvd := H*D, Hkv*D
		q, k, v, do := randSlice(r, T*qd), randSlice(r, T*kvd), randSlice(r, T*kvd), randSlice(r, T*qd)
		out, lse := make([]float32, T*qd), make([]float32, H*T)
		dq, dk, dv := make([]float32, T*qd), make([]float32, T*kvd), make([]float32, T*kvd)
		sc := make([]float32, 2*T)
		pairs := float64(H) * T * (T + 1) / 2
		for _, form := range []string{"blocked", "rows"} {
			name := fmt.Sprintf("H=%d,Hkv=%d,D=%d,T=%d/%s", H, Hkv, D, T, form)
			b.Run(name+"/fwd", func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					if form == "blocked" {
						attentionSeqBlocked(out, lse, q, k, v, T, H, Hkv, D, 0)
					} else {
						attentionSeqRows(out, lse, q, k, v, T, H, Hkv, D, 0, sc)
					}
				}
				b.ReportMetric(4*float64(D)*pairs*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
			})
			b.Run(name+"/bwd", func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					if form == "blocked" {
						attentionSeqBackwardBlocked(dq, dk, dv, do, q, k, v, lse, T, H, Hkv, D, 0)
					} else {
						attentionSeqBackwardRows(dq, dk, dv, do, q, k, v, lse, T, H, Hkv, D, 0, sc)
					}
				}
				b.ReportMetric(10*float64(D)*pairs*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
			})
		}
	}
}
