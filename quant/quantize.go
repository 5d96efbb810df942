package quant

import (
	"encoding/binary"
	"fmt"
	"math"
)

// CanQuantize reports whether Quantize supports t.
func CanQuantize(t Type) bool {
	switch t {
	case F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1,
		Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS, MXFP4, NF4:
		return true
	}
	return false
}

// Quantize encodes src (a whole tensor, or whole rows) into dst, with
// len(dst) == Bytes(t, len(src)). The ggml types reproduce ggml's reference
// quantizers (quantize_row_*_ref, and quantize_iq4_nl/quantize_iq4_xs for IQ4_NL/IQ4_XS, as
// ggml_quantize_chunk calls them without an importance matrix) byte for byte.
// NF4 rejects NaN and Inf input; the ggml types encode them as ggml would.
func Quantize(t Type, dst []byte, src []float32) error {
	if !CanQuantize(t) {
		return unsupported("quantize", t)
	}
	bs, ts, _ := blockInfo(t)
	size, err := tensorBytes(t, bs, ts, int64(len(src)))
	if err != nil {
		return err
	}
	if int64(len(dst)) != size {
		return fmt.Errorf("quant: %s: destination is %d bytes, %d elements need %d", t, len(dst), len(src), size)
	}
	switch t {
	case F32:
		for i, v := range src {
			binary.LittleEndian.PutUint32(dst[4*i:], math.Float32bits(v))
		}
	case F16:
		for i, v := range src {
			binary.LittleEndian.PutUint16(dst[2*i:], F32ToF16(v))
		}
	case BF16:
		for i, v := range src {
			binary.LittleEndian.PutUint16(dst[2*i:], F32ToBF16(v))
		}
	case Q4_0:
		quantizeQ4_0(dst, src)
	case Q4_1:
		quantizeQ4_1(dst, src)
	case Q5_0:
		quantizeQ5_0(dst, src)
	case Q5_1:
		quantizeQ5_1(dst, src)
	case Q8_0:
		quantizeQ8(dst, src, false)
	case Q8_1:
		quantizeQ8(dst, src, true)
	case Q2_K:
		quantizeQ2K(dst, src)
	case Q3_K:
		quantizeQ3K(dst, src)
	case Q4_K:
		quantizeQ4K(dst, src)
	case Q5_K:
		quantizeQ5K(dst, src)
	case Q6_K:
		quantizeQ6K(dst, src)
	case IQ4_NL:
		quantizeIQ4NL(dst, src)
	case IQ4_XS:
		quantizeIQ4XS(dst, src)
	case MXFP4:
		quantizeMXFP4(dst, src)
	case NF4:
		return quantizeNF4(dst, src)
	}
	return nil
}

// RMSE returns the root-mean-square error between a and b, accumulated in
// float64. It is 0 for two empty slices and NaN when the lengths differ.
func RMSE(a, b []float32) float64 {
	if len(a) != len(b) {
		return math.NaN()
	}
	if len(a) == 0 {
		return 0
	}
	var s float64
	for i := range a {
		d := float64(a[i]) - float64(b[i])
		s += d * d
	}
	return math.Sqrt(s / float64(len(a)))
}

// cInt32 converts like x86-64's cvttss2si, which is what C's float-to-small-int
// casts in ggml compile to: truncation toward zero, and the "integer
// indefinite" 0x80000000 for NaN or out-of-range values (Go leaves those
// implementation-defined). Narrow the result with a Go conversion to get C's
// wrap-around.
func cInt32(f float32) int32 {
	if !(f > -2147483904 && f < 2147483648) {
		return math.MinInt32
	}
	return int32(f)
}

func abs32(f float32) float32 { return math.Float32frombits(math.Float32bits(f) &^ (1 << 31)) }

func putF16(b []byte, f float32) { binary.LittleEndian.PutUint16(b, F32ToF16(f)) }

// absMax returns the largest magnitude in x and the value that has it (the
// first one on ties; NaN never wins), as ggml's quantizers pick them.
func absMax(x []float32) (amax, m float32) {
	for _, v := range x {
		if a := abs32(v); a > amax {
			amax, m = a, v
		}
	}
	return amax, m
}

// signedAbsmax is the value of largest magnitude (Q4_0/Q5_0's max).
func signedAbsmax(x []float32) float32 { _, m := absMax(x); return m }

func minMax(x []float32) (lo, hi float32) {
	lo, hi = math.MaxFloat32, -math.MaxFloat32
	for _, v := range x {
		if v < lo {
			lo = v
		}
		if v > hi {
			hi = v
		}
	}
	return lo, hi
}

// inv is ggml's `d ? 1.0f/d : 0.0f`.
func inv(d float32) float32 {
	if d != 0 {
		return 1 / d
	}
	return 0
}

