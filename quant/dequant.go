package quant

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// ErrUnsupported is wrapped by errors for a known type that an operation does
// not handle (for example dequantizing Q8_K, an activation-only format).
var ErrUnsupported = errors.New("unsupported type")

// Code books of the non-linear 4-bit formats (ggml-common.h).
var (
	kvaluesIQ4NL = [16]int8{-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113}
	// kvaluesMXFP4 holds the E2M1 values doubled (ggml's kvalues_mxfp4); the
	// block scale is halved to match (e8m0Half).
	kvaluesMXFP4 = [16]int8{0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12}
)

// IQ4NLTable is ggml's kvalues_iq4nl, the code book of IQ4_NL and IQ4_XS
// (a copy: kernels builds its decoding tables from it).
var IQ4NLTable = kvaluesIQ4NL

// blockInfo is the allocation-free twin of Lookup for the types the codecs
// handle: elements per block, bytes per block, ok.
func blockInfo(t Type) (bs, ts int64, ok bool) {
	switch t {
	case F32:
		return 1, 4, true
	case F16, BF16:
		return 1, 2, true
	case Q4_0, IQ4_NL:
		return 32, 18, true
	case Q4_1:
		return 32, 20, true
	case Q5_0:
		return 32, 22, true
	case Q5_1:
		return 32, 24, true
	case Q8_0:
		return 32, 34, true
	case Q8_1:
		return 32, 36, true
	case MXFP4:
		return 32, 17, true
	case Q2_K:
		return 256, 84, true
	case Q3_K:
		return 256, 110, true
	case Q4_K:
		return 256, 144, true
	case Q5_K:
		return 256, 176, true
	case Q6_K:
		return 256, 210, true
	case IQ4_XS:
		return 256, 136, true
	case NF4:
		return 64, 32, true
	}
	return 0, 0, false
}

// unsupported builds the error for a type the operation op does not handle.
func unsupported(op string, t Type) error {
	if _, err := Lookup(t); err != nil {
		return err
	}
	return fmt.Errorf("quant: %s %s not supported: %w", op, t, ErrUnsupported)
}

// tensorBytes is Bytes for the codec types without the map lookup.
func tensorBytes(t Type, bs, ts, n int64) (int64, error) {
	if n < 0 {
		return 0, fmt.Errorf("quant: negative element count %d", n)
	}
	if n%bs != 0 {
		return 0, fmt.Errorf("quant: %s: %d elements is not a multiple of the block size %d", t, n, bs)
	}
	if t == NF4 {
		return Bytes(t, n)
	}
	blocks := n / bs
	if blocks > math.MaxInt64/ts {
		return 0, fmt.Errorf("quant: %s: %d elements overflow", t, n)
	}
	return blocks * ts, nil
}

// Dequantize decodes src into dst. For every type but NF4, src holds exactly
// len(dst)/BlockSize whole blocks. For NF4, src is a whole NF4 tensor (nibbles
// and side table, see doc.go) of len(dst) elements.
func Dequantize(t Type, dst []float32, src []byte) error {
	return DequantizeRange(t, dst, src, int64(len(dst)), 0)
}

