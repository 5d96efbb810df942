package cuda

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/qtune/qtune/quant"
)

// Device-timed benchmarks (CUDA events around b.N launches): the batched
// product of a 1B model's FFN shape (x 2048×2048 by W 5632×2048, the up
// projection of TinyLlama-1.1B) as decode + cuBLAS GEMM, the decode alone,
// and generation's matrix-vector product over a 64 MiB-class weight, with
// the rates each reaches. `make test-gpu` runs them beside PyTorch's bf16
// matmul of the same shapes (scripts/gpu_peer.py).

func benchMatrix(b *testing.B, d *Device, typ quant.Type, N, K int) *Matrix {
	r := rand.New(rand.NewPCG(1, uint64(typ)))
	w := randn(r, N*K, 0.05)
	m, err := d.UploadMatrix(typ, N, K, quantized(b, typ, w))
	must(b, err)
	b.Cleanup(func() { m.Free() })
	return m
}

func timed(b *testing.B, d *Device, f func() error) float64 {
	must(b, f()) // warm-up (and the first compile)
	must(b, d.Sync())
	b.ResetTimer()
	tm, err := d.StartTimer()
	must(b, err)
	for i := 0; i < b.N; i++ {
		must(b, f())
	}
	ms, err := tm.Stop()
	must(b, err)
	b.StopTimer()
	return ms / float64(b.N)
}

func BenchmarkGPUMatMul(b *testing.B) {
	d := gpu(b)
	const M, N, K = 2048, 5632, 2048
	for _, typ := range []quant.Type{quant.Q4_0, quant.NF4, quant.Q4_K} {
		for _, p := range []Precision{F32, BF16} {
			b.Run(fmt.Sprintf("%s/%s", typ, p), func(b *testing.B) {
				m := benchMatrix(b, d, typ, N, K)
				ws, err := d.Alloc(MatMulWorkspace(M, m, p))
				must(b, err)
				defer ws.Free()
				x, y := zeros(b, d, M*K), zeros(b, d, M*N)
				ms := timed(b, d, func() error { return d.MatMul(y, x, M, m, ws, p) })
				b.ReportMetric(ms, "ms/op")
				b.ReportMetric(2*M*N*K/ms/1e9, "TFLOP/s")
			})
		}
	}
}

func BenchmarkGPUDequantize(b *testing.B) {
	d := gpu(b)
	const N, K = 5632, 2048
	for _, typ := range []quant.Type{quant.Q4_0, quant.NF4, quant.Q4_K, quant.Q6_K, quant.Q8_0} {
		b.Run(typ.String(), func(b *testing.B) {
			m := benchMatrix(b, d, typ, N, K)
			out := zeros(b, d, N*K/2) // bf16
			ms := timed(b, d, func() error { return d.Dequantize(out, m, 0, N*K, BF16) })
			b.ReportMetric(ms, "ms/op")
			b.ReportMetric(float64(m.Buf.Bytes+2*N*K)/ms/1e6, "GB/s")
		})
	}
}

func BenchmarkGPUMatVec(b *testing.B) {
	d := gpu(b)
	const N, K = 16384, 8192
	for _, typ := range []quant.Type{quant.Q4_0, quant.Q8_0, quant.NF4, quant.Q4_K, quant.Q6_K, quant.F16} {
		b.Run(typ.String(), func(b *testing.B) {
			m := benchMatrix(b, d, typ, N, K)
			x, y := zeros(b, d, K), zeros(b, d, N)
			ms := timed(b, d, func() error { return d.MatVec(y, x, 1, m) })
			b.ReportMetric(ms, "ms/op")
			b.ReportMetric(float64(m.Buf.Bytes)/ms/1e6, "weightGB/s")
		})
	}
}
