package quant

import (
	"encoding/binary"
	"math"
	"testing"
)

// naiveElem decodes element k of a tensor straight from the layout tables in
// formats.md §2 (and doc.go for NF4), one element at a time with no shared
// per-block work. It is an independent reading of the spec that the block
// loops are checked against, and the "naive version" of the benchmarks.
func naiveElem(t Type, data []byte, n, k int) float32 {
	f16 := func(off int) float32 { return F16ToF32(binary.LittleEndian.Uint16(data[off:])) }
	switch t {
	case Q4_0:
		b, j := 18*(k/32), k%32
		q := data[b+2+j%16] & 15
		if j >= 16 {
			q = data[b+2+j-16] >> 4
		}
		return float32(int(q)-8) * f16(b)
	case Q8_0:
		b, j := 34*(k/32), k%32
		return float32(int8(data[b+2+j])) * f16(b)
	case Q4_K:
		b, r := 144*(k/256), k%256
		c, l := r/64, r%64
		sub := 2 * c
		q := data[b+16+32*c+l%32] & 15
		if l >= 32 {
			sub++
			q = data[b+16+32*c+l-32] >> 4
		}
		sc, m := scaleMinK4(sub, (*[12]byte)(data[b+4:]))
		return float32(f16(b)*float32(sc)*float32(q)) - float32(f16(b+2)*float32(m))
	case Q6_K:
		b, r := 210*(k/256), k%256
		half, quarter, l := r/128, r%128/32, r%32
		ql := data[b+64*half+l+32*(quarter%2)]
		lo := ql & 15
		if quarter >= 2 {
			lo = ql >> 4
		}
		hi := data[b+128+32*half+l] >> (2 * quarter) & 3
		sc := int8(data[b+192+8*half+l/16+2*quarter])
		return f16(b+208) * float32(sc) * float32(int(lo|hi<<4)-32)
	case NF4:
		lay := nf4LayoutOf(int64(n))
		blk, j := k/64, k%64
		q := data[32*blk+j%32] & 15
		if j >= 32 {
			q = data[32*blk+j-32] >> 4
		}
		f32 := func(off int64) float32 { return math.Float32frombits(binary.LittleEndian.Uint32(data[off:])) }
		s := nf4Scale(int8(data[lay.codes+int64(blk)]), f32(lay.c2+4*int64(blk/256)), f32(lay.mu))
		return NF4Table[q] * s
	}
	panic("naiveElem: " + t.String())
}

var naiveTypes = []Type{Q4_0, Q8_0, Q4_K, Q6_K, NF4}

func TestBlockLoopsMatchNaive(t *testing.T) {
	const n = 64 * 1024
	x := gaussian(n, 4)
	for i := 0; i < n; i += 97 {
		x[i] *= 30 // outliers stretch the scales
	}
	for _, typ := range naiveTypes {
		size, _ := Bytes(typ, n)
		q := make([]byte, size)
		if err := Quantize(typ, q, x); err != nil {
			t.Fatal(err)
		}
		y := make([]float32, n)
		if err := Dequantize(typ, y, q); err != nil {
			t.Fatal(err)
		}
		for k := range y {
			if v := naiveElem(typ, q, n, k); math.Float32bits(v) != math.Float32bits(y[k]) {
				t.Fatalf("%s element %d: block loop %v, naive %v", typ, k, y[k], v)
			}
		}
	}
}

func BenchmarkDequantizeNaive(b *testing.B) {
	const n = 1 << 16
	dst := make([]float32, n)
	for _, t := range naiveTypes {
		b.Run(t.String(), func(b *testing.B) {
			data := benchData(b, t, n)
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				for k := range dst {
					dst[k] = naiveElem(t, data, n, k)
				}
			}
			b.ReportMetric(float64(len(data))*float64(b.N)/b.Elapsed().Seconds()/1e9, "GB/s")
		})
	}
}

func TestDequantizeRangeAllocFree(t *testing.T) {
	const n = 4096
	x := gaussian(n, 2)
	for _, typ := range dequantTypes {
		size, _ := Bytes(typ, n)
		q := make([]byte, size)
		if CanQuantize(typ) {
			if err := Quantize(typ, q, x); err != nil {
				t.Fatal(err)
			}
		}
		dst := make([]float32, 1024)
		allocs := testing.AllocsPerRun(20, func() {
			if err := DequantizeRange(typ, dst, q, n, 2048); err != nil {
				t.Fatal(err)
			}
		})
		if allocs != 0 {
			t.Errorf("%s: %v allocations per DequantizeRange", typ, allocs)
		}
	}
}

// TestF16Fast: the fast f16 paths (f16ToF32 for block scales, the inlined
// loop of Dequantize(F16)) equal F16ToF32 on every one of the 65536 inputs.
func TestF16Fast(t *testing.T) {
	all := make([]byte, 2<<16)
	for h := 0; h < 1<<16; h++ {
		binary.LittleEndian.PutUint16(all[2*h:], uint16(h))
	}
	y := make([]float32, 1<<16)
	if err := Dequantize(F16, y, all); err != nil {
		t.Fatal(err)
	}
	for h := 0; h < 1<<16; h++ {
		want := math.Float32bits(F16ToF32(uint16(h)))
		if a := math.Float32bits(f16ToF32(uint16(h))); a != want {
			t.Fatalf("f16ToF32(%#04x) = %#08x, F16ToF32 %#08x", h, a, want)
		}
		if a := math.Float32bits(y[h]); a != want {
			t.Fatalf("Dequantize(F16) of %#04x = %#08x, F16ToF32 %#08x", h, a, want)
		}
	}
}
