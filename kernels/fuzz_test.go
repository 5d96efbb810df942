package kernels

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/qtune/qtune/quant"
)

// Fuzz targets: each runs the fast path at every instruction-set level this
// machine has against the float64 reference on random shapes (bounded so a
// seed-corpus run stays in milliseconds) and checks the documented bound
// (gemmTol).

func fuzzShape(m, n, k uint16) (int, int, int) {
	return int(m%70) + 1, int(n%110) + 1, int(k%300) + 1
}

func FuzzGemm(f *testing.F) {
	f.Add(uint16(1), uint16(1), uint16(1), uint64(1))
	f.Add(uint16(9), uint16(49), uint16(257), uint64(2))
	f.Add(uint16(64), uint16(96), uint16(33), uint64(3))
	p := NewPool(2)
	f.Fuzz(func(t *testing.T, m, n, k uint16, seed uint64) {
		M, N, K := fuzzShape(m, n, k)
		r := rand.New(rand.NewPCG(seed, 1))
		a, b, c0 := randSlice(r, M*K), randSlice(r, N*K), randSlice(r, M*N)
		for _, l := range levels() {
			withLevel(t, l, func() {
				c := append([]float32(nil), c0...)
				GemmNT(p, c, a, b, M, N, K, true)
				want, abs := refGemm(M, N, K, func(i, kk int) float64 { return float64(a[i*K+kk]) }, func(kk, j int) float64 { return float64(b[j*K+kk]) }, c0)
				checkNear(t, fmt.Sprintf("GemmNT %s %d,%d,%d", l, M, N, K), c, want, abs, K)
				copy(c, c0)
				GemmNN(p, c, a, b, M, N, K)
				want, abs = refGemm(M, N, K, func(i, kk int) float64 { return float64(a[i*K+kk]) }, func(kk, j int) float64 { return float64(b[kk*N+j]) }, c0)
				checkNear(t, fmt.Sprintf("GemmNN %s %d,%d,%d", l, M, N, K), c, want, abs, K)
				copy(c, c0)
				GemmTN(p, c, a, b, M, N, K)
				want, abs = refGemm(M, N, K, func(i, kk int) float64 { return float64(a[kk*M+i]) }, func(kk, j int) float64 { return float64(b[kk*N+j]) }, c0)
				checkNear(t, fmt.Sprintf("GemmTN %s %d,%d,%d", l, M, N, K), c, want, abs, K)
			})
		}
	})
}

func FuzzMatMul(f *testing.F) {
	f.Add(uint8(0), uint16(1), uint16(3), uint16(1), uint64(1))
	f.Add(uint8(3), uint16(4), uint16(5), uint16(2), uint64(2))
	f.Add(uint8(4), uint16(9), uint16(50), uint16(3), uint64(3))
	f.Add(uint8(7), uint16(2), uint16(7), uint16(5), uint64(4))
	p := NewPool(2)
	f.Fuzz(func(t *testing.T, ti uint8, m, n, kb uint16, seed uint64) {
		typ := matTypes[int(ti)%len(matTypes)]
		M, N := int(m%40)+1, int(n%60)+1
		bs := max(blockOf(typ), 32)
		K := (int(kb%6) + 1) * bs
		if bs == 256 {
			K = (int(kb%3) + 1) * 256
		}
		r := rand.New(rand.NewPCG(seed, 2))
		w, deq := randMatrix(t, typ, N, K, r)
		x, dy, dx0 := randSlice(r, M*K), randSlice(r, M*N), randSlice(r, M*K)
		wantY, absY := refGemm(M, N, K, func(i, k int) float64 { return float64(x[i*K+k]) }, func(k, j int) float64 { return float64(deq[j*K+k]) }, nil)
		wantX, absX := refGemm(M, K, N, func(i, nn int) float64 { return float64(dy[i*N+nn]) }, func(nn, k int) float64 { return float64(deq[nn*K+k]) }, dx0)
		for _, l := range levels() {
			withLevel(t, l, func() {
				y := make([]float32, M*N)
				MatMul(p, y, x, M, w)
				checkMatMul(t, fmt.Sprintf("MatMul %s %s %d,%d,%d", typ, l, M, N, K), l, &w, x, M, y, wantY, absY)
				dx := append([]float32(nil), dx0...)
				MatMulT(p, dx, dy, M, w)
				checkNear(t, fmt.Sprintf("MatMulT %s %s %d,%d,%d", typ, l, M, N, K), dx, wantX, absX, N)
			})
		}
	})
}

// FuzzDecodeRow decodes arbitrary bytes (NaN, Inf and subnormal scales
// included) as every type decodeRow has a loop for, and compares each row
// segment with quant.DequantizeRange bit for bit.
func FuzzDecodeRow(f *testing.F) {
	f.Add(uint8(0), []byte{1, 2, 3}, uint8(1), uint8(0))
	for i := range decodeTypes {
		seed := make([]byte, 2*256*2)
		for j := range seed {
			seed[j] = byte(j*37 + i)
		}
		f.Add(uint8(len(testTypes)+i), seed, uint8(2), uint8(1))
	}
	f.Fuzz(func(t *testing.T, ti uint8, data []byte, rows, seg uint8) {
		typ := matTypes[int(ti)%len(matTypes)]
		if typ == quant.NF4 || typ == quant.F32 {
			return // NF4's side table spans the tensor (TestDecodeRowMatchesQuant); F32 is a copy
		}
		in, _ := quant.Lookup(typ)
		bs := in.BlockSize
		R := int(rows%4) + 1
		perRow := len(data) / in.TypeSize / R
		if perRow == 0 {
			return
		}
		cols := perRow * bs
		w := Matrix{Type: typ, Rows: R, Cols: cols, Data: data[:R*perRow*in.TypeSize]}
		n := int64(R * cols)
		want := make([]float32, n)
		if err := quant.Dequantize(typ, want, w.Data); err != nil {
			t.Fatal(err)
		}
		c0 := int(seg) % perRow * bs
		got := make([]float32, cols-c0)
		for r := 0; r < R; r++ {
			decodeRow(&w, got, r, c0)
			for i, v := range got {
				if math.Float32bits(v) != math.Float32bits(want[r*cols+c0+i]) {
					t.Fatalf("%s row %d col %d: %#08x, quant gives %#08x", typ, r, c0+i, math.Float32bits(v), math.Float32bits(want[r*cols+c0+i]))
				}
			}
		}
	})
}
