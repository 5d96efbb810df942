package quant

import "math"

// K-quant reference quantizers: ports of ggml's quantize_row_q{4,5,6}_K_ref
// and their scale searches (make_qkx2_quants, make_qx_quants), keeping ggml's
// f32 operation order. Every product that feeds an addition is wrapped in
// float32() so no compiler may fuse it into an FMA.

const groupMaxEps = float32(1e-15) // GROUP_MAX_EPS

// nearestInt is ggml's nearest_int: round to nearest, ties to even, via the
// 1.5·2^23 trick (valid for |f| <= 4194303; garbage but no panic beyond).
func nearestInt(f float32) int32 {
	v := float32(f) + 12582912 // float32(): f may be a product; never fuse
	return int32(math.Float32bits(v)&0x007fffff) - 0x00400000
}

func sqrt32(f float32) float32 { return float32(math.Sqrt(float64(f))) }

// makeQKX2 is make_qkx2_quants: it fits x ≈ scale·L − theMin with L in
// [0, nmax], searching nstep+1 candidate inverse scales, weighted least
// squares. It returns scale and theMin (≥ 0).
func makeQKX2(nmax int32, x, weights []float32, L, Laux []uint8, rmin, rdelta float32, nstep int, useMad bool) (scale, theMin float32) {
	n := len(x)
	weights, L, Laux = weights[:n], L[:n], Laux[:n]
	mn, mx := x[0], x[0]
	sumW := weights[0]
	sumX := float32(sumW * x[0])
	for i := 1; i < n; i++ {
		if x[i] < mn {
			mn = x[i]
		}
		if x[i] > mx {
			mx = x[i]
		}
		w := weights[i]
		sumW += w
		sumX += float32(w * x[i])
	}
	if mn > 0 {
		mn = 0
	}
	if mx == mn {
		for i := range L {
			L[i] = 0
		}
		return 0, -mn
	}
	iscale := float32(nmax) / (mx - mn)
	scale = 1 / iscale
	var bestError float32
	for i := 0; i < n; i++ {
		l := nearestInt(iscale * (x[i] - mn))
		L[i] = uint8(max(0, min(nmax, l)))
		diff := float32(float32(scale*float32(L[i]))+mn) - x[i]
		if useMad {
			diff = abs32(diff)
		} else {
			diff = diff * diff
		}
		bestError += float32(weights[i] * diff)
	}
	if nstep < 1 {
		return scale, -mn
	}
	for is := 0; is <= nstep; is++ {
		iscale = float32(float32(rmin+float32(rdelta*float32(is)))+float32(nmax)) / (mx - mn)
		var sumL, sumL2, sumXL float32
		for i := 0; i < n; i++ {
			l := max(0, min(nmax, nearestInt(iscale*(x[i]-mn))))
			Laux[i] = uint8(l)
			w := weights[i]
			fl := float32(l)
			sumL += float32(w * fl)
			sumL2 += float32(float32(w*fl) * fl)
			sumXL += float32(float32(w*fl) * x[i])
		}
		D := float32(sumW*sumL2) - float32(sumL*sumL)
		if D > 0 {
			thisScale := (float32(sumW*sumXL) - float32(sumX*sumL)) / D
			thisMin := (float32(sumL2*sumX) - float32(sumL*sumXL)) / D
			if thisMin > 0 {
				thisMin = 0
				thisScale = sumXL / sumL2
			}
			var curError float32
			for i := 0; i < n; i++ {
				diff := float32(float32(thisScale*float32(Laux[i]))+thisMin) - x[i]
				if useMad {
					diff = abs32(diff)
				} else {
					diff = diff * diff
				}
				curError += float32(weights[i] * diff)
			}
			if curError < bestError {
				copy(L, Laux)
				bestError = curError
				scale = thisScale
				mn = thisMin
			}
		}
	}
	return scale, -mn
}

