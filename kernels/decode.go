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
	case quant.Q4_1:
		src := w.Data[off/32*20 : (off+n)/32*20]
		for b := 0; b < n/32; b++ {
			decodeQ4_1((*[32]float32)(dst[b*32:]), (*[20]byte)(src[b*20:]))
		}
	case quant.Q5_0:
		src := w.Data[off/32*22 : (off+n)/32*22]
		for b := 0; b < n/32; b++ {
			decodeQ5((*[32]float32)(dst[b*32:]), (*[22]byte)(src[b*22:])[2:], f16at(src[b*22:]), 0, true)
		}
	case quant.Q5_1:
		src := w.Data[off/32*24 : (off+n)/32*24]
		for b := 0; b < n/32; b++ {
			x := src[b*24:]
			decodeQ5((*[32]float32)(dst[b*32:]), (*[24]byte)(x)[4:], f16at(x), f16at(x[2:]), false)
		}
	case quant.IQ4_NL:
		src := w.Data[off/32*18 : (off+n)/32*18]
		for b := 0; b < n/32; b++ {
			x := (*[18]byte)(src[b*18:])
			decodeIQ4((*[32]float32)(dst[b*32:]), (*[16]byte)(x[2:]), f16at(x[:]))
		}
	case quant.IQ4_XS:
		src := w.Data[off/256*136 : (off+n)/256*136]
		for b := 0; b < n/256; b++ {
			decodeIQ4XS((*[256]float32)(dst[b*256:]), (*[136]byte)(src[b*136:]))
		}
	case quant.Q2_K:
		src := w.Data[off/256*84 : (off+n)/256*84]
		for b := 0; b < n/256; b++ {
			decodeQ2K((*[256]float32)(dst[b*256:]), (*[84]byte)(src[b*84:]))
		}
	case quant.Q3_K:
		src := w.Data[off/256*110 : (off+n)/256*110]
		for b := 0; b < n/256; b++ {
			decodeQ3K((*[256]float32)(dst[b*256:]), (*[110]byte)(src[b*110:]))
		}
	case quant.Q5_K:
		src := w.Data[off/256*176 : (off+n)/256*176]
		for b := 0; b < n/256; b++ {
			decodeQ5K((*[256]float32)(dst[b*256:]), (*[176]byte)(src[b*176:]))
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
	case quant.Q8_0, quant.Q4_0, quant.Q4_1, quant.Q5_0, quant.Q5_1, quant.IQ4_NL:
		return 32
	case quant.NF4:
		return 64
	case quant.Q4_K, quant.Q6_K, quant.Q5_K, quant.Q3_K, quant.Q2_K, quant.IQ4_XS:
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

func f16at(b []byte) float32 { return f16(uint16(b[0]) | uint16(b[1])<<8) }

// The decoders below give quant's dequantize_row_* bits, but where a
// (sub-)block's values come from a small set they build that set first, with
// the reference's own f32 operations, and look the codes up: IQ4_NL/IQ4_XS
// (16 values per scale), Q4_1 (16), Q2_K (4 per 16 weights). The 2-bit
// levels of Q2_K and Q3_K are unpacked 8 at a time first (k2Codes); Q3_K
// then multiplies its scale by the level read from a table. Q5_0, Q5_1 and
// Q5_K decode directly, their high bits spread by shifts of a 32-bit word.

// decodeQ4_1: y = float32(q·d) + m, q a nibble: 16 possible values.
func decodeQ4_1(o *[32]float32, b *[20]byte) {
	d, m := f16at(b[0:]), f16at(b[2:])
	var tab [16]float32
	for k := range tab {
		tab[k] = float32(float32(k)*d) + m
	}
	for j := 0; j < 16; j++ {
		q := b[4+j]
		o[j] = tab[q&15]
		o[j+16] = tab[q>>4]
	}
}

// decodeQ5 decodes a Q5_0 (centered: (q-16)·d) or Q5_1 (float32(q·d) + m)
// block from x = qh (4 bytes) followed by qs (16 bytes).
func decodeQ5(o *[32]float32, x []byte, d, m float32, centered bool) {
	qh := binary.LittleEndian.Uint32(x[0:4])
	qs := (*[16]byte)(x[4:20])
	if centered {
		for j := 0; j < 16; j++ {
			q := uint32(qs[j])
			o[j] = float32(int32(q&15|qh>>j<<4&16)-16) * d
			o[j+16] = float32(int32(q>>4|qh>>(j+16)<<4&16)-16) * d
		}
		return
	}
	for j := 0; j < 16; j++ {
		q := uint32(qs[j])
		o[j] = float32(float32(q&15|qh>>j<<4&16)*d) + m
		o[j+16] = float32(float32(q>>4|qh>>(j+16)<<4&16)*d) + m
	}
}

// iq4Table is dl·T[k] for the 16 IQ4_NL code book values T.
func iq4Table(tab *[16]float32, dl float32) {
	for k, v := range quant.IQ4NLTable {
		tab[k] = dl * float32(v)
	}
}

// decodeIQ4 decodes 32 IQ4_NL-coded values (16 bytes of nibbles) with scale d.
func decodeIQ4(o *[32]float32, q *[16]byte, d float32) {
	var tab [16]float32
	iq4Table(&tab, d)
	for j := 0; j < 16; j++ {
		o[j] = tab[q[j]&15]
		o[j+16] = tab[q[j]>>4]
	}
}

func decodeIQ4XS(o *[256]float32, b *[136]byte) {
	d := f16at(b[0:])
	sh := uint32(b[2]) | uint32(b[3])<<8
	for ib := 0; ib < 8; ib++ {
		ls := int32(b[4+ib/2]>>(4*(ib%2))&15) | int32(sh>>(2*ib)&3)<<4
		decodeIQ4((*[32]float32)(o[32*ib:]), (*[16]byte)(b[8+16*ib:]), d*float32(ls-32))
	}
}

func decodeQ2K(o *[256]float32, b *[84]byte) {
	d, dmin := f16at(b[80:]), f16at(b[82:])
	var codes [256]byte
	k2Codes(&codes, (*[64]byte)(b[16:]), nil)
	var tab [4]float32
	for j := 0; j < 16; j++ {
		sc := b[j]
		dl, ml := d*float32(sc&15), float32(dmin*float32(sc>>4))
		for v := range tab {
			tab[v] = float32(dl*float32(v)) - ml
		}
		out := (*[16]float32)(o[16*j:])
		c := (*[16]byte)(codes[16*j:])
		for l := 0; l < 16; l++ {
			out[l] = tab[c[l]&3]
		}
	}
}

// k2Codes unpacks the 2-bit levels of Q2_K/Q3_K in element order (element
// 128h+32k+i is bits 2k..2k+1 of qs[32h+i]), eight at a time in a uint64;
// with hmask (Q3_K) bit 4h+k of hmask[i] is added as bit 2.
func k2Codes(codes *[256]byte, qs *[64]byte, hmask *[32]byte) {
	const lo2 = 0x0303030303030303
	for h := 0; h < 2; h++ {
		for i := 0; i < 32; i += 8 {
			q := binary.LittleEndian.Uint64(qs[32*h+i:])
			var hm uint64
			if hmask != nil {
				hm = binary.LittleEndian.Uint64(hmask[i:])
			}
			for k := 0; k < 4; k++ {
				c := q >> (2 * k) & lo2
				if hmask != nil {
					c |= hm >> (4*h + k) & 0x0101010101010101 << 2
				}
				binary.LittleEndian.PutUint64(codes[128*h+32*k+i:], c)
			}
		}
	}
}

// q3Level is the Q3_K level of a code q2 | h<<2: q2 − 4 + 4h = code − 4.
var q3Level = [8]float32{-4, -3, -2, -1, 0, 1, 2, 3}

func decodeQ3K(o *[256]float32, b *[110]byte) {
	sb := (*[12]byte)(b[96:])
	d := f16at(b[108:])
	var codes [256]byte
	k2Codes(&codes, (*[64]byte)(b[32:]), (*[32]byte)(b[0:]))
	for j := 0; j < 16; j++ {
		lo := sb[j%8] >> (4 * (j / 8)) & 15
		hi := sb[8+j%4] >> (2 * (j / 4)) & 3
		dl := d * float32(int32(lo|hi<<4)-32)
		out := (*[16]float32)(o[16*j:])
		c := (*[16]byte)(codes[16*j:])
		for l := 0; l < 16; l++ {
			out[l] = dl * q3Level[c[l]&7]
		}
	}
}

// u5f is float32(v) for the 32 five-bit levels (no int-to-float per weight).
var u5f = func() (t [32]float32) {
	for v := range t {
		t[v] = float32(v)
	}
	return
}()

// decodeQ5K builds each sub-block's 5-bit levels eight at a time (nibbles
// and the qh bit of the sub-block, in a uint64), then scales them as
// quant's Q5_K: float32(d·sc·q) − dmin·m.
func decodeQ5K(o *[256]float32, b *[176]byte) {
	const lo4, one = 0x0f0f0f0f0f0f0f0f, 0x0101010101010101
	d, dmin := f16at(b[0:]), f16at(b[2:])
	s := (*[12]byte)(b[4:])
	qh := (*[32]byte)(b[16:])
	var c1, c2 [32]byte
	for g := 0; g < 4; g++ {
		sc1, m1 := scaleMinK4(2*g, s)
		sc2, m2 := scaleMinK4(2*g+1, s)
		d1, dm1 := d*float32(sc1), float32(dmin*float32(m1))
		d2, dm2 := d*float32(sc2), float32(dmin*float32(m2))
		for i := 0; i < 32; i += 8 {
			q := binary.LittleEndian.Uint64(b[48+32*g+i:])
			h := binary.LittleEndian.Uint64(qh[i:])
			binary.LittleEndian.PutUint64(c1[i:], q&lo4|h>>(2*g)&one<<4)
			binary.LittleEndian.PutUint64(c2[i:], q>>4&lo4|h>>(2*g+1)&one<<4)
		}
		lo := (*[32]float32)(o[64*g:])
		hi := (*[32]float32)(o[64*g+32:])
		for l := 0; l < 32; l++ {
			lo[l] = float32(d1*u5f[c1[l]&31]) - dm1
			hi[l] = float32(d2*u5f[c2[l]&31]) - dm2
		}
	}
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
