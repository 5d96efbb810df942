package kernels

import (
	"encoding/binary"
	"math"

	"github.com/qtune/qtune/quant"
)

// decodeRow decodes elements [c0, c0+len(dst)) of row r of w into dst; c0
// and len(dst) are multiples of the block size. It is bit-identical to
// quant.DequantizeRange (TestDecodeRowMatchesQuant) but skips its per-call
// checks and type lookup, since the driver calls it once per row segment.
// Types without a loop here go through quant.DequantizeRange.
func decodeRow(w *Matrix, dst []float32, r, c0 int) {
	off := r*w.Cols + c0
	n := len(dst)
	if bs := typeBlock(w.Type); bs == 0 || off%bs != 0 || n%bs != 0 {
		total := int64(w.Rows) * int64(w.Cols)
		if err := quant.DequantizeRange(w.Type, dst, w.Data, total, int64(off)); err != nil {
			panic(err) // rows not made of whole blocks: rejected when the model was loaded
		}
		return
	}
	switch w.Type {
	case quant.F32:
		if v := F32View(w.Data); v != nil {
			copy(dst, v[off:off+n])
			return
		}
		src := w.Data[4*off : 4*(off+n)]
		for i := range dst {
			dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(src[4*i:]))
		}
	case quant.F16:
		src := w.Data[2*off : 2*(off+n)]
		for i := range dst {
			dst[i] = f16(uint16(src[2*i]) | uint16(src[2*i+1])<<8)
		}
	case quant.BF16:
		src := w.Data[2*off : 2*(off+n)]
		for i := range dst {
			dst[i] = math.Float32frombits(uint32(src[2*i])<<16 | uint32(src[2*i+1])<<24)
		}
	case quant.Q8_0:
		src := w.Data[off/32*34 : (off+n)/32*34]
		for b := 0; b < n/32; b++ {
			x := (*[34]byte)(src[b*34:])
			o := (*[32]float32)(dst[b*32:])
			d := f16(uint16(x[0]) | uint16(x[1])<<8)
			for j := 0; j < 32; j++ {
				o[j] = float32(int8(x[2+j])) * d
			}
		}
	case quant.Q4_0:
		src := w.Data[off/32*18 : (off+n)/32*18]
		for b := 0; b < n/32; b++ {
			x := (*[18]byte)(src[b*18:])
			o := (*[32]float32)(dst[b*32:])
			d := f16(uint16(x[0]) | uint16(x[1])<<8)
			for j := 0; j < 16; j++ {
				q := x[2+j]
				o[j] = float32(int32(q&15)-8) * d
				o[j+16] = float32(int32(q>>4)-8) * d
			}
		}
	case quant.Q4_K:
		src := w.Data[off/256*144 : (off+n)/256*144]
		for b := 0; b < n/256; b++ {
			decodeQ4K((*[256]float32)(dst[b*256:]), (*[144]byte)(src[b*144:]))
		}
	case quant.Q6_K:
		src := w.Data[off/256*210 : (off+n)/256*210]
		for b := 0; b < n/256; b++ {
			decodeQ6K((*[256]float32)(dst[b*256:]), (*[210]byte)(src[b*210:]))
		}
	case quant.NF4:
		decodeNF4(w, dst, off)
	default:
		total := int64(w.Rows) * int64(w.Cols)
		if err := quant.DequantizeRange(w.Type, dst, w.Data, total, int64(off)); err != nil {
			panic(err) // shapes were checked when the model was loaded
		}
	}
}

// typeBlock is the block size of the types decodeRow handles itself, 0 for
// the others.
func typeBlock(t quant.Type) int {
	switch t {
	case quant.F32, quant.F16, quant.BF16:
		return 1
	case quant.Q8_0, quant.Q4_0:
		return 32
	case quant.NF4:
		return 64
	case quant.Q4_K, quant.Q6_K:
		return 256
	}
	return 0
}

// f16 is quant.F16ToF32 with the normal case inlined.
func f16(h uint16) float32 {
	if e := h & 0x7c00; e != 0 && e != 0x7c00 {
		return math.Float32frombits(uint32(h&0x8000)<<16 | (uint32(h&0x7fff)+(127-15)<<10)<<13)
	}
	return quant.F16ToF32(h)
}

func scaleMinK4(j int, s *[12]byte) (sc, m uint8) {
	if j < 4 {
		return s[j] & 63, s[j+4] & 63
	}
	return s[j+4]&15 | (s[j-4]>>6)<<4, s[j+4]>>4 | (s[j]>>6)<<4
}