func quantizeQ4_0(y []byte, x []float32) {
	for i := 0; i < len(x)/32; i++ {
		xb := (*[32]float32)(x[i*32:])
		b := (*[18]byte)(y[i*18:])
		d := signedAbsmax(xb[:]) / -8
		id := inv(d)
		putF16(b[0:], d)
		for j := 0; j < 16; j++ {
			x0 := min(15, int32(int8(cInt32(float32(xb[j]*id)+8.5))))
			x1 := min(15, int32(int8(cInt32(float32(xb[j+16]*id)+8.5))))
			b[2+j] = uint8(x0) | uint8(x1)<<4
		}
	}
}

func quantizeQ4_1(y []byte, x []float32) {
	for i := 0; i < len(x)/32; i++ {
		xb := (*[32]float32)(x[i*32:])
		b := (*[20]byte)(y[i*20:])
		lo, hi := minMax(xb[:])
		d := (hi - lo) / 15
		id := inv(d)
		putF16(b[0:], d)
		putF16(b[2:], lo)
		for j := 0; j < 16; j++ {
			x0 := min(15, int32(int8(cInt32(float32((xb[j]-lo)*id)+0.5))))
			x1 := min(15, int32(int8(cInt32(float32((xb[j+16]-lo)*id)+0.5))))
			b[4+j] = uint8(x0) | uint8(x1)<<4
		}
	}
}

func quantizeQ5_0(y []byte, x []float32) {
	for i := 0; i < len(x)/32; i++ {
		xb := (*[32]float32)(x[i*32:])
		b := (*[22]byte)(y[i*22:])
		d := signedAbsmax(xb[:]) / -16
		id := inv(d)
		putF16(b[0:], d)
		var qh uint32
		for j := 0; j < 16; j++ {
			x0 := uint8(min(31, int32(int8(cInt32(float32(xb[j]*id)+16.5)))))
			x1 := uint8(min(31, int32(int8(cInt32(float32(xb[j+16]*id)+16.5)))))
			b[6+j] = x0&15 | (x1&15)<<4
			qh |= uint32(x0&0x10) >> 4 << j
			qh |= uint32(x1&0x10) >> 4 << (j + 16)
		}
		binary.LittleEndian.PutUint32(b[2:], qh)
	}
}

func quantizeQ5_1(y []byte, x []float32) {
	for i := 0; i < len(x)/32; i++ {
		xb := (*[32]float32)(x[i*32:])
		b := (*[24]byte)(y[i*24:])
		lo, hi := minMax(xb[:])
		d := (hi - lo) / 31
		id := inv(d)
		putF16(b[0:], d)
		putF16(b[2:], lo)
		var qh uint32
		for j := 0; j < 16; j++ {
			x0 := uint8(cInt32(float32((xb[j]-lo)*id) + 0.5))
			x1 := uint8(cInt32(float32((xb[j+16]-lo)*id) + 0.5))
			b[8+j] = x0&15 | (x1&15)<<4
			qh |= uint32(x0&0x10) >> 4 << j
			qh |= uint32(x1&0x10) >> 4 << (j + 16)
		}
		binary.LittleEndian.PutUint32(b[4:], qh)
	}
}

// roundf is C's roundf (half away from zero); exact via float64.
func roundf(f float32) float32 { return float32(math.Round(float64(f))) }

// quantizeQ8 is quantize_row_q8_0_ref, or quantize_row_q8_1_ref when withSum.
func quantizeQ8(y []byte, x []float32, withSum bool) {
	ts, qs := 34, 2
	if withSum {
		ts, qs = 36, 4
	}
	for i := 0; i < len(x)/32; i++ {
		xb := (*[32]float32)(x[i*32:])
		b := y[i*ts : (i+1)*ts]
		var amax float32
		for _, v := range xb {
			if a := abs32(v); !(amax > a) { // C's MAX(amax, a): amax > a ? amax : a
				amax = a
			}
		}
		d := amax / 127
		id := inv(d)
		putF16(b[0:], d)
		sum := int32(0)
		for j, v := range xb {
			q := int8(cInt32(roundf(v * id)))
			b[qs+j] = byte(q)
			sum += int32(q)
		}
		if withSum {
			putF16(b[2:], float32(sum)*d)
		}
	}
}

// kvaluesIQ4NL lookup: best_index_int8.
func bestIndexIQ4NL(x float32) uint8 {
	x = float32(x) // x is often a product; keep it rounded (no fused x*y - v)
	v := &kvaluesIQ4NL
	if x <= float32(v[0]) {
		return 0
	}
	if x >= float32(v[15]) {
		return 15
	}
	ml, mu := 0, 15
	for mu-ml > 1 {
		mav := (ml + mu) / 2
		if x < float32(v[mav]) {
			mu = mav
		} else {
			ml = mav
		}
	}
	if x-float32(v[mu-1]) < float32(v[mu])-x {
		return uint8(mu - 1)
	}
	return uint8(mu)
}