// makeQX is make_qx_quants with rmse_type 1 and no importance weights (the
// Q6_K reference path): signed levels L-nmax in [-nmax, nmax-1], stored as
// L in [0, 2·nmax-1].
func makeQX(nmax int32, x []float32, L []int8) float32 {
	L = L[:len(x)]
	amax, mx := absMax(x)
	if amax < groupMaxEps {
		clear(L)
		return 0
	}
	fnmax := float32(nmax)
	iscale := -fnmax / mx
	var sumlx, suml2 float32
	for i, v := range x {
		l := max(-nmax, min(nmax-1, nearestInt(iscale*v)))
		L[i] = int8(l + nmax)
		w := v * v
		fl := float32(l)
		sumlx += float32(float32(w*v) * fl)
		suml2 += float32(float32(w*fl) * fl)
	}
	var scale float32
	if suml2 != 0 {
		scale = sumlx / suml2
	}
	best := scale * sumlx
	for is := int32(-9); is <= 9; is++ {
		if is == 0 {
			continue
		}
		iscale = -float32(fnmax+float32(float32(0.1)*float32(is))) / mx
		sumlx, suml2 = 0, 0
		for _, v := range x {
			l := max(-nmax, min(nmax-1, nearestInt(iscale*v)))
			w := v * v
			fl := float32(l)
			sumlx += float32(float32(w*v) * fl)
			suml2 += float32(float32(w*fl) * fl)
		}
		if suml2 > 0 && float32(sumlx*sumlx) > float32(best*suml2) {
			for i, v := range x {
				l := nearestInt(iscale * v)
				L[i] = int8(nmax + max(-nmax, min(nmax-1, l)))
			}
			scale = sumlx / suml2
			best = scale * sumlx
		}
	}
	return scale
}

// packScalesK4 stores the 6-bit scales ls and mins lm of the 8 sub-blocks in
// the 12-byte Q4_K/Q5_K scales field.
func packScalesK4(s *[12]byte, j int, ls, lm uint8) {
	if j < 4 {
		s[j] = ls
		s[j+4] = lm
		return
	}
	s[j+4] = ls&0xF | (lm&0xF)<<4
	s[j-4] |= (ls >> 4) << 6
	s[j] |= (lm >> 4) << 6
}

// quantizeKx is the shared body of quantize_row_q4_K_ref (nmax 15) and
// quantize_row_q5_K_ref (nmax 31): it fills L with the final levels and the
// header (d, dmin, scales) of block b.
func quantizeKx(xb *[256]float32, hdr *[16]byte, L *[256]uint8, nmax int32, rmin float32, nstep int) {
	var Laux [32]uint8
	var weights [32]float32
	var mins, scales [8]float32
	var maxScale, maxMin float32
	for j := 0; j < 8; j++ {
		xs := xb[32*j : 32*j+32]
		var sumX2 float32
		for _, v := range xs {
			sumX2 += float32(v * v)
		}
		avX := sqrt32(sumX2 / 32)
		for l, v := range xs {
			weights[l] = avX + abs32(v)
		}
		scales[j], mins[j] = makeQKX2(nmax, xs, weights[:], L[32*j:], Laux[:], rmin, 0.1, nstep, false)
		if scales[j] > maxScale {
			maxScale = scales[j]
		}
		if mins[j] > maxMin {
			maxMin = mins[j]
		}
	}
	var invScale, invMin float32
	if maxScale > 0 {
		invScale = 63 / maxScale
	}
	if maxMin > 0 {
		invMin = 63 / maxMin
	}
	s := (*[12]byte)(hdr[4:])
	for j := 0; j < 8; j++ {
		ls := min(63, uint8(nearestInt(invScale*scales[j])))
		lm := min(63, uint8(nearestInt(invMin*mins[j])))
		packScalesK4(s, j, ls, lm)
	}
	putF16(hdr[0:], maxScale/63)
	putF16(hdr[2:], maxMin/63)
	d0, dmin0 := f16At(hdr[0:]), f16At(hdr[2:])
	for j := 0; j < 8; j++ {
		sc, m := scaleMinK4(j, s)
		d := d0 * float32(sc)
		if d == 0 {
			continue
		}
		dm := float32(dmin0 * float32(m))
		for ii := 0; ii < 32; ii++ {
			l := nearestInt((xb[32*j+ii] + dm) / d)
			L[32*j+ii] = uint8(max(0, min(nmax, l)))
		}
	}
}

func quantizeQ4K(y []byte, x []float32) {
	var L [256]uint8
	for i := 0; i < len(x)/256; i++ {
		xb := (*[256]float32)(x[i*256:])
		b := (*[144]byte)(y[i*144:])
		quantizeKx(xb, (*[16]byte)(b[:16]), &L, 15, -1, 20)
		for g := 0; g < 4; g++ {
			for l := 0; l < 32; l++ {
				b[16+32*g+l] = L[64*g+l] | L[64*g+l+32]<<4
			}
		}
	}
}

func quantizeQ5K(y []byte, x []float32) {
	var L [256]uint8
	for i := 0; i < len(x)/256; i++ {
		xb := (*[256]float32)(x[i*256:])
		b := (*[176]byte)(y[i*176:])
		quantizeKx(xb, (*[16]byte)(b[:16]), &L, 31, -0.5, 15)
		qh := (*[32]byte)(b[16:])
		*qh = [32]byte{}
		for g := 0; g < 4; g++ {
			m1, m2 := uint8(1)<<(2*g), uint8(2)<<(2*g)
			for j := 0; j < 32; j++ {
				l1, l2 := L[64*g+j], L[64*g+j+32]
				if l1 > 15 {
					l1 -= 16
					qh[j] |= m1
				}
				if l2 > 15 {
					l2 -= 16
					qh[j] |= m2
				}
				b[48+32*g+j] = l1 | l2<<4
			}
		}
	}
}