// DequantizeRange decodes elements [off, off+len(dst)) of a tensor of n
// elements whose complete data is data (len(data) == Bytes(t, n)). off and
// len(dst) must be multiples of the block size. It does not allocate.
func DequantizeRange(t Type, dst []float32, data []byte, n, off int64) error {
	bs, ts, ok := blockInfo(t)
	if !ok {
		return unsupported("dequantize", t)
	}
	size, err := tensorBytes(t, bs, ts, n)
	if err != nil {
		return err
	}
	if int64(len(data)) != size {
		return fmt.Errorf("quant: %s: data is %d bytes, %d elements need %d", t, len(data), n, size)
	}
	m := int64(len(dst))
	if off < 0 || off > n || m > n-off {
		return fmt.Errorf("quant: %s: range [%d, %d+%d) outside a tensor of %d elements", t, off, off, m, n)
	}
	if off%bs != 0 || m%bs != 0 {
		return fmt.Errorf("quant: %s: range [%d, %d+%d) is not aligned to the block size %d", t, off, off, m, bs)
	}
	if m == 0 {
		return nil
	}
	if t == NF4 {
		dequantNF4(dst, data, n, off)
		return nil
	}
	src := data[off/bs*ts : (off+m)/bs*ts]
	switch t {
	case F32:
		src = src[:4*len(dst)]
		for i := range dst {
			dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(src[4*i:]))
		}
	case F16:
		src = src[:2*len(dst)]
		for i := range dst {
			h := uint16(src[2*i]) | uint16(src[2*i+1])<<8
			if e := h & 0x7c00; e != 0 && e != 0x7c00 { // f16ToF32, inlined by hand
				dst[i] = math.Float32frombits(uint32(h&0x8000)<<16 | (uint32(h&0x7fff)+(127-15)<<10)<<13)
			} else {
				dst[i] = F16ToF32(h)
			}
		}
	case BF16:
		src = src[:2*len(dst)]
		for i := range dst {
			dst[i] = BF16ToF32(binary.LittleEndian.Uint16(src[2*i:]))
		}
	case Q4_0:
		dequantQ4_0(dst, src)
	case Q4_1:
		dequantQ4_1(dst, src)
	case Q5_0:
		dequantQ5_0(dst, src)
	case Q5_1:
		dequantQ5_1(dst, src)
	case Q8_0:
		dequantQ8_0(dst, src)
	case Q8_1:
		dequantQ8_1(dst, src)
	case Q2_K:
		dequantQ2K(dst, src)
	case Q3_K:
		dequantQ3K(dst, src)
	case Q4_K:
		dequantQ4K(dst, src)
	case Q5_K:
		dequantQ5K(dst, src)
	case Q6_K:
		dequantQ6K(dst, src)
	case IQ4_NL:
		dequantIQ4NL(dst, src)
	case IQ4_XS:
		dequantIQ4XS(dst, src)
	case MXFP4:
		dequantMXFP4(dst, src)
	}
	return nil
}

// The per-type loops below take whole blocks: len(y) == nb*blck and
// len(x) == nb*type_size, checked by DequantizeRange. Each mirrors ggml's
// dequantize_row_* with every f32 operation rounded separately (no FMA: a
// product that feeds an addition is wrapped in float32()).

func f16At(b []byte) float32 { return f16ToF32(uint16(b[0]) | uint16(b[1])<<8) }

// f16ToF32 is F16ToF32 with the normal case first and inlinable: rebias the
// exponent by 127-15 and widen the mantissa. Zero, subnormals, Inf and NaN go
// to F16ToF32. Equal to F16ToF32 on all 65536 inputs (TestF16Fast).
func f16ToF32(h uint16) float32 {
	if e := h & 0x7c00; e != 0 && e != 0x7c00 {
		return math.Float32frombits(uint32(h&0x8000)<<16 | (uint32(h&0x7fff)+(127-15)<<10)<<13)
	}
	return F16ToF32(h)
}

func dequantQ4_0(y []float32, x []byte) {
	for i := 0; i < len(y)/32; i++ {
		b := (*[18]byte)(x[i*18:])
		o := (*[32]float32)(y[i*32:])
		d := f16At(b[0:])
		for j := 0; j < 16; j++ {
			q := b[2+j]
			o[j] = float32(int32(q&15)-8) * d
			o[j+16] = float32(int32(q>>4)-8) * d
		}
	}
}

func dequantQ4_1(y []float32, x []byte) {
	for i := 0; i < len(y)/32; i++ {
		b := (*[20]byte)(x[i*20:])
		o := (*[32]float32)(y[i*32:])
		d, m := f16At(b[0:]), f16At(b[2:])
		for j := 0; j < 16; j++ {
			q := b[4+j]
			o[j] = float32(float32(q&15)*d) + m
			o[j+16] = float32(float32(q>>4)*d) + m
		}
	}
}

func dequantQ5_0(y []float32, x []byte) {
	for i := 0; i < len(y)/32; i++ {
		b := (*[22]byte)(x[i*22:])
		o := (*[32]float32)(y[i*32:])
		d := f16At(b[0:])
		qh := binary.LittleEndian.Uint32(b[2:])
		for j := 0; j < 16; j++ {
			q := uint32(b[6+j])
			q0 := q&15 | (qh>>j&1)<<4
			q1 := q>>4 | (qh>>(j+16)&1)<<4
			o[j] = float32(int32(q0)-16) * d
			o[j+16] = float32(int32(q1)-16) * d
		}
	}
}

