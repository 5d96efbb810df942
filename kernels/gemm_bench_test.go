package kernels

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// BenchmarkGemm measures the float32 GEMMs at 110M/1B-class shapes with
// B·T = 512 (GFLOP/s).
func BenchmarkGemm(b *testing.B) {
	r := rand.New(rand.NewPCG(1, 1))
	p := Default()
	for _, sh := range [][3]int{{512, 768, 768}, {512, 2048, 2048}, {512, 8192, 2048}} {
		M, N, K := sh[0], sh[1], sh[2]
		a, w := randSlice(r, M*K), randSlice(r, N*K)
		c := make([]float32, M*N)
		for _, op := range []string{"NT", "NN", "TN"} {
			b.Run(fmt.Sprintf("%s/M=%d,N=%d,K=%d", op, M, N, K), func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					switch op {
					case "NT":
						GemmNT(p, c, a, w, M, N, K, false)
					case "NN":
						GemmNN(p, c, a, w, M, N, K)
					case "TN":
						GemmTN(p, w[:N*K], c[:M*N], a, N, K, M)
					}
				}
				b.ReportMetric(2*float64(M*N*K)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
			})
		}
	}
}