func quantizeQ6K(y []byte, x []float32) {
	var L [256]int8
	var scales [16]float32
	for i := 0; i < len(x)/256; i++ {
		xb := (*[256]float32)(x[i*256:])
		b := (*[210]byte)(y[i*210:])
		var maxScale, maxAbsScale float32
		for ib := 0; ib < 16; ib++ {
			scale := makeQX(32, xb[16*ib:16*ib+16], L[16*ib:])
			scales[ib] = scale
			if a := abs32(scale); a > maxAbsScale {
				maxAbsScale, maxScale = a, scale
			}
		}
		if maxAbsScale < groupMaxEps {
			*b = [210]byte{}
			putF16(b[208:], 0)
			continue
		}
		iscale := -128 / maxScale
		putF16(b[208:], 1/iscale)
		for ib := 0; ib < 16; ib++ {
			b[192+ib] = byte(int8(min(127, nearestInt(iscale*scales[ib]))))
		}
		d0 := f16At(b[208:])
		for j := 0; j < 16; j++ {
			d := d0 * float32(int8(b[192+j]))
			if d == 0 {
				continue
			}
			for ii := 0; ii < 16; ii++ {
				l := max(-32, min(31, nearestInt(xb[16*j+ii]/d)))
				L[16*j+ii] = int8(l + 32)
			}
		}
		for n := 0; n < 2; n++ {
			Ln := L[128*n:]
			ql := b[64*n:]
			qh := b[128+32*n:]
			for l := 0; l < 32; l++ {
				q1 := uint8(Ln[l]) & 0xF
				q2 := uint8(Ln[l+32]) & 0xF
				q3 := uint8(Ln[l+64]) & 0xF
				q4 := uint8(Ln[l+96]) & 0xF
				ql[l] = q1 | q3<<4
				ql[l+32] = q2 | q4<<4
				qh[l] = uint8(Ln[l])>>4 | (uint8(Ln[l+32])>>4)<<2 | (uint8(Ln[l+64])>>4)<<4 | (uint8(Ln[l+96])>>4)<<6
			}
		}
	}
}

// makeQ3 is make_q3_quants with do_rmse: signed levels in [-nmax, nmax-1]
// by nearest rounding against the largest-magnitude value, then up to five
// passes that move single levels while the weighted (x²) fit improves.
// L gets the levels + nmax (or all 0 for an all-zero group, as in ggml).
func makeQ3(nmax int32, x []float32, L []int8) float32 {
	L = L[:len(x)]
	amax, mx := absMax(x)
	if amax < groupMaxEps {
		clear(L)
		return 0
	}
	iscale := float32(-nmax) / mx
	var sumlx, suml2 float32
	for i, v := range x {
		l := max(-nmax, min(nmax-1, nearestInt(iscale*v)))
		L[i] = int8(l)
		w := v * v
		fl := float32(l)
		sumlx += float32(float32(w*v) * fl)
		suml2 += float32(float32(w*fl) * fl)
	}
	for itry := 0; itry < 5; itry++ {
		changed := 0
		for i, v := range x {
			w := v * v
			li := float32(L[i])
			slx := sumlx - float32(float32(w*v)*li)
			if slx > 0 {
				sl2 := suml2 - float32(float32(w*li)*li)
				nl := max(-nmax, min(nmax-1, nearestInt(float32(v*sl2)/slx)))
				if nl != int32(L[i]) {
					fl := float32(nl)
					slx += float32(float32(w*v) * fl)
					sl2 += float32(float32(w*fl) * fl)
					if sl2 > 0 && float32(float32(slx*slx)*suml2) > float32(float32(sumlx*sumlx)*sl2) {
						L[i] = int8(nl)
						sumlx, suml2 = slx, sl2
						changed++
					}
				}
			}
		}
		if changed == 0 {
			break
		}
	}
	for i := range L {
		L[i] += int8(nmax)
	}
	if suml2 > 0 {
		return sumlx / suml2
	}
	return 0
}

// packK2Bits stores 256 2-bit levels as Q2_K/Q3_K do: in each half of 128,
// byte l of the 32 holds levels l, l+32, l+64, l+96 in bits 0-1, 2-3, 4-5, 6-7.
func packK2Bits(qs *[64]byte, L *[256]uint8) {
	for h := 0; h < 2; h++ {
		for l := 0; l < 32; l++ {
			j := 128*h + l
			qs[32*h+l] = L[j] | L[j+32]<<2 | L[j+64]<<4 | L[j+96]<<6
		}
	}
}

