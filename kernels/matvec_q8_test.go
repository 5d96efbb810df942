package kernels

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"unsafe"

	"github.com/qtune/qtune/quant"
)

// q8Active reports whether MatMul with M rows of X runs the integer
// matrix-vector path (int8 activations) for type t at level l.
func q8Active(t quant.Type, l level, M int) bool {
	return haveQ8 && l >= levelAVX2 && M <= matVecRows && q8Block(t) != 0
}

// q8Tol is the documented bound (doc.go) of the integer matrix-vector path
// for output Y[m][n] on top of gemmTol: x quantized per block of q8Block
// values (error ≤ max|x_b|/254 per value) against the weights' integer part
// u_k, plus for NF4 the int8 code book (error ≤ s_b/254 per weight), and the
// float rounding of everything, (K+2)·2⁻²⁴ of the sum of magnitudes.
func q8Tol(w *Matrix, n int, x []float32) float64 {
	K := w.Cols
	bs := q8Block(w.Type)
	row := make([]float32, K)
	decodeRow(w, row, n, 0)
	u := make([]float64, K)  // |integer part| of each weight
	sw := make([]float64, K) // NF4: block scale s_b/254, else 0
	for k := range u {
		u[k] = math.Abs(float64(row[k]))
	}
	switch w.Type {
	case quant.Q4_K, quant.Q5_K, quant.Q2_K, quant.Q4_1, quant.Q5_1:
		mins := q8Mins(w, n)
		for k := range u {
			u[k] += mins[k]
		}
	case quant.NF4:
		codes, c2off, muoff := nf4Layout(w.Rows * K)
		mu := math.Float32frombits(binary.LittleEndian.Uint32(w.Data[muoff:]))
		for k := range u {
			s := float64(nf4BlockScale(w.Data, (n*K+k)/64, codes, c2off, mu)) / 254
			sw[k] = s
			u[k] += s
		}
	}
	var tol, abs float64
	for b := 0; b < K/bs; b++ {
		var amax float64
		for _, v := range x[b*bs : (b+1)*bs] {
			amax = max(amax, math.Abs(float64(v)))
		}
		e := amax/254*(1+0x1p-20) + amax*0x1p-23
		for k := b * bs; k < (b+1)*bs; k++ {
			ax := math.Abs(float64(x[k]))
			tol += e*u[k] + (ax+e)*sw[k]
			abs += (ax + e) * u[k]
		}
	}
	return tol + gemmTol(K, abs)
}

// q8Mins is |min| for each weight of row n of a type whose integer kernel
// multiplies q_k by w_k + min (the min term goes with the float sums of x):
// dmin·m_j of Q4_K and Q5_K, dmin·m_i of Q2_K (per 16), −m_b of Q4_1 and
// Q5_1.
func q8Mins(w *Matrix, n int) []float64 {
	K := w.Cols
	mins := make([]float64, K)
	f16at := func(b []byte) float64 { return float64(f16(binary.LittleEndian.Uint16(b))) }
	switch w.Type {
	case quant.Q4_K, quant.Q5_K:
		bb := 144
		if w.Type == quant.Q5_K {
			bb = 176
		}
		row := w.Data[n*K/256*bb:]
		for k := range mins {
			b := row[k/256*bb:]
			_, m := scaleMinK4(k%256/32, (*[12]byte)(b[4:]))
			mins[k] = float64(float32(f16(binary.LittleEndian.Uint16(b[2:])) * float32(m)))
		}
	case quant.Q2_K:
		row := w.Data[n*K/256*84:]
		for k := range mins {
			b := row[k/256*84:]
			mins[k] = f16at(b[82:]) * float64(b[k%256/16]>>4)
		}
	case quant.Q4_1, quant.Q5_1:
		bb := 20
		if w.Type == quant.Q5_1 {
			bb = 24
		}
		row := w.Data[n*K/32*bb:]
		for k := range mins {
			mins[k] = math.Abs(f16at(row[k/32*bb+2:]))
		}
	}
	return mins
}

// checkMatMul compares MatMul's y (M rows) with the float64 reference: the
// float bound (gemmTol), plus q8Tol where the integer path ran.
func checkMatMul(t testing.TB, what string, l level, w *Matrix, x []float32, M int, y []float32, want, abs []float64) {
	t.Helper()
	N, K := w.Rows, w.Cols
	for i := range want {
		tol := gemmTol(K, abs[i])
		if q8Active(w.Type, l, M) {
			m, n := i/N, i%N
			tol += q8Tol(w, n, x[m*K:(m+1)*K])
		}
		if d := math.Abs(float64(y[i]) - want[i]); !(d <= tol) {
			t.Fatalf("%s: element %d = %g, want %g (|d| %.3g > tol %.3g)", what, i, y[i], want[i], d, tol)
		}
	}
}

