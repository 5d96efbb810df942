package kernels

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/qtune/qtune/quant"
)

// Tolerance of every fast path against the exact sum: a float32 dot product
// of K terms summed in any order, fused or not, is within (K+2)·2⁻²⁴·Σ|aₖbₖ|
// of the exact value (plus |c₀| for accumulating forms); the tests hold each
// fast path and each generic path to that bound against a float64 loop.
func gemmTol(K int, absSum float64) float64 {
	return float64(K+2)*0x1p-24*absSum + 1e-30
}

// levels lists the instruction-set tiers this machine can run, best first.
func levels() []level {
	var ls []level
	for l := maxLevel; l >= levelGeneric; l-- {
		if l == levelGeneric || kernelFor(l).fn != nil { // the tiers this architecture has
			ls = append(ls, l)
		}
	}
	return ls
}

func withLevel(t testing.TB, l level, f func()) {
	old := setLevel(l)
	defer setLevel(old)
	f()
}

func randSlice(r *rand.Rand, n int) []float32 {
	s := make([]float32, n)
	for i := range s {
		s[i] = float32(r.NormFloat64())
	}
	return s
}

// checkNear compares got with the float64 reference want (and abs sums).
func checkNear(t testing.TB, what string, got []float32, want, abs []float64, K int) {
	t.Helper()
	for i := range want {
		if d := math.Abs(float64(got[i]) - want[i]); !(d <= gemmTol(K, abs[i])) {
			t.Fatalf("%s: element %d = %g, want %g (|d| %.3g > tol %.3g)", what, i, got[i], want[i], d, gemmTol(K, abs[i]))
		}
	}
}

// refGemm computes C = c0 + Σ_k A(i,k)·B(k,j) in float64 with the |·| sums.
func refGemm(M, N, K int, A, B func(i, j int) float64, c0 []float32) (want, abs []float64) {
	want = make([]float64, M*N)
	abs = make([]float64, M*N)
	for i := 0; i < M; i++ {
		for j := 0; j < N; j++ {
			var s, a float64
			if c0 != nil {
				s, a = float64(c0[i*N+j]), math.Abs(float64(c0[i*N+j]))
			}
			for k := 0; k < K; k++ {
				v := A(i, k) * B(k, j)
				s += v
				a += math.Abs(v)
			}
			want[i*N+j], abs[i*N+j] = s, a
		}
	}
	return
}

var gemmShapes = [][3]int{
	{1, 1, 1}, {1, 7, 3}, {3, 5, 2}, {8, 48, 16}, {9, 49, 17}, {7, 23, 256}, {17, 97, 257},
	{64, 50, 300}, {130, 100, 520}, {5, 800, 33}, {260, 13, 70}, {16, 770, 40}, {2, 3, 0},
}

func TestGemmLayouts(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	p := NewPool(3)
	defer p.Close()
	for _, sh := range gemmShapes {
		M, N, K := sh[0], sh[1], sh[2]
		a := randSlice(r, M*K)  // (M×K) for NT/NN, read as (K×M) for TN
		bt := randSlice(r, N*K) // (N×K) for NT, read as (K×N) for NN/TN
		c0 := randSlice(r, M*N)
		for _, l := range levels() {
			withLevel(t, l, func() {
				name := fmt.Sprintf("%s M=%d N=%d K=%d", l, M, N, K)
				c := make([]float32, M*N)
				GemmNT(p, c, a, bt, M, N, K, false)
				want, abs := refGemm(M, N, K, func(i, k int) float64 { return float64(a[i*K+k]) }, func(k, j int) float64 { return float64(bt[j*K+k]) }, nil)
				checkNear(t, "GemmNT "+name, c, want, abs, K)
				copy(c, c0)
				GemmNT(p, c, a, bt, M, N, K, true)
				want, abs = refGemm(M, N, K, func(i, k int) float64 { return float64(a[i*K+k]) }, func(k, j int) float64 { return float64(bt[j*K+k]) }, c0)
				checkNear(t, "GemmNT+= "+name, c, want, abs, K)
				copy(c, c0)
				GemmNN(p, c, a, bt, M, N, K)
				want, abs = refGemm(M, N, K, func(i, k int) float64 { return float64(a[i*K+k]) }, func(k, j int) float64 { return float64(bt[k*N+j]) }, c0)
				checkNear(t, "GemmNN "+name, c, want, abs, K)
				copy(c, c0)
				GemmTN(p, c, a, bt, M, N, K)
				want, abs = refGemm(M, N, K, func(i, k int) float64 { return float64(a[k*M+i]) }, func(k, j int) float64 { return float64(bt[k*N+j]) }, c0)
				checkNear(t, "GemmTN "+name, c, want, abs, K)
			})
		}
	}
}