// quantizeQ2K is quantize_row_q2_K_ref: per 16 weights an unsigned 2-bit
// fit with a min (make_qkx2_quants, weights |x|, mean absolute error), the
// 16 scales and mins quantized to 4 bits against the block's largest.
func quantizeQ2K(y []byte, x []float32) {
	var L [256]uint8
	var Laux [16]uint8
	var weights, mins, scales [16]float32
	for i := 0; i < len(x)/256; i++ {
		xb := (*[256]float32)(x[i*256:])
		b := (*[84]byte)(y[i*84:])
		var maxScale, maxMin float32
		for j := 0; j < 16; j++ {
			xs := xb[16*j : 16*j+16]
			for l, v := range xs {
				weights[l] = abs32(v)
			}
			scales[j], mins[j] = makeQKX2(3, xs, weights[:], L[16*j:], Laux[:], -0.5, 0.1, 15, true)
			if scales[j] > maxScale {
				maxScale = scales[j]
			}
			if mins[j] > maxMin {
				maxMin = mins[j]
			}
		}
		sc := (*[16]byte)(b[0:])
		if maxScale > 0 {
			iscale := 15 / maxScale
			for j := range sc {
				sc[j] = uint8(nearestInt(iscale * scales[j]))
			}
			putF16(b[80:], maxScale/15)
		} else {
			*sc = [16]byte{}
			putF16(b[80:], 0)
		}
		if maxMin > 0 {
			iscale := 15 / maxMin
			for j := range sc {
				sc[j] |= uint8(nearestInt(iscale*mins[j]) << 4)
			}
			putF16(b[82:], maxMin/15)
		} else {
			putF16(b[82:], 0)
		}
		d0, dmin0 := f16At(b[80:]), f16At(b[82:])
		for j := 0; j < 16; j++ {
			d := d0 * float32(sc[j]&15)
			if d == 0 {
				continue
			}
			dm := float32(dmin0 * float32(sc[j]>>4))
			for ii := 0; ii < 16; ii++ {
				l := nearestInt((xb[16*j+ii] + dm) / d)
				L[16*j+ii] = uint8(max(0, min(3, l)))
			}
		}
		packK2Bits((*[64]byte)(b[16:]), &L)
	}
}

// quantizeQ3K is quantize_row_q3_K_ref: per 16 weights a signed 3-bit fit
// (make_q3_quants), the 16 signed scales quantized to 6 bits against the
// one of largest magnitude; the third bit of each level goes to hmask.
func quantizeQ3K(y []byte, x []float32) {
	var L [256]int8
	var scales [16]float32
	for i := 0; i < len(x)/256; i++ {
		xb := (*[256]float32)(x[i*256:])
		b := (*[110]byte)(y[i*110:])
		var maxScale, amax float32
		for j := 0; j < 16; j++ {
			scales[j] = makeQ3(4, xb[16*j:16*j+16], L[16*j:])
			if s := abs32(scales[j]); s > amax {
				amax, maxScale = s, scales[j]
			}
		}
		sb := (*[12]byte)(b[96:])
		*sb = [12]byte{}
		if maxScale != 0 {
			iscale := -32 / maxScale
			for j := 0; j < 16; j++ {
				l := int8(nearestInt(iscale * scales[j]))
				l = int8(max(-32, min(31, int32(l))) + 32)
				if j < 8 {
					sb[j] = byte(l) & 15
				} else {
					sb[j-8] |= (byte(l) & 15) << 4
				}
				l >>= 4
				sb[j%4+8] |= byte(l) << (2 * (j / 4))
			}
			putF16(b[108:], 1/iscale)
		} else {
			putF16(b[108:], 0)
		}
		d0 := f16At(b[108:])
		for j := 0; j < 16; j++ {
			lo := sb[j%8] >> (4 * (j / 8)) & 15
			hi := sb[8+j%4] >> (2 * (j / 4)) & 3
			d := d0 * float32(int8(lo|hi<<4)-32)
			if d == 0 {
				continue
			}
			for ii := 0; ii < 16; ii++ {
				l := max(-4, min(3, nearestInt(xb[16*j+ii]/d)))
				L[16*j+ii] = int8(l + 4)
			}
		}
		hmask := (*[32]byte)(b[0:])
		*hmask = [32]byte{}
		var U [256]uint8
		for j, l := range L {
			if l > 3 {
				hmask[j%32] |= 1 << (j / 32)
				l -= 4
			}
			U[j] = uint8(l)
		}
		packK2Bits((*[64]byte)(b[32:]), &U)
	}
}
