package kernels

import (
	"math"
	"math/rand/v2"
	"sync/atomic"
	"testing"

	"github.com/qtune/qtune/quant"
)

func randMatrix(t testing.TB, typ quant.Type, rows, cols int, r *rand.Rand) (Matrix, []float32) {
	t.Helper()
	f := make([]float32, rows*cols)
	for i := range f {
		f[i] = float32(r.NormFloat64())
	}
	size, err := quant.Bytes(typ, int64(len(f)))
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, size)
	if err := quant.Quantize(typ, b, f); err != nil {
		t.Fatal(err)
	}
	deq := make([]float32, len(f))
	if err := quant.Dequantize(typ, deq, b); err != nil {
		t.Fatal(err)
	}
	return Matrix{Type: typ, Rows: rows, Cols: cols, Data: b}, deq
}

var testTypes = []quant.Type{quant.F32, quant.F16, quant.BF16, quant.Q8_0, quant.Q4_0, quant.Q4_K, quant.Q6_K, quant.NF4}

// decodeTypes are the types decodeRow has a loop of its own for, beyond
// testTypes (the types of llama.cpp's common downloads).
var decodeTypes = []quant.Type{quant.Q5_K, quant.Q3_K, quant.Q2_K, quant.IQ4_NL, quant.IQ4_XS, quant.Q4_1, quant.Q5_0, quant.Q5_1}

// matTypes is every weight type the matmul tests and fuzz targets cover.
var matTypes = append(append([]quant.Type(nil), testTypes...), decodeTypes...)

func blockOf(typ quant.Type) int {
	in, _ := quant.Lookup(typ)
	return in.BlockSize
}

// TestMatMulMatchesReference checks Y = X·Wᵀ against a float64 loop over
// the dequantized weights, for every type and shapes with tails.
func TestMatMulMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	p := NewPool(3)
	defer p.Close()
	for _, typ := range matTypes {
		for _, sh := range [][3]int{{1, 1, 256}, {3, 7, 256}, {5, 13, 512}, {17, 9, 768}} {
			M, N, K := sh[0], sh[1], sh[2]
			if K%blockOf(typ) != 0 {
				continue
			}
			w, deq := randMatrix(t, typ, N, K, r)
			x := make([]float32, M*K)
			for i := range x {
				x[i] = float32(r.NormFloat64())
			}
			y := make([]float32, M*N)
			MatMul(p, y, x, M, w)
			for m := 0; m < M; m++ {
				for n := 0; n < N; n++ {
					var s float64
					for k := 0; k < K; k++ {
						s += float64(x[m*K+k]) * float64(deq[n*K+k])
					}
					tol := 1e-4 * math.Sqrt(float64(K)) * (1 + math.Abs(s))
					if q8Active(typ, curLevel, M) {
						tol += q8Tol(&w, n, x[m*K:(m+1)*K])
					}
					if d := math.Abs(float64(y[m*N+n]) - s); d > tol {
						t.Fatalf("%s %v: y[%d][%d] = %g, want %g", typ, sh, m, n, y[m*N+n], s)
					}
				}
			}
		}
	}
}

func TestMatMulTMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	p := NewPool(2)
	defer p.Close()
	for _, typ := range matTypes {
		M, N, K := 6, 11, 256
		w, deq := randMatrix(t, typ, N, K, r)
		dy := make([]float32, M*N)
		for i := range dy {
			dy[i] = float32(r.NormFloat64())
		}
		dx := make([]float32, M*K)
		for i := range dx {
			dx[i] = 1 // accumulates
		}
		MatMulT(p, dx, dy, M, w)
		for m := 0; m < M; m++ {
			for k := 0; k < K; k++ {
				s := 1.0
				for n := 0; n < N; n++ {
					s += float64(dy[m*N+n]) * float64(deq[n*K+k])
				}
				if d := math.Abs(float64(dx[m*K+k]) - s); d > 1e-4*(1+math.Abs(s)) {
					t.Fatalf("%s: dx[%d][%d] = %g, want %g", typ, m, k, dx[m*K+k], s)
				}
			}
		}
	}
}

// TestMatMulDeterministicAcrossWorkers: the same inputs give bit-identical
// outputs with 1, 2, 3 and 8 workers.
func TestMatMulDeterministicAcrossWorkers(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	w, _ := randMatrix(t, quant.Q4_0, 37, 512, r)
	M := 9
	x := make([]float32, M*512)
	for i := range x {
		x[i] = float32(r.NormFloat64())
	}
	var ref []float32
	for _, n := range []int{1, 2, 3, 8} {
		p := NewPool(n)
		y := make([]float32, M*37)
		MatMul(p, y, x, M, w)
		p.Close()
		if ref == nil {
			ref = y
			continue
		}
		for i := range y {
			if math.Float32bits(y[i]) != math.Float32bits(ref[i]) {
				t.Fatalf("%d workers: y[%d] = %g, 1 worker gave %g", n, i, y[i], ref[i])
			}
		}
	}
}

func TestParallelCoversRangeOnce(t *testing.T) {
	p := NewPool(4)
	defer p.Close()
	for _, n := range []int{0, 1, 3, 4, 5, 17, 100} {
		for _, grain := range []int{1, 4, 7} {
			hits := make([]int32, n)
			p.Parallel(n, grain, func(lo, hi int) {
				if lo%grain != 0 {
					t.Errorf("chunk start %d not a multiple of grain %d", lo, grain)
				}
				for i := lo; i < hi; i++ {
					atomic.AddInt32(&hits[i], 1)
				}
			})
			for i, h := range hits {
				if h != 1 {
					t.Fatalf("n=%d grain=%d: index %d visited %d times", n, grain, i, h)
				}
			}
		}
	}
}

func TestDotTail(t *testing.T) {
	for n := 0; n < 11; n++ {
		a := make([]float32, n)
		b := make([]float32, n)
		var want float32
		for i := range a {
			a[i], b[i] = float32(i+1), 2
			want += float32(2 * (i + 1))
		}
		if got := Dot(a, b); got != want {
			t.Fatalf("n=%d: Dot = %g, want %g", n, got, want)
		}
	}
}