func decodeQ4K(o *[256]float32, b *[144]byte) {
	d := f16(uint16(b[0]) | uint16(b[1])<<8)
	dmin := f16(uint16(b[2]) | uint16(b[3])<<8)
	s := (*[12]byte)(b[4:])
	for g := 0; g < 4; g++ {
		sc1, m1 := scaleMinK4(2*g, s)
		sc2, m2 := scaleMinK4(2*g+1, s)
		d1, dm1 := d*float32(sc1), float32(dmin*float32(m1))
		d2, dm2 := d*float32(sc2), float32(dmin*float32(m2))
		q := (*[32]byte)(b[16+32*g:])
		lo := (*[32]float32)(o[64*g:])
		hi := (*[32]float32)(o[64*g+32:])
		for l := 0; l < 32; l++ {
			lo[l] = float32(d1*float32(q[l]&15)) - dm1
			hi[l] = float32(d2*float32(q[l]>>4)) - dm2
		}
	}
}

func decodeQ6K(o *[256]float32, b *[210]byte) {
	d := f16(uint16(b[208]) | uint16(b[209])<<8)
	for n := 0; n < 2; n++ {
		ql := (*[64]byte)(b[64*n:])
		qh := (*[32]byte)(b[128+32*n:])
		var ds [8]float32
		for k := range ds {
			ds[k] = d * float32(int8(b[192+8*n+k]))
		}
		out := (*[128]float32)(o[128*n:])
		for l := 0; l < 32; l++ {
			is := l / 16
			h := qh[l]
			q1 := int32(ql[l]&15|(h&3)<<4) - 32
			q2 := int32(ql[l+32]&15|(h>>2&3)<<4) - 32
			q3 := int32(ql[l]>>4|(h>>4&3)<<4) - 32
			q4 := int32(ql[l+32]>>4|(h>>6&3)<<4) - 32
			out[l] = ds[is] * float32(q1)
			out[l+32] = ds[is+2] * float32(q2)
			out[l+64] = ds[is+4] * float32(q3)
			out[l+96] = ds[is+6] * float32(q4)
		}
	}
}

// nf4Layout returns the byte offsets of an NF4 tensor's absmax codes, group
// scales and mean for n elements (layout in quant/doc.go).
func nf4Layout(n int) (codes, c2, mu int) {
	blocks := n / 64
	groups := (blocks + 255) / 256
	codes = n / 2
	c2 = codes + blocks
	return codes, c2, c2 + 4*groups
}

// nf4BlockScale is quant's NF4 block scale: NF4Absmax, or +0 when not > 0.
func nf4BlockScale(data []byte, b, codes, c2off int, mu float32) float32 {
	c2 := math.Float32frombits(binary.LittleEndian.Uint32(data[c2off+4*(b/256):]))
	s := quant.NF4Absmax(int8(data[codes+b]), c2, mu)
	if !(s > 0) {
		return 0
	}
	return s
}

func decodeNF4(w *Matrix, dst []float32, off int) {
	codes, c2off, muoff := nf4Layout(w.Rows * w.Cols)
	mu := math.Float32frombits(binary.LittleEndian.Uint32(w.Data[muoff:]))
	var tab [16]float32
	for k := 0; k < len(dst)/64; k++ {
		b := off/64 + k
		s := nf4BlockScale(w.Data, b, codes, c2off, mu)
		for i, v := range quant.NF4Table {
			tab[i] = v * s
		}
		q := (*[32]byte)(w.Data[b*32:])
		o := (*[64]float32)(dst[k*64:])
		for j := 0; j < 32; j++ {
			o[j] = tab[q[j]&15]
			o[j+32] = tab[q[j]>>4]
		}
	}
}

// q4kScales unpacks, for each 144-byte Q4_K super-block in src, the pairs
// (d·sc_j, dmin·m_j) of its 8 sub-blocks into dst (16 floats per block),
// rounded exactly as quant's decoder rounds them.
func q4kScales(dst []float32, src []byte) {
	for sb := 0; sb < len(src)/144; sb++ {
		b := (*[144]byte)(src[sb*144:])
		o := (*[16]float32)(dst[sb*16:])
		d := f16(uint16(b[0]) | uint16(b[1])<<8)
		dmin := f16(uint16(b[2]) | uint16(b[3])<<8)
		s := (*[12]byte)(b[4:])
		for j := 0; j < 8; j++ {
			sc, m := scaleMinK4(j, s)
			o[2*j] = d * float32(sc)
			o[2*j+1] = float32(dmin * float32(m))
		}
	}
}
