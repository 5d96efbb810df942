package kernels

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/qtune/qtune/quant"
)

// BenchmarkMatVec measures generation's matrix-vector product (M = 1) per
// type on one worker, on a matrix that fits in L2 (the kernel's compute
// speed) and on the 1B output matrix (32000×2048, beyond the last-level
// cache: memory-bound), reporting the GB/s of weight bytes streamed.
func BenchmarkMatVec(b *testing.B) {
	r := rand.New(rand.NewPCG(1, 1))
	for _, typ := range []quant.Type{quant.Q8_0, quant.Q4_0, quant.NF4, quant.Q4_K, quant.Q6_K, quant.F16, quant.BF16, quant.F32} {
		for _, sh := range [][3]int{{1, 256, 2048}, {2, 32000, 2048}} {
			workers, N, K := sh[0], sh[1], sh[2]
			b.Run(fmt.Sprintf("%s/N=%d,K=%d/workers=%d", typ, N, K, workers), func(b *testing.B) {
				w := repeatRows(b, typ, N, K, r)
				x := randSlice(r, K)
				y := make([]float32, N)
				p := NewPool(workers)
				defer p.Close()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					MatMul(p, y, x, 1, w)
				}
				s := b.Elapsed().Seconds() / float64(b.N)
				b.ReportMetric(float64(len(w.Data))/s/1e9, "GB/s")
			})
		}
	}
}

// repeatRows quantizes 32 random rows and repeats them (K-quant search is
// slow; speed does not depend on the values). NF4's side table spans the
// whole tensor, so it is quantized whole.
func repeatRows(t testing.TB, typ quant.Type, N, K int, r *rand.Rand) Matrix {
	if typ == quant.NF4 || N%32 != 0 || N <= 32 {
		w, _ := randMatrix(t, typ, N, K, r)
		return w
	}
	seed, _ := randMatrix(t, typ, 32, K, r)
	data := make([]byte, len(seed.Data)*(N/32))
	for i := 0; i < len(data); i += len(seed.Data) {
		copy(data[i:], seed.Data)
	}
	return Matrix{Type: typ, Rows: N, Cols: K, Data: data}
}