var q8Types = []quant.Type{quant.Q8_0, quant.Q4_0, quant.NF4, quant.Q4_K, quant.Q6_K,
	quant.Q5_K, quant.IQ4_XS, quant.IQ4_NL, quant.Q5_0, quant.Q4_1, quant.Q5_1, quant.Q3_K, quant.Q2_K}

// TestMatVecQ8 runs the integer matrix-vector path (M ≤ 4) at every level
// against the float64 reference over the dequantized weights: odd numbers
// of blocks (Go tails), single rows, M = 1..4, large K, and NF4 rows that
// straddle its 256-block scale groups at odd block offsets.
func TestMatVecQ8(t *testing.T) {
	r := rand.New(rand.NewPCG(21, 22))
	p := NewPool(3)
	defer p.Close()
	for _, typ := range q8Types {
		bs := blockOf(typ)
		shapes := [][2]int{{1, bs}, {3, bs}, {7, 3 * bs}, {5, 5 * bs}, {2, 7 * bs}, {9, 9 * bs}, {4, 33 * bs}, {3, 40 * bs}}
		if bs == 256 {
			shapes = [][2]int{{1, 256}, {3, 256}, {5, 768}, {2, 1280}, {3, 256 * 40}}
		}
		if typ == quant.NF4 {
			shapes = append(shapes, [2]int{170, 3 * 64}, [2]int{30, 33 * 64}, [2]int{9, 512 * 64})
		}
		for _, sh := range shapes {
			N, K := sh[0], sh[1]
			w, deq := randMatrix(t, typ, N, K, r)
			for M := 1; M <= matVecRows; M++ {
				x := randSlice(r, M*K)
				if M == 2 {
					for k := 0; k < K; k += 37 {
						x[k] *= 20 // outliers stretch the x block scales
					}
					clear(x[:min(K, 64)]) // an all-zero block
				}
				want, abs := refGemm(M, N, K, func(i, k int) float64 { return float64(x[i*K+k]) }, func(k, j int) float64 { return float64(deq[j*K+k]) }, nil)
				for _, l := range levels() {
					withLevel(t, l, func() {
						y := make([]float32, M*N)
						MatMul(p, y, x, M, w)
						checkMatMul(t, fmt.Sprintf("%s %s M=%d N=%d K=%d", typ, l, M, N, K), l, &w, x, M, y, want, abs)
					})
				}
			}
		}
	}
}

// TestMatVecQ8Aligned: Q4_0 and Q4_K rows of whole 576-byte periods that
// start 0 or 32 bytes into a cache line take the cache-line kernels
// (dotQ4_0VNNIL, dotQ4KVNNIL); the same matrix at offsets 8 and 16 takes
// the others.
// All meet the bound, and give the same bits.
func TestMatVecQ8Aligned(t *testing.T) {
	r := rand.New(rand.NewPCG(27, 28))
	p := NewPool(2)
	defer p.Close()
	for _, sh := range [][3]int{{0, 1, 1024}, {0, 3, 2048}, {0, 9, 3072}, {0, 2, 4096}, {1, 1, 1024}, {1, 3, 2048}, {1, 5, 3072}, {1, 2, 4096}} {
		typ, N, K := []quant.Type{quant.Q4_0, quant.Q4_K}[sh[0]], sh[1], sh[2]
		w, deq := randMatrix(t, typ, N, K, r)
		buf := make([]byte, len(w.Data)+96)
		if uintptr(unsafe.Pointer(&buf[0]))%64 != 0 {
			t.Fatal("make returned a buffer not 64-byte aligned")
		}
		for M := 1; M <= 2; M++ {
			x := randSlice(r, M*K)
			want, abs := refGemm(M, N, K, func(i, k int) float64 { return float64(x[i*K+k]) }, func(k, j int) float64 { return float64(deq[j*K+k]) }, nil)
			for _, l := range levels() {
				withLevel(t, l, func() {
					var ref []float32
					for _, off := range []int{0, 8, 16, 32, 96} {
						wo := w
						wo.Data = buf[off : off+len(w.Data)]
						copy(wo.Data, w.Data)
						y := make([]float32, M*N)
						MatMul(p, y, x, M, wo)
						name := fmt.Sprintf("%s %s M=%d N=%d K=%d offset %d", typ, l, M, N, K, off)
						checkMatMul(t, name, l, &wo, x, M, y, want, abs)
						if ref == nil {
							ref = y
						}
						for i := range y {
							if math.Float32bits(y[i]) != math.Float32bits(ref[i]) {
								t.Fatalf("%s: y[%d] = %g, offset 0 gave %g", name, i, y[i], ref[i])
							}
						}
					}
				})
			}
		}
	}
}