// TestMatMulFastVsReference runs MatMul and MatMulT at every level and type
// against float64 loops over the dequantized weights.
func TestMatMulFastVsReference(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	p := NewPool(2)
	defer p.Close()
	for _, typ := range testTypes {
		for _, sh := range [][3]int{{1, 7, 37}, {3, 5, 100}, {1, 5, 256}, {2, 3, 512}, {1, 3, 64 * 300}, {4, 9, 256}, {5, 50, 256}, {9, 49, 768}, {33, 100, 512}, {70, 13, 1024}} {
			M, N, K := sh[0], sh[1], sh[2]
			if K%blockOf(typ) != 0 {
				continue
			}
			w, deq := randMatrix(t, typ, N, K, r)
			x := randSlice(r, M*K)
			dy := randSlice(r, M*N)
			dx0 := randSlice(r, M*K)
			wantY, absY := refGemm(M, N, K, func(i, k int) float64 { return float64(x[i*K+k]) }, func(k, j int) float64 { return float64(deq[j*K+k]) }, nil)
			wantX, absX := refGemm(M, K, N, func(i, n int) float64 { return float64(dy[i*N+n]) }, func(n, k int) float64 { return float64(deq[n*K+k]) }, dx0)
			for _, l := range levels() {
				withLevel(t, l, func() {
					name := fmt.Sprintf("%s %s M=%d N=%d K=%d", typ, l, M, N, K)
					y := make([]float32, M*N)
					MatMul(p, y, x, M, w)
					checkMatMul(t, "MatMul "+name, l, &w, x, M, y, wantY, absY)
					dx := append([]float32(nil), dx0...)
					MatMulT(p, dx, dy, M, w)
					checkNear(t, "MatMulT "+name, dx, wantX, absX, N)
				})
			}
		}
	}
}

// TestFastDeterministicAcrossWorkers: the fast paths give bit-identical
// results with 1, 2, 3 and 5 workers.
func TestFastDeterministicAcrossWorkers(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	M, N, K := 37, 300, 768
	w, _ := randMatrix(t, quant.Q4_K, N, K, r)
	x := randSlice(r, M*K)
	dy := randSlice(r, M*N)
	run := func(p *Pool) [][]float32 {
		y := make([]float32, M*N)
		MatMul(p, y, x, M, w)
		y1 := make([]float32, 3*N)
		MatMul(p, y1, x, 3, w)
		dx := make([]float32, M*K)
		MatMulT(p, dx, dy, M, w)
		dw := make([]float32, N*K)
		GemmTN(p, dw, dy, x, N, K, M)
		c := make([]float32, M*K)
		GemmNN(p, c, dy, dw, M, K, N)
		return [][]float32{y, y1, dx, dw, c}
	}
	var ref [][]float32
	for _, n := range []int{1, 2, 3, 5} {
		p := NewPool(n)
		got := run(p)
		p.Close()
		if ref == nil {
			ref = got
			continue
		}
		for o := range got {
			for i := range got[o] {
				if math.Float32bits(got[o][i]) != math.Float32bits(ref[o][i]) {
					t.Fatalf("%d workers: output %d [%d] = %g, 1 worker gave %g", n, o, i, got[o][i], ref[o][i])
				}
			}
		}
	}
}

