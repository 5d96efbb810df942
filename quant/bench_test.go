package quant

import (
	"encoding/binary"
	"math/rand/v2"
	"testing"
)

// benchData returns a 64Ki-element tensor of type t with realistic scales:
// quantized gaussian weights where a quantizer exists, else random blocks
// whose f16 scales are set to small normal values.
func benchData(b *testing.B, t Type, n int) []byte {
	size, err := Bytes(t, int64(n))
	if err != nil {
		b.Fatal(err)
	}
	data := make([]byte, size)
	if CanQuantize(t) {
		if err := Quantize(t, data, gaussian(n, 1)); err != nil {
			b.Fatal(err)
		}
		return data
	}
	r := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	in, _ := Lookup(t)
	for blk := 0; blk < len(data); blk += in.TypeSize {
		switch t {
		case Q2_K:
			binary.LittleEndian.PutUint16(data[blk+80:], F32ToF16(0.01))
			binary.LittleEndian.PutUint16(data[blk+82:], F32ToF16(0.005))
		case Q3_K:
			binary.LittleEndian.PutUint16(data[blk+108:], F32ToF16(0.01))
		}
	}
	return data
}

// BenchmarkDequantize measures whole-tensor decoding per type. b.SetBytes
// counts the quantized input, so the MB/s column and the GB/s metric are
// input bandwidth; Melem/s is the output rate.
func BenchmarkDequantize(b *testing.B) {
	const n = 1 << 16
	dst := make([]float32, n)
	for _, t := range dequantTypes {
		b.Run(t.String(), func(b *testing.B) {
			data := benchData(b, t, n)
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				if err := Dequantize(t, dst, data); err != nil {
					b.Fatal(err)
				}
			}
			sec := b.Elapsed().Seconds()
			b.ReportMetric(float64(len(data))*float64(b.N)/sec/1e9, "GB/s")
			b.ReportMetric(float64(n)*float64(b.N)/sec/1e6, "Melem/s")
		})
	}
}

// BenchmarkDequantizeRow decodes one 4096-wide row at a time, the way matmul
// kernels call DequantizeRange, to show the per-call overhead.
func BenchmarkDequantizeRow(b *testing.B) {
	const n, row = 1 << 16, 4096
	dst := make([]float32, row)
	for _, t := range []Type{Q4_0, Q8_0, Q4_K, Q6_K, NF4} {
		b.Run(t.String(), func(b *testing.B) {
			data := benchData(b, t, n)
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				for off := int64(0); off < n; off += row {
					if err := DequantizeRange(t, dst, data, n, off); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(len(data))*float64(b.N)/b.Elapsed().Seconds()/1e9, "GB/s")
		})
	}
}

// BenchmarkQuantize: the reference quantizers are not hot paths, but their
// speed bounds how fast qtune can write a quantized model.
func BenchmarkQuantize(b *testing.B) {
	const n = 1 << 16
	x := gaussian(n, 1)
	for _, t := range dequantTypes {
		if !CanQuantize(t) {
			continue
		}
		b.Run(t.String(), func(b *testing.B) {
			size, _ := Bytes(t, n)
			dst := make([]byte, size)
			b.SetBytes(4 * n)
			for b.Loop() {
				if err := Quantize(t, dst, x); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