// TestMatVecQ8Deterministic: the integer path gives bit-identical results
// for 1, 2, 3 and 8 workers.
func TestMatVecQ8Deterministic(t *testing.T) {
	r := rand.New(rand.NewPCG(23, 24))
	for _, typ := range q8Types {
		N, K := 45, 768
		w, _ := randMatrix(t, typ, N, K, r)
		for _, M := range []int{1, 3} {
			x := randSlice(r, M*K)
			var ref []float32
			for _, nw := range []int{1, 2, 3, 8} {
				p := NewPool(nw)
				y := make([]float32, M*N)
				MatMul(p, y, x, M, w)
				p.Close()
				if ref == nil {
					ref = y
					continue
				}
				for i := range y {
					if math.Float32bits(y[i]) != math.Float32bits(ref[i]) {
						t.Fatalf("%s M=%d, %d workers: y[%d] = %g, 1 worker gave %g", typ, M, nw, i, y[i], ref[i])
					}
				}
			}
		}
	}
}

// FuzzMatVecQ8: the integer path at every level against the generic loops
// (matMulGeneric) and the float64 reference, per type.
func FuzzMatVecQ8(f *testing.F) {
	f.Add(uint8(0), uint8(1), uint16(1), uint16(1), uint64(1))
	f.Add(uint8(1), uint8(2), uint16(7), uint16(5), uint64(2))
	f.Add(uint8(2), uint8(3), uint16(40), uint16(3), uint64(3))
	f.Add(uint8(3), uint8(4), uint16(3), uint16(2), uint64(4))
	f.Add(uint8(4), uint8(1), uint16(9), uint16(1), uint64(5))
	p := NewPool(2)
	f.Fuzz(func(t *testing.T, ti, m uint8, n, kb uint16, seed uint64) {
		typ := q8Types[int(ti)%len(q8Types)]
		M, N := int(m%matVecRows)+1, int(n%80)+1
		bs := blockOf(typ)
		K := (int(kb%40) + 1) * bs
		if bs == 256 {
			K = (int(kb%6) + 1) * bs
		}
		r := rand.New(rand.NewPCG(seed, 3))
		w, deq := randMatrix(t, typ, N, K, r)
		x := randSlice(r, M*K)
		want, abs := refGemm(M, N, K, func(i, k int) float64 { return float64(x[i*K+k]) }, func(k, j int) float64 { return float64(deq[j*K+k]) }, nil)
		gen := make([]float32, M*N)
		withLevel(t, levelGeneric, func() { MatMul(p, gen, x, M, w) })
		checkNear(t, fmt.Sprintf("generic %s %d,%d,%d", typ, M, N, K), gen, want, abs, K)
		for _, l := range levels() {
			withLevel(t, l, func() {
				y := make([]float32, M*N)
				MatMul(p, y, x, M, w)
				name := fmt.Sprintf("%s %s %d,%d,%d", typ, l, M, N, K)
				checkMatMul(t, name, l, &w, x, M, y, want, abs)
				for i := range y {
					tol := gemmTol(K, abs[i]) * 2
					if q8Active(typ, l, M) {
						tol += q8Tol(&w, i%N, x[i/N*K:(i/N+1)*K])
					}
					if d := math.Abs(float64(y[i]) - float64(gen[i])); !(d <= tol) {
						t.Fatalf("%s: fast %g, generic %g (|d| %.3g > %.3g)", name, y[i], gen[i], d, tol)
					}
				}
			})
		}
	})
}

// TestMatVecQ8NonFinite: a NaN or an infinity in x reaches every output as
// it does on the float path (int8 blocks cannot carry it, so MatMul falls
// back to that path).
func TestMatVecQ8NonFinite(t *testing.T) {
	r := rand.New(rand.NewPCG(25, 26))
	p := NewPool(2)
	defer p.Close()
	for _, typ := range q8Types {
		N, K := 6, 512
		w, _ := randMatrix(t, typ, N, K, r)
		for _, bad := range []float32{float32(math.NaN()), float32(math.Inf(1))} {
			x := randSlice(r, 2*K)
			x[K+100] = bad
			for _, l := range levels() {
				withLevel(t, l, func() {
					y := make([]float32, 2*N)
					MatMul(p, y, x, 2, w)
					for i, v := range y {
						finite := !math.IsNaN(float64(v)) && !math.IsInf(float64(v), 0)
						if finite != (i < N) {
							t.Fatalf("%s %s x has %g in row 1: y[%d] = %g", typ, l, bad, i, v)
						}
					}
				})
			}
		}
	}
}
