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
// Quantize): the two passes of NF4Stream over the one piece.
func quantizeNF4(dst []byte, src []float32) error {
	s, err := NewNF4Stream(dst, int64(len(src)))
	if err != nil {
		return err
	}
	if err := s.Scan(src); err != nil {
		return err
	}
	return s.Encode(src)
}

// NF4Stream quantizes an n-element tensor to NF4 from pieces, so that the
// whole tensor never has to be held as float32: Scan every piece in order
// (it keeps one float per 64-weight block), then Encode every piece again in
// order. The result is byte for byte what Quantize writes for the whole.
// Pieces hold whole blocks (a multiple of 64 elements).
type NF4Stream struct {
	dst     []byte
	n       int64
	lay     nf4Layout
	absmax  []float32 // per block, from Scan
	scanned int64     // elements scanned
	encoded int64     // elements encoded
	mu      float32
}

// NewNF4Stream starts the quantization of n elements into dst, which must
// be the NF4 size of n.
func NewNF4Stream(dst []byte, n int64) (*NF4Stream, error) {
	if n%nf4Block != 0 {
		return nil, fmt.Errorf("quant: NF4: %d elements is not a whole number of %d-element blocks", n, nf4Block)
	}
	size, err := Bytes(NF4, n)
	if err != nil {
		return nil, err
	}
	if int64(len(dst)) != size {
		return nil, fmt.Errorf("quant: NF4: destination is %d bytes, %d elements need %d", len(dst), n, size)
	}
	lay := nf4LayoutOf(n)
	return &NF4Stream{dst: dst, n: n, lay: lay, absmax: make([]float32, 0, lay.blocks)}, nil
}

// Scan reads the next piece in the first pass.
func (s *NF4Stream) Scan(x []float32) error {
	if len(x)%nf4Block != 0 || s.scanned+int64(len(x)) > s.n {
		return fmt.Errorf("quant: NF4: scan of %d elements at %d of %d: pieces are whole blocks within the tensor", len(x), s.scanned, s.n)
	}
	for i, v := range x {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return fmt.Errorf("quant: NF4: non-finite input %v at element %d", v, s.scanned+int64(i))
		}
	}
	for b := 0; b < len(x); b += nf4Block {
		s.absmax = append(s.absmax, blockAbsmax(x[b:b+nf4Block]))
	}
	s.scanned += int64(len(x))
	if s.scanned == s.n {
		s.scales()
	}
	return nil
}

// scales writes μ (the mean of all block absmaxes, summed in float64 and
// rounded to f32 once), each group's c2 and each block's absmax code.
func (s *NF4Stream) scales() {
	lay, dst := s.lay, s.dst
	var sum float64
	for _, a := range s.absmax {
		sum += float64(a)
	}
	if lay.blocks > 0 {
		s.mu = float32(sum / float64(lay.blocks))
	}
	binary.LittleEndian.PutUint32(dst[lay.mu:], math.Float32bits(s.mu))
	for g := int64(0); g < lay.groups; g++ {
		b0 := g * nf4GroupBlocks
		nb := min(int64(nf4GroupBlocks), lay.blocks-b0)
		var c2 float32
		for k := int64(0); k < nb; k++ {
			if a := float32(math.Abs(float64(s.absmax[b0+k] - s.mu))); a > c2 {
				c2 = a
			}
		}
		binary.LittleEndian.PutUint32(dst[lay.c2+4*g:], math.Float32bits(c2))
		for k := int64(0); k < nb; k++ {
			var code int8
			if c2 > 0 {
				t := float32(float32(s.absmax[b0+k]-s.mu)/c2) * nf4CodeScale
				r := math.Round(float64(t)) // half away from zero
				code = int8(max(-nf4CodeScale, min(nf4CodeScale, r)))
			}
			dst[lay.codes+b0+k] = byte(code)
		}
	}
}

// Encode writes the next piece's codes in the second pass.
func (s *NF4Stream) Encode(x []float32) error {
	if s.scanned != s.n {
		return fmt.Errorf("quant: NF4: encode before the whole tensor was scanned (%d of %d)", s.scanned, s.n)
	}
	if len(x)%nf4Block != 0 || s.encoded+int64(len(x)) > s.n {
		return fmt.Errorf("quant: NF4: encode of %d elements at %d of %d: pieces are whole blocks within the tensor", len(x), s.encoded, s.n)
	}
	lay, dst := s.lay, s.dst
	for i := 0; i < len(x); i += nf4Block {
		b := (s.encoded + int64(i)) / nf4Block
		g := b / nf4GroupBlocks
		c2 := math.Float32frombits(binary.LittleEndian.Uint32(dst[lay.c2+4*g:]))
		sc := NF4Absmax(int8(dst[lay.codes+b]), c2, s.mu)
		out := (*[32]byte)(dst[b*32:])
		w := (*[64]float32)(x[i:])
		if !(sc > 0) {
			for j := range out {
				out[j] = nf4ZeroCode | nf4ZeroCode<<4
			}
			continue
		}
		for j := 0; j < 32; j++ {
			out[j] = nf4Nearest(w[j]/sc) | nf4Nearest(w[j+32]/sc)<<4
		}
	}
	s.encoded += int64(len(x))
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