// TestDecodeRowMatchesQuant: decodeRow is bit-identical to quant's decoder.
func TestDecodeRowMatchesQuant(t *testing.T) {
	r := rand.New(rand.NewPCG(13, 14))
	for _, typ := range append(testTypes, decodeTypes...) {
		rows, cols := 5, 1024
		if typ == quant.NF4 {
			rows = 70 // more than one 256-block group of scales
		}
		w, deq := randMatrix(t, typ, rows, cols, r)
		bs := blockOf(typ)
		got := make([]float32, cols)
		for row := 0; row < rows; row++ {
			for _, c0 := range []int{0, 256, 512} {
				n := cols - c0 - bs*(row%2)
				decodeRow(&w, got[:n], row, c0)
				for i := 0; i < n; i++ {
					if math.Float32bits(got[i]) != math.Float32bits(deq[row*cols+c0+i]) {
						t.Fatalf("%s row %d col %d: %g, quant gives %g", typ, row, c0+i, got[i], deq[row*cols+c0+i])
					}
				}
			}
		}
	}
}

// TestGemmChunks: with the shared operand packed in small chunks (several
// passes over its rows/columns and over K), every GEMM layout and MatMul /
// MatMulT give results bit-identical to one pass, for 1 and 3 workers.
func TestGemmChunks(t *testing.T) {
	r := rand.New(rand.NewPCG(15, 16))
	type run func(p *Pool) []float32
	var runs []run
	for _, sh := range [][3]int{{200, 300, 600}, {300, 200, 700}, {9, 500, 530}, {500, 9, 530}} {
		M, N, K := sh[0], sh[1], sh[2]
		a, b := randSlice(r, M*K), randSlice(r, N*K)
		runs = append(runs,
			func(p *Pool) []float32 { c := make([]float32, M*N); GemmNT(p, c, a, b, M, N, K, false); return c },
			func(p *Pool) []float32 { c := make([]float32, M*N); GemmNN(p, c, a, b, M, N, K); return c },
			func(p *Pool) []float32 { c := make([]float32, M*N); GemmTN(p, c, a, b, M, N, K); return c })
	}
	for _, typ := range []quant.Type{quant.Q4_K, quant.Q8_0} {
		for _, sh := range [][3]int{{40, 300, 768}, {400, 260, 512}} {
			M, N, K := sh[0], sh[1], sh[2]
			w, _ := randMatrix(t, typ, N, K, r)
			x, dy := randSlice(r, M*K), randSlice(r, M*N)
			runs = append(runs,
				func(p *Pool) []float32 { y := make([]float32, M*N); MatMul(p, y, x, M, w); return y },
				func(p *Pool) []float32 { dx := make([]float32, M*K); MatMulT(p, dx, dy, M, w); return dx })
		}
	}
	for _, l := range levels() {
		if l == levelGeneric {
			continue
		}
		withLevel(t, l, func() {
			p1, p3 := NewPool(1), NewPool(3)
			defer p1.Close()
			defer p3.Close()
			for i, f := range runs {
				want := f(p1)
				func() {
					oldS, oldMax := sChunk, sharedMax
					defer func() { sChunk, sharedMax = oldS, oldMax }()
					sChunk, sharedMax = 96, 96*kcBlock
					for _, p := range []*Pool{p1, p3} {
						got := f(p)
						for j := range want {
							if math.Float32bits(got[j]) != math.Float32bits(want[j]) {
								t.Fatalf("%s run %d, %d workers, small chunks: [%d] = %g, one pass gave %g", l, i, p.Workers(), j, got[j], want[j])
							}
						}
					}
				}()
			}
		})
	}
}