func dequantQ5_1(y []float32, x []byte) {
	for i := 0; i < len(y)/32; i++ {
		b := (*[24]byte)(x[i*24:])
		o := (*[32]float32)(y[i*32:])
		d, m := f16At(b[0:]), f16At(b[2:])
		qh := binary.LittleEndian.Uint32(b[4:])
		for j := 0; j < 16; j++ {
			q := uint32(b[8+j])
			q0 := q&15 | (qh>>j&1)<<4
			q1 := q>>4 | (qh>>(j+16)&1)<<4
			o[j] = float32(float32(q0)*d) + m
			o[j+16] = float32(float32(q1)*d) + m
		}
	}
}

func dequantQ8_0(y []float32, x []byte) {
	for i := 0; i < len(y)/32; i++ {
		b := (*[34]byte)(x[i*34:])
		o := (*[32]float32)(y[i*32:])
		d := f16At(b[0:])
		for j := 0; j < 32; j++ {
			o[j] = float32(int8(b[2+j])) * d
		}
	}
}

func dequantQ8_1(y []float32, x []byte) {
	for i := 0; i < len(y)/32; i++ {
		b := (*[36]byte)(x[i*36:])
		o := (*[32]float32)(y[i*32:])
		d := f16At(b[0:])
		for j := 0; j < 32; j++ {
			o[j] = float32(int8(b[4+j])) * d
		}
	}
}

func dequantQ2K(y []float32, x []byte) {
	for i := 0; i < len(y)/256; i++ {
		b := (*[84]byte)(x[i*84:])
		o := (*[256]float32)(y[i*256:])
		d, dmin := f16At(b[80:]), f16At(b[82:])
		for h := 0; h < 2; h++ {
			qs := (*[32]byte)(b[16+32*h:])
			for k := 0; k < 4; k++ {
				shift := uint(2 * k)
				for p := 0; p < 2; p++ {
					sc := b[8*h+2*k+p]
					dl := d * float32(sc&15)
					ml := float32(dmin * float32(sc>>4))
					out := (*[16]float32)(o[128*h+32*k+16*p:])
					q := (*[16]byte)(qs[16*p:])
					for l := 0; l < 16; l++ {
						out[l] = float32(dl*float32(q[l]>>shift&3)) - ml
					}
				}
			}
		}
	}
}

func dequantQ3K(y []float32, x []byte) {
	for i := 0; i < len(y)/256; i++ {
		b := (*[110]byte)(x[i*110:])
		o := (*[256]float32)(y[i*256:])
		hmask := (*[32]byte)(b[0:])
		sb := (*[12]byte)(b[96:])
		d := f16At(b[108:])
		var sc [16]float32
		for j := 0; j < 16; j++ {
			var lo byte
			if j < 8 {
				lo = sb[j] & 15
			} else {
				lo = sb[j-8] >> 4
			}
			hi := sb[8+j%4] >> (2 * (j / 4)) & 3
			sc[j] = d * float32(int32(lo|hi<<4)-32)
		}
		for h := 0; h < 2; h++ {
			qs := (*[32]byte)(b[32+32*h:])
			for k := 0; k < 4; k++ {
				shift := uint(2 * k)
				hbit := uint(4*h + k)
				for p := 0; p < 2; p++ {
					dl := sc[8*h+2*k+p]
					out := (*[16]float32)(o[128*h+32*k+16*p:])
					for l := 0; l < 16; l++ {
						ii := 16*p + l
						q := int32(qs[ii]>>shift&3) - 4 + 4*int32(hmask[ii]>>hbit&1)
						out[l] = dl * float32(q)
					}
				}
			}
		}
	}
}

// scaleMinK4 unpacks the 6-bit scale and min of sub-block j (get_scale_min_k4).
func scaleMinK4(j int, s *[12]byte) (sc, m uint8) {
	if j < 4 {
		return s[j] & 63, s[j+4] & 63
	}
	return s[j+4]&15 | (s[j-4]>>6)<<4, s[j+4]>>4 | (s[j]>>6)<<4
}

