package quant

import (
	"math"
	"os"
	"testing"

	"github.com/qtune/qtune/internal/shared"
)

func typeIndex(t Type) uint8 {
	for i, d := range dequantTypes {
		if d == t {
			return uint8(i)
		}
	}
	panic("type not in dequantTypes")
}

// fitTensor returns the largest whole tensor of type t that data holds: the
// element count n and data cut to Bytes(t, n).
func fitTensor(t Type, data []byte) (int64, []byte) {
	in, _ := Lookup(t)
	bs, ts := int64(in.BlockSize), int64(in.TypeSize)
	blocks := int64(len(data)) / ts
	for ; blocks > 0; blocks-- {
		if size, _ := Bytes(t, blocks*bs); size <= int64(len(data)) {
			break
		}
	}
	if t == NF4 && len(data) < 4 {
		return -1, nil // not even an empty NF4 tensor (4-byte μ)
	}
	size, _ := Bytes(t, blocks*bs)
	return blocks * bs, data[:size]
}

// FuzzDequantize decodes arbitrary bytes as every supported type: raw lengths
// must give an error or a result, never a panic, and DequantizeRange over an
// aligned sub-range must equal the same slice of the whole-tensor decode,
// bit for bit.
func FuzzDequantize(f *testing.F) {
	for _, r := range quantRows(f) {
		raw, err := os.ReadFile(shared.Path(f, "golden", "quant", r.file))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(typeIndex(r.id), raw, uint32(3), uint32(5))
	}
	for _, set := range []string{"A", "B"} {
		f.Add(typeIndex(IQ4_XS), readFile(f, "testdata/iq4_xs/"+set+".iq4_xs.bin"), uint32(3), uint32(5))
	}
	// Tiny handmade blocks: zero, all-ones (NaN scales), subnormal scales,
	// an NF4 tensor with NaN side table.
	for i, typ := range dequantTypes {
		in, _ := Lookup(typ)
		size, _ := Bytes(typ, int64(in.BlockSize))
		ones := make([]byte, 2*size)
		for j := range ones {
			ones[j] = 0xff
		}
		sub := make([]byte, 2*size)
		for j := range sub {
			sub[j] = byte(j*37 + 1)
		}
		f.Add(uint8(i), make([]byte, size), uint32(0), uint32(1))
		f.Add(uint8(i), ones, uint32(1), uint32(1))
		f.Add(uint8(i), sub, uint32(0), uint32(2))
	}
	nf4 := make([]byte, 41)
	copy(nf4[37:], []byte{0, 0, 0xc0, 0x7f})
	f.Add(typeIndex(NF4), nf4, uint32(0), uint32(1))

	f.Fuzz(func(t *testing.T, ti uint8, data []byte, a, b uint32) {
		typ := dequantTypes[int(ti)%len(dequantTypes)]
		in, _ := Lookup(typ)
		bs := int64(in.BlockSize)

		// Raw length: whatever the bytes, no panic.
		raw := make([]float32, (int64(len(data))/int64(in.TypeSize))*bs)
		_ = Dequantize(typ, raw, data)
		_ = DequantizeRange(typ, raw[:min(len(raw), int(bs))], data, int64(len(raw)), int64(a%3)*bs)

		n, whole := fitTensor(typ, data)
		if n < 0 {
			return
		}
		all := make([]float32, n)
		if err := Dequantize(typ, all, whole); err != nil {
			t.Fatalf("%s, %d elements, %d bytes: %v", typ, n, len(whole), err)
		}
		blocks := n / bs
		if blocks == 0 {
			return
		}
		b0 := int64(a) % blocks
		nb := int64(b) % (blocks - b0 + 1)
		part := make([]float32, nb*bs)
		if err := DequantizeRange(typ, part, whole, n, b0*bs); err != nil {
			t.Fatal(err)
		}
		for i := range part {
			if math.Float32bits(part[i]) != math.Float32bits(all[b0*bs+int64(i)]) {
				t.Fatalf("%s: range [%d, +%d) element %d: %#08x, whole decode %#08x", typ, b0*bs, nb*bs, i,
					math.Float32bits(part[i]), math.Float32bits(all[b0*bs+int64(i)]))
			}
		}
	})
}

// FuzzQuantize quantizes arbitrary float32 bit patterns (NaN, ±Inf,
// subnormals, huge values) as every type Quantize supports: no panic, and
// the blocks decode. For NF4 an error for non-finite input is allowed.
func FuzzQuantize(f *testing.F) {
	f.Add(uint8(0), []byte{})
	f.Add(typeIndex(Q2_K), make([]byte, 1024))
	f.Add(typeIndex(Q3_K), []byte{0, 0, 0xc0, 0x7f, 0, 0, 0x80, 0x7f, 1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, ti uint8, raw []byte) {
		typ := dequantTypes[int(ti)%len(dequantTypes)]
		if !CanQuantize(typ) {
			return
		}
		in, _ := Lookup(typ)
		// Repeat the fuzzed values to fill one or two blocks.
		n := in.BlockSize * (1 + len(raw)%2)
		x := make([]float32, n)
		for i := range x {
			if len(raw) >= 4 {
				j := 4 * (i % (len(raw) / 4))
				x[i] = math.Float32frombits(uint32(raw[j]) | uint32(raw[j+1])<<8 | uint32(raw[j+2])<<16 | uint32(raw[j+3])<<24)
			}
		}
		size, _ := Bytes(typ, int64(n))
		b := make([]byte, size)
		if err := Quantize(typ, b, x); err != nil {
			if typ == NF4 {
				return
			}
			t.Fatalf("%s: %v", typ, err)
		}
		if err := Dequantize(typ, x, b); err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
	})
}