// iq4Scale is the scale search of quantize_row_iq4_nl_impl for one block of
// 32 without an importance matrix (weights x², ntry = 7): the least-squares
// scale of the best of 15 candidate inverse scales around −max/T[0]; 0 for
// an all-zero block.
func iq4Scale(xb *[32]float32) float32 {
	const ntry = 7
	v0 := float32(kvaluesIQ4NL[0])
	var weight [32]float32
	for j, v := range xb {
		weight[j] = v * v
	}
	amax, mx := absMax(xb[:])
	if amax < groupMaxEps {
		return 0
	}
	fit := func(id float32) (sumqx, sumq2 float32) {
		for j, v := range xb {
			q := float32(kvaluesIQ4NL[bestIndexIQ4NL(id*v)])
			w := weight[j]
			sumqx += float32(float32(w*q) * v)
			sumq2 += float32(float32(w*q) * q)
		}
		return sumqx, sumq2
	}
	d := -mx / v0
	sumqx, sumq2 := fit(1 / d)
	d = 0
	if sumq2 > 0 {
		d = sumqx / sumq2
	}
	best := d * sumqx
	for itry := -ntry; itry <= ntry; itry++ {
		sumqx, sumq2 = fit(float32(itry+int(kvaluesIQ4NL[0])) / mx)
		if sumq2 > 0 && float32(sumqx*sumqx) > float32(best*sumq2) {
			d = sumqx / sumq2
			best = d * sumqx
		}
	}
	return d
}

// iq4Codes writes the 16 bytes of nibbles of one 32-value block: value j in
// the low nibble of byte j, value j+16 in the high one, each the nearest
// code book entry to id·x.
func iq4Codes(q []byte, xb *[32]float32, id float32) {
	for j := 0; j < 16; j++ {
		q[j] = bestIndexIQ4NL(id*xb[j]) | bestIndexIQ4NL(id*xb[j+16])<<4
	}
}

// quantizeIQ4NL is ggml's quantize_iq4_nl without an importance matrix
// (quantize_row_iq4_nl_impl with super block = block = 32), the path
// ggml_quantize_chunk takes.
func quantizeIQ4NL(y []byte, x []float32) {
	for i := 0; i < len(x)/32; i++ {
		xb := (*[32]float32)(x[i*32:])
		b := (*[18]byte)(y[i*18:])
		scale := iq4Scale(xb)
		putF16(b[0:], scale)
		iq4Codes(b[2:], xb, inv(scale))
	}
}

// quantizeIQ4XS is ggml's quantize_iq4_xs without an importance matrix
// (quantize_row_iq4_nl_impl with super block 256, block 32): each block's
// scale from iq4Scale, then quantized to 6 signed bits against the one of
// largest magnitude, and the codes chosen again against the stored scale.
func quantizeIQ4XS(y []byte, x []float32) {
	var scales [8]float32
	for i := 0; i < len(x)/256; i++ {
		b := (*[136]byte)(y[i*136:])
		var maxScale, amaxScale float32
		for ib := range scales {
			scales[ib] = iq4Scale((*[32]float32)(x[i*256+32*ib:]))
			if a := abs32(scales[ib]); a > amaxScale {
				amaxScale, maxScale = a, scales[ib]
			}
		}
		d := -maxScale / 32
		putF16(b[0:], d)
		id := inv(d)
		var sh uint16
		for ib := range scales {
			l := max(-32, min(31, nearestInt(id*scales[ib])))
			dl := d * float32(l)
			iq4Codes(b[8+16*ib:], (*[32]float32)(x[i*256+32*ib:]), inv(dl))
			l += 32
			if ib%2 == 0 {
				b[4+ib/2] = uint8(l) & 15
			} else {
				b[4+ib/2] |= (uint8(l) & 15) << 4
			}
			sh |= uint16(uint8(l)>>4) << (2 * ib)
		}
		b[2], b[3] = byte(sh), byte(sh>>8)
	}
}

func bestIndexMXFP4(x, e float32) uint8 {
	best := uint8(0)
	bestErr := abs32(float32(float32(kvaluesMXFP4[0])*e) - x)
	for i := 1; i < 16; i++ {
		if err := abs32(float32(float32(kvaluesMXFP4[i])*e) - x); err < bestErr {
			best, bestErr = uint8(i), err
		}
	}
	return best
}

func quantizeMXFP4(y []byte, x []float32) {
	for i := 0; i < len(x)/32; i++ {
		xb := (*[32]float32)(x[i*32:])
		b := (*[17]byte)(y[i*17:])
		var amax float32
		for _, v := range xb {
			if a := abs32(v); amax < a {
				amax = a
			}
		}
		var e uint8
		if amax > 0 {
			l2 := float32(math.Log2(float64(amax))) // log2f, correctly rounded but for ties
			e = uint8(cInt32(float32(math.Floor(float64(l2))) - 2 + 127))
		}
		d := e8m0Half(e)
		b[0] = e
		for j := 0; j < 16; j++ {
			b[1+j] = bestIndexMXFP4(xb[j], d) | bestIndexMXFP4(xb[j+16], d)<<4
		}
	}
}