func dequantQ4K(y []float32, x []byte) {
	for i := 0; i < len(y)/256; i++ {
		b := (*[144]byte)(x[i*144:])
		o := (*[256]float32)(y[i*256:])
		d, dmin := f16At(b[0:]), f16At(b[2:])
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
}

func dequantQ5K(y []float32, x []byte) {
	for i := 0; i < len(y)/256; i++ {
		b := (*[176]byte)(x[i*176:])
		o := (*[256]float32)(y[i*256:])
		d, dmin := f16At(b[0:]), f16At(b[2:])
		s := (*[12]byte)(b[4:])
		qh := (*[32]byte)(b[16:])
		for g := 0; g < 4; g++ {
			sc1, m1 := scaleMinK4(2*g, s)
			sc2, m2 := scaleMinK4(2*g+1, s)
			d1, dm1 := d*float32(sc1), float32(dmin*float32(m1))
			d2, dm2 := d*float32(sc2), float32(dmin*float32(m2))
			q := (*[32]byte)(b[48+32*g:])
			lo := (*[32]float32)(o[64*g:])
			hi := (*[32]float32)(o[64*g+32:])
			u1, u2 := uint(2*g), uint(2*g+1)
			for l := 0; l < 32; l++ {
				h := qh[l]
				lo[l] = float32(d1*float32(q[l]&15|(h>>u1&1)<<4)) - dm1
				hi[l] = float32(d2*float32(q[l]>>4|(h>>u2&1)<<4)) - dm2
			}
		}
	}
}

func dequantQ6K(y []float32, x []byte) {
	for i := 0; i < len(y)/256; i++ {
		b := (*[210]byte)(x[i*210:])
		o := (*[256]float32)(y[i*256:])
		d := f16At(b[208:])
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
}

func dequantIQ4NL(y []float32, x []byte) {
	for i := 0; i < len(y)/32; i++ {
		b := (*[18]byte)(x[i*18:])
		o := (*[32]float32)(y[i*32:])
		d := f16At(b[0:])
		for j := 0; j < 16; j++ {
			q := b[2+j]
			o[j] = d * float32(kvaluesIQ4NL[q&15])
			o[j+16] = d * float32(kvaluesIQ4NL[q>>4])
		}
	}
}

// iq4xsScale is the signed 6-bit scale ls-32 of sub-block ib of an IQ4_XS
// block b: low 4 bits from scales_l, high 2 from scales_h.
func iq4xsScale(b *[136]byte, ib int) int32 {
	h := uint16(b[2]) | uint16(b[3])<<8
	ls := b[4+ib/2]>>(4*(ib%2))&15 | uint8(h>>(2*ib)&3)<<4
	return int32(ls) - 32
}

func dequantIQ4XS(y []float32, x []byte) {
	for i := 0; i < len(y)/256; i++ {
		b := (*[136]byte)(x[i*136:])
		d := f16At(b[0:])
		for ib := 0; ib < 8; ib++ {
			dl := d * float32(iq4xsScale(b, ib))
			q := (*[16]byte)(b[8+16*ib:])
			o := (*[32]float32)(y[i*256+32*ib:])
			for j := 0; j < 16; j++ {
				o[j] = dl * float32(kvaluesIQ4NL[q[j]&15])
				o[j+16] = dl * float32(kvaluesIQ4NL[q[j]>>4])
			}
		}
	}
}

// e8m0Half is ggml_e8m0_to_fp32_half: 2^(e-128) as f32, subnormal for e < 2.
func e8m0Half(e uint8) float32 {
	if e < 2 {
		return math.Float32frombits(0x00200000 << e)
	}
	return math.Float32frombits(uint32(e-1) << 23)
}

func dequantMXFP4(y []float32, x []byte) {
	for i := 0; i < len(y)/32; i++ {
		b := (*[17]byte)(x[i*17:])
		o := (*[32]float32)(y[i*32:])
		d := e8m0Half(b[0])
		for j := 0; j < 16; j++ {
			q := b[1+j]
			o[j] = float32(kvaluesMXFP4[q&15]) * d
			o[j+16] = float32(kvaluesMXFP4[q>>4]) * d
		}
	}
}
