package quant

import (
	"encoding/binary"
	"fmt"
	"math"
)

// NF4Table is QLoRA's 4-bit NormalFloat code book (bitsandbytes
// create_normal_map(offset=0.9677083, use_extra_value=True)), indexed by the
// nibble code. Every value is exactly a float32; index 7 is the exact zero.
var NF4Table = [16]float32{
	-1.0,
	-0.6961928009986877,
	-0.5250730514526367,
	-0.39491748809814453,
	-0.28444138169288635,
	-0.18477343022823334,
	-0.09105003625154495,
	0.0,
	0.07958029955625534,
	0.16093020141124725,
	0.24611230194568634,
	0.33791524171829224,
	0.44070982933044434,
	0.5626170039176941,
	0.7229568362236023,
	1.0,
}

const (
	nf4Block     = 64 // weights per NF4 block
	nf4ZeroCode  = 7  // NF4Table[7] == 0
	nf4CodeScale = 127
)

// nf4Layout gives the byte offsets of an NF4 tensor's sections for n elements.
type nf4Layout struct {
	blocks, groups int64
	codes, c2, mu  int64 // offsets of the int8 codes, the f32 group scales, the f32 mean
}

func nf4LayoutOf(n int64) nf4Layout {
	blocks := n / nf4Block
	groups := (blocks + nf4GroupBlocks - 1) / nf4GroupBlocks
	codes := n / 2
	c2 := codes + blocks
	return nf4Layout{blocks: blocks, groups: groups, codes: codes, c2: c2, mu: c2 + 4*groups}
}

// NF4Absmax decodes a double-quantized block absmax:
// float32(float32(float32(code)/127)*c2) + mu, each step rounded to f32.
// Quantize and dequantize both use exactly this function.
func NF4Absmax(code int8, c2, mu float32) float32 {
	return float32(float32(float32(code)/nf4CodeScale)*c2) + mu
}

// nf4Scale is the scale a block decodes with: the decoded absmax, or +0 when
// that is not positive (or NaN), so an all-zero block decodes to exact zeros.
func nf4Scale(code int8, c2, mu float32) float32 {
	s := NF4Absmax(code, c2, mu)
	if !(s > 0) {
		return 0
	}
	return s
}

// nf4Nearest returns argmin_k |NF4Table[k] - v| with ties to the lower index.
// |NF4Table[k] - v| computed in f32 is monotone on each side of v, so only the
// two table neighbours of v need comparing.
func nf4Nearest(v float32) uint8 {
	hi := 0 // first index with NF4Table[hi] >= v
	for hi < 16 && NF4Table[hi] < v {
		hi++
	}
	switch hi {
	case 0:
		return 0
	case 16:
		return 15
	}
	dl := v - NF4Table[hi-1]
	dh := NF4Table[hi] - v
	if dl <= dh {
		return uint8(hi - 1)
	}
	return uint8(hi)
}

func blockAbsmax(x []float32) float32 {
	var m float32
	for _, v := range x {
		if a := float32(math.Abs(float64(v))); a > m {
			m = a
		}
	}
	return m
}

// quantizeNF4 writes the whole NF4 tensor for src into dst (len checked by
// the caller). It allocates nothing: block absmaxes are recomputed per group.
func quantizeNF4(dst []byte, src []float32) error {
	for i, v := range src {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return fmt.Errorf("quant: NF4: non-finite input %v at element %d", v, i)
		}
	}
	n := int64(len(src))
	lay := nf4LayoutOf(n)

	// μ: mean of all block absmaxes, summed in float64, rounded to f32 once.
	var sum float64
	for b := int64(0); b < lay.blocks; b++ {
		sum += float64(blockAbsmax(src[b*nf4Block : (b+1)*nf4Block]))
	}
	var mu float32
	if lay.blocks > 0 {
		mu = float32(sum / float64(lay.blocks))
	}
	binary.LittleEndian.PutUint32(dst[lay.mu:], math.Float32bits(mu))

	var c1 [nf4GroupBlocks]float32
	for g := int64(0); g < lay.groups; g++ {
		b0 := g * nf4GroupBlocks
		nb := min(int64(nf4GroupBlocks), lay.blocks-b0)
		var c2 float32
		for k := int64(0); k < nb; k++ {
			b := b0 + k
			c1[k] = blockAbsmax(src[b*nf4Block : (b+1)*nf4Block])
			if a := float32(math.Abs(float64(c1[k] - mu))); a > c2 {
				c2 = a
			}
		}
		binary.LittleEndian.PutUint32(dst[lay.c2+4*g:], math.Float32bits(c2))
		for k := int64(0); k < nb; k++ {
			b := b0 + k
			var code int8
			if c2 > 0 {
				t := float32(float32(c1[k]-mu)/c2) * nf4CodeScale
				r := math.Round(float64(t)) // half away from zero
				code = int8(max(-nf4CodeScale, min(nf4CodeScale, r)))
			}
			dst[lay.codes+b] = byte(code)
			s := NF4Absmax(code, c2, mu)
			out := (*[32]byte)(dst[b*32:])
			w := (*[64]float32)(src[b*nf4Block:])
			if !(s > 0) {
				for j := range out {
					out[j] = nf4ZeroCode | nf4ZeroCode<<4
				}
				continue
			}
			for j := 0; j < 32; j++ {
				out[j] = nf4Nearest(w[j]/s) | nf4Nearest(w[j+32]/s)<<4
			}
		}
	}
	return nil
}

// dequantNF4 decodes elements [off, off+len(y)) of the n-element NF4 tensor
// data (all lengths and alignments checked by DequantizeRange).
func dequantNF4(y []float32, data []byte, n, off int64) {
	lay := nf4LayoutOf(n)
	mu := math.Float32frombits(binary.LittleEndian.Uint32(data[lay.mu:]))
	b0 := off / nf4Block
	g := int64(-1)
	var c2 float32
	var tab [16]float32
	for k := int64(0); k < int64(len(y))/nf4Block; k++ {
		b := b0 + k
		if b/nf4GroupBlocks != g {
			g = b / nf4GroupBlocks
			c2 = math.Float32frombits(binary.LittleEndian.Uint32(data[lay.c2+4*g:]))
		}
		s := nf4Scale(int8(data[lay.codes+b]), c2, mu)
		for i, v := range NF4Table {
			tab[i] = v * s
		}
		q := (*[32]byte)(data[b*32:])
		o := (*[64]float32)(y[k*nf4Block:])
		for j := 0; j < 32; j++ {
			o[j] = tab[q[j]&15]
			o[j+32] = tab[q[j]>>4]
		}
	}
}
