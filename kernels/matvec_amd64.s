//go:build amd64 && !noasm

#include "textflag.h"

// Integer matrix-vector dots (matvec_q8.go): one quantized weight row
// against one activation row quantized to int8 blocks (q8Act), exact int32
// sums per block, one float32 scale per block. Reference: q8Act.rowDot's Go
// tails and the float64 loops of the tests.

// Index vectors for VPMOVZXBD (16 bytes each): spreading per-block scales
// over the int32 lanes that hold that block's partial sums.
DATA mvidx<>+0(SB)/8, $0x0000000000000000  // 0: [0×8 1×8]
DATA mvidx<>+8(SB)/8, $0x0101010101010101
DATA mvidx<>+16(SB)/8, $0x0202020202020202 // 16: [2×8 3×8]
DATA mvidx<>+24(SB)/8, $0x0303030303030303
DATA mvidx<>+32(SB)/8, $0x0101010100000000 // 32: [0×4 1×4 2×4 3×4]
DATA mvidx<>+40(SB)/8, $0x0303030302020202
DATA mvidx<>+48(SB)/8, $0x0000000000000000 // 48: [0×8 2×8]
DATA mvidx<>+56(SB)/8, $0x0202020202020202
DATA mvidx<>+64(SB)/8, $0x0101010101010101 // 64: [1×8 3×8]
DATA mvidx<>+72(SB)/8, $0x0303030303030303
DATA mvidx<>+80(SB)/8, $0x0404040404040404 // 80: [4×8 6×8]
DATA mvidx<>+88(SB)/8, $0x0606060606060606
DATA mvidx<>+96(SB)/8, $0x0505050505050505 // 96: [5×8 7×8]
DATA mvidx<>+104(SB)/8, $0x0707070707070707
DATA mvidx<>+112(SB)/8, $0x0505050504040404 // 112: [4×4 5×4 6×4 7×4]
DATA mvidx<>+120(SB)/8, $0x0707070706060606
DATA mvidx<>+128(SB)/8, $0x0909090908080808 // 128: [8×4 .. 11×4]
DATA mvidx<>+136(SB)/8, $0x0b0b0b0b0a0a0a0a
DATA mvidx<>+144(SB)/8, $0x0d0d0d0d0c0c0c0c // 144: [12×4 .. 15×4]
DATA mvidx<>+152(SB)/8, $0x0f0f0f0f0e0e0e0e
GLOBL mvidx<>(SB), RODATA|NOPTR, $160

// MVREDUCE sums the 16 lanes of Z0 into X0.
#define MVREDUCE \
	VEXTRACTF64X4 $1, Z0, Y1 \
	VADDPS Y1, Y0, Y0 \
	VEXTRACTF128 $1, Y0, X1 \
	VADDPS X1, X0, X0 \
	VPERMILPS $0x4e, X0, X1 \
	VADDPS X1, X0, X0 \
	VPERMILPS $0xb1, X0, X1 \
	VADDPS X1, X0, X0

// MVREDUCE8 sums the 8 lanes of Y0 into X0.
#define MVREDUCE8 \
	VEXTRACTF128 $1, Y0, X1 \
	VADDPS X1, X0, X0 \
	VPERMILPS $0x4e, X0, X1 \
	VADDPS X1, X0, X0 \
	VPERMILPS $0xb1, X0, X1 \
	VADDPS X1, X0, X0

// F16X4 loads the f16 at DI+0, a, b, c into the low 64 bits of X2 and
// converts them to 4 float32.
#define F16X4(a, b, c) \
	MOVWQZX 0(DI), AX \
	MOVWQZX a(DI), DX \
	SHLQ $16, DX \
	ORQ DX, AX \
	MOVWQZX b(DI), DX \
	SHLQ $32, DX \
	ORQ DX, AX \
	MOVWQZX c(DI), DX \
	SHLQ $48, DX \
	ORQ DX, AX \
	VMOVQ AX, X2 \
	VCVTPH2PS X2, X2

// func dotQ8_0VNNI(y *float32, w *byte, x *int8, corr *int32, dx *float32, nb, rows, skip int)
// y[r] = Σ over the nb Q8_0 blocks of row r (groups of 4, then one at a time) of float32(d_w·dx[b]) ·
// Σ_j (q[j]^0x80)·x[j] + corr: the weights biased to unsigned, corr holds
// −128·Σx at [8b].
TEXT ·dotQ8_0VNNI(SB), NOSPLIT, $0-64
	MOVQ y+0(FP), R11
	MOVQ w+8(FP), DI
	MOVQ rows+48(FP), R10
	MOVL $0x80808080, AX
	VPBROADCASTD AX, Z31
	VPMOVZXBD mvidx<>+0(SB), Z30
	VPMOVZXBD mvidx<>+16(SB), Z29
	TESTQ R10, R10
	JZ q8vend
q8vrow:
	MOVQ x+16(FP), SI
	MOVQ corr+24(FP), R8
	MOVQ dx+32(FP), R9
	MOVQ nb+40(FP), CX
	SHRQ $2, CX
	VPXORD Z0, Z0, Z0
	VPXORD Z1, Z1, Z1
	VPXORD Z3, Z3, Z3
	TESTQ CX, CX
	JZ q8vtail
q8vloop:
	F16X4(34, 68, 102)
	VMULPS (R9), X2, X2
	VMOVDQU 2(DI), Y4
	VINSERTI64X4 $1, 36(DI), Z4, Z4
	VMOVDQU 70(DI), Y5
	VINSERTI64X4 $1, 104(DI), Z5, Z5
	VPXORD Z31, Z4, Z4
	VPXORD Z31, Z5, Z5
	VMOVDQU32 (R8), Z6
	VMOVDQU32 64(R8), Z7
	VPDPBUSD (SI), Z4, Z6
	VPDPBUSD 64(SI), Z5, Z7
	VCVTDQ2PS Z6, Z6
	VCVTDQ2PS Z7, Z7
	VPERMPS Z2, Z30, Z8
	VPERMPS Z2, Z29, Z9
	VFMADD231PS Z8, Z6, Z0
	VFMADD231PS Z9, Z7, Z1
	ADDQ $136, DI
	ADDQ $128, SI
	ADDQ $128, R8
	ADDQ $16, R9
	DECQ CX
	JNZ q8vloop
q8vtail:
	MOVQ nb+40(FP), CX
	ANDQ $3, CX
	JZ q8vsum
q8vt1:
	MOVWLZX (DI), AX
	VMOVD AX, X2
	VCVTPH2PS X2, X2
	VMULSS (R9), X2, X2
	VBROADCASTSS X2, Y2
	VMOVDQU 2(DI), Y4
	VPXORD Y31, Y4, Y4
	VMOVDQU (R8), Y6
	VPDPBUSD (SI), Y4, Y6
	VCVTDQ2PS Y6, Y6
	VFMADD231PS Y2, Y6, Y3
	ADDQ $34, DI
	ADDQ $32, SI
	ADDQ $32, R8
	ADDQ $4, R9
	DECQ CX
	JNZ q8vt1
q8vsum:
	VADDPS Z1, Z0, Z0
	VADDPS Z3, Z0, Z0
	MVREDUCE
	VMOVSS X0, (R11)
	ADDQ $4, R11
	ADDQ skip+56(FP), DI
	DECQ R10
	JNZ q8vrow
q8vend:
	VZEROUPPER
	RET

// Q4_0 group of 4 blocks (72 bytes at DI) into accumulator acc: nibbles of
// the 4 blocks in the four 128-bit lanes, low nibbles against x[0:64], high
// against x[64:128], corr (−8·Σx at [4b]) as the initial value.
#define Q4VGROUP(acc) \
	F16X4(18, 36, 54) \
	VMULPS (R9), X2, X2 \
	VMOVDQU 2(DI), X4 \
	VINSERTI32X4 $1, 20(DI), Z4, Z4 \
	VINSERTI32X4 $2, 38(DI), Z4, Z4 \
	VINSERTI32X4 $3, 56(DI), Z4, Z4 \
	VPSRLW $4, Z4, Z5 \
	VPANDD Z31, Z4, Z4 \
	VPANDD Z31, Z5, Z5 \
	VMOVDQU32 (R8), Z6 \
	VPDPBUSD (SI), Z4, Z6 \
	VPDPBUSD 64(SI), Z5, Z6 \
	VCVTDQ2PS Z6, Z6 \
	VPERMPS Z2, Z30, Z8 \
	VFMADD231PS Z8, Z6, acc \
	ADDQ $72, DI \
	ADDQ $128, SI \
	ADDQ $64, R8 \
	ADDQ $16, R9

// func dotQ4_0VNNI(y *float32, w *byte, x *int8, corr *int32, dx *float32, nb, rows, skip int)
// y[r] = Σ over the nb Q4_0 blocks of row r (groups of 4, then one at a time) of float32(d_w·dx[b]) ·
// (Σ_j q[j]·x[j] − 8·Σ_j x[j]), x in q8Act's Q4_0 group order.
TEXT ·dotQ4_0VNNI(SB), NOSPLIT, $0-64
	MOVQ y+0(FP), R11
	MOVQ w+8(FP), DI
	MOVQ rows+48(FP), R10
	MOVL $0x0f0f0f0f, AX
	VPBROADCASTD AX, Z31
	VPMOVZXBD mvidx<>+32(SB), Z30
	TESTQ R10, R10
	JZ q4vend
q4vrow:
	MOVQ x+16(FP), SI
	MOVQ corr+24(FP), R8
	MOVQ dx+32(FP), R9
	MOVQ nb+40(FP), CX
	SHRQ $2, CX
	VPXORD Z0, Z0, Z0
	VPXORD Z1, Z1, Z1
	VPXORD Z3, Z3, Z3
	MOVQ CX, R12
	SHRQ $1, R12
	JZ q4vone
q4vloop:
	Q4VGROUP(Z0)
	Q4VGROUP(Z1)
	DECQ R12
	JNZ q4vloop
q4vone:
	TESTQ $1, CX
	JZ q4vdone
	Q4VGROUP(Z0)
q4vdone:
	MOVQ nb+40(FP), CX
	ANDQ $3, CX
	JZ q4vsum
q4vt1:
	MOVWLZX (DI), AX
	VMOVD AX, X2
	VCVTPH2PS X2, X2
	VMULSS (R9), X2, X2
	VBROADCASTSS X2, X2
	VMOVDQU 2(DI), X4
	VPSRLW $4, X4, X5
	VPANDD X31, X4, X4
	VPANDD X31, X5, X5
	VMOVDQU (R8), X6
	VPDPBUSD (SI), X4, X6
	VPDPBUSD 16(SI), X5, X6
	VCVTDQ2PS X6, X6
	VFMADD231PS X2, X6, X3
	ADDQ $18, DI
	ADDQ $32, SI
	ADDQ $16, R8
	ADDQ $4, R9
	DECQ CX
	JNZ q4vt1
q4vsum:
	VADDPS Z1, Z0, Z0
	VADDPS Z3, Z0, Z0
	MVREDUCE
	VMOVSS X0, (R11)
	ADDQ $4, R11
	ADDQ skip+56(FP), DI
	DECQ R10
	JNZ q4vrow
q4vend:
	VZEROUPPER
	RET

// func dotNF4VNNI(y *float32, q, codes *byte, x *int8, corr *int32, dx *float32, nb, rows int, c2, mu float32, tab *byte)
// y[r] = Σ over the nb NF4 blocks of row r (nb even, all rows in one
// double-quantization group) of
// float32(s_b·dx[b]) · Σ_j tab[q_j]·x[j] + corr, where tab is the int8 code
// book biased by 128 (corr = −128·Σx at [8b]) and s_b = max(float32(
// float32(float32(codes[b])/127)·c2) + mu, +0) as quant decodes it. Blocks
// go in pairs (64 nibble bytes, x in q8Act's NF4 pair order); the scales
// of 16 blocks at a time are computed in one vector.
TEXT ·dotNF4VNNI(SB), NOSPLIT, $0-80
	MOVQ y+0(FP), R12
	MOVQ q+8(FP), DI
	MOVQ codes+16(FP), R10
	MOVQ rows+56(FP), R11
	VBROADCASTSS c2+64(FP), Z26
	VBROADCASTSS mu+68(FP), Z25
	MOVQ tab+72(FP), AX
	VBROADCASTI32X4 (AX), Z28
	MOVL $0x42fe0000, AX // 127.0
	VPBROADCASTD AX, Z27
	VPXORD Z24, Z24, Z24
	MOVL $0x0f0f0f0f, AX
	VPBROADCASTD AX, Z31
	MOVL $2, AX
	VPBROADCASTD AX, Z23
	TESTQ R11, R11
	JZ nf4vend
nf4vrow:
	MOVQ x+24(FP), SI
	MOVQ corr+32(FP), R8
	MOVQ dx+40(FP), R9
	MOVQ nb+48(FP), R13
	VPXORD Z0, Z0, Z0
nf4vchunk:
	MOVQ R13, BX
	CMPQ BX, $16
	JLE nf4vmask
	MOVQ $16, BX
nf4vmask:
	MOVQ BX, CX
	MOVL $1, AX
	SHLL CL, AX
	DECL AX
	KMOVW AX, K1
	VPMOVSXBD.Z (R10), K1, Z10
	VCVTDQ2PS Z10, Z10
	VDIVPS Z27, Z10, Z10
	VMULPS Z26, Z10, Z10
	VADDPS Z25, Z10, Z10
	VMAXPS Z24, Z10, Z10
	VMOVUPS.Z (R9), K1, Z11
	VMULPS Z11, Z10, Z10
	VPMOVZXBD mvidx<>+0(SB), Z22
	SUBQ BX, R13
	ADDQ BX, R10
	LEAQ (R9)(BX*4), R9
	SHRQ $1, BX
nf4vpair:
	VMOVDQU64 (DI), Z4
	VPSRLW $4, Z4, Z5
	VPANDD Z31, Z4, Z4
	VPANDD Z31, Z5, Z5
	VPSHUFB Z4, Z28, Z4
	VPSHUFB Z5, Z28, Z5
	VMOVDQU32 (R8), Z6
	VPDPBUSD (SI), Z4, Z6
	VPDPBUSD 64(SI), Z5, Z6
	VCVTDQ2PS Z6, Z6
	VPERMPS Z10, Z22, Z7
	VPADDD Z23, Z22, Z22
	VFMADD231PS Z7, Z6, Z0
	ADDQ $64, DI
	ADDQ $128, SI
	ADDQ $64, R8
	DECQ BX
	JNZ nf4vpair
	TESTQ R13, R13
	JNZ nf4vchunk
	MVREDUCE
	VMOVSS X0, (R12)
	ADDQ $4, R12
	DECQ R11
	JNZ nf4vrow
nf4vend:
	VZEROUPPER
	RET

// Q4_K: 64 bytes of nibbles (two 32-byte groups) into the int32
// accumulators lo (sub-blocks 2g, 2g+2) and hi (2g+1, 2g+3). Two 32-byte
// loads: at the 144-byte stride a 64-byte load splits a cache line 3 times
// in 4, which costs 20-30% when streaming from memory.
#define Q4KVHALF(off, xoff, lo, hi) \
	VMOVDQU off(DI), Y7 \
	VINSERTI64X4 $1, off+32(DI), Z7, Z7 \
	VPSRLW $4, Z7, Z8 \
	VPANDD Z31, Z7, Z7 \
	VPANDD Z31, Z8, Z8 \
	VPXORD lo, lo, lo \
	VPXORD hi, hi, hi \
	VPDPBUSD xoff(SI), Z7, lo \
	VPDPBUSD xoff+64(SI), Z8, hi

// func dotQ4KVNNI(y *float32, w *byte, x *int8, dx, fsum *float32, nsb, rows int)
// y[r] = Σ over the nsb Q4_K super-blocks of row r of Σ_j float32(float32(d·sc_j)·dx_j)·Σ q·x
// − Σ_j float32(dmin·m_j)·fsum_j, the 6-bit scales and mins unpacked here,
// x in q8Act's Q4_K sub-block order (0,2,1,3,4,6,5,7).
TEXT ·dotQ4KVNNI(SB), NOSPLIT, $0-56
	MOVQ y+0(FP), R8
	MOVQ w+8(FP), DI
	MOVL $0x0f0f0f0f, AX
	VPBROADCASTD AX, Z31
	VPMOVZXBD mvidx<>+48(SB), Z20
	VPMOVZXBD mvidx<>+64(SB), Z21
	VPMOVZXBD mvidx<>+80(SB), Z22
	VPMOVZXBD mvidx<>+96(SB), Z23
	CMPQ rows+48(FP), $0
	JEQ q4kvend
q4kvrow:
	MOVQ x+16(FP), SI
	MOVQ dx+24(FP), R9
	MOVQ fsum+32(FP), R10
	MOVQ nsb+40(FP), CX
	VPXORD Z0, Z0, Z0
	VPXORD Z1, Z1, Z1
	VPXORD Z15, Z15, Z15
q4kvloop:
	MOVL 0(DI), AX
	VMOVD AX, X2
	VCVTPH2PS X2, X2
	VBROADCASTSS X2, Y3
	VMOVSHDUP X2, X4
	VBROADCASTSS X4, Y4
	MOVL 4(DI), AX
	MOVL 8(DI), BX
	MOVL 12(DI), DX
	MOVL AX, R11
	ANDL $0x3f3f3f3f, R11
	MOVL BX, R12
	ANDL $0x3f3f3f3f, R12
	MOVL DX, R13
	ANDL $0x0f0f0f0f, R13
	SHRL $6, AX
	ANDL $0x03030303, AX
	SHLL $4, AX
	ORL AX, R13
	SHRL $4, DX
	ANDL $0x0f0f0f0f, DX
	SHRL $6, BX
	ANDL $0x03030303, BX
	SHLL $4, BX
	ORL BX, DX
	SHLQ $32, R13
	ORQ R13, R11
	SHLQ $32, DX
	ORQ DX, R12
	VMOVQ R11, X5
	VPMOVZXBD X5, Y5
	VCVTDQ2PS Y5, Y5
	VMULPS Y3, Y5, Y5
	VMULPS (R9), Y5, Y5
	VMOVQ R12, X6
	VPMOVZXBD X6, Y6
	VCVTDQ2PS Y6, Y6
	VMULPS Y4, Y6, Y6
	VFMADD231PS (R10), Y6, Y1
	Q4KVHALF(16, 0, Z9, Z10)
	Q4KVHALF(80, 128, Z12, Z13)
	VCVTDQ2PS Z9, Z9
	VCVTDQ2PS Z10, Z10
	VCVTDQ2PS Z12, Z12
	VCVTDQ2PS Z13, Z13
	VPERMPS Z5, Z20, Z14
	VFMADD231PS Z14, Z9, Z0
	VPERMPS Z5, Z21, Z14
	VFMADD231PS Z14, Z10, Z15
	VPERMPS Z5, Z22, Z14
	VFMADD231PS Z14, Z12, Z0
	VPERMPS Z5, Z23, Z14
	VFMADD231PS Z14, Z13, Z15
	ADDQ $144, DI
	ADDQ $256, SI
	ADDQ $32, R9
	ADDQ $32, R10
	DECQ CX
	JNZ q4kvloop
	VADDPS Z15, Z0, Z0
	VMOVAPS Y1, Y9
	MVREDUCE
	VMOVAPS X0, X10
	VMOVAPS Y9, Y0
	MVREDUCE8
	VSUBSS X0, X10, X0
	VMOVSS X0, (R8)
	ADDQ $4, R8
	DECQ rows+48(FP)
	JNZ q4kvrow
q4kvend:
	VZEROUPPER
	RET

// Q6_K: half of a super-block (128 values: 64 ql bytes at R11, 32 qh at
// R12) into the float accumulator, x natural at SI, corr (−32·Σx per 16 at
// [4i]) at R8, per-16 factors in Z10 spread with ia (low nibbles) and ib
// (high nibbles).
#define Q6KVHALF(ia, ib) \
	VMOVDQU (R12), Y6 \
	VPSRLW $2, Y6, Y7 \
	VINSERTI64X4 $1, Y7, Z6, Z6 \
	VMOVDQU64 (R11), Z4 \
	VPSRLW $4, Z4, Z5 \
	VPANDD Z31, Z4, Z4 \
	VPANDD Z31, Z5, Z5 \
	VPSLLW $4, Z6, Z7 \
	VPTERNLOGD $0xf8, Z30, Z7, Z4 \
	VPTERNLOGD $0xf8, Z30, Z6, Z5 \
	VMOVDQU32 (R8), Z8 \
	VMOVDQU32 64(R8), Z9 \
	VPDPBUSD (SI), Z4, Z8 \
	VPDPBUSD 64(SI), Z5, Z9 \
	VCVTDQ2PS Z8, Z8 \
	VCVTDQ2PS Z9, Z9 \
	VPERMPS Z10, ia, Z11 \
	VFMADD231PS Z11, Z8, Z0 \
	VPERMPS Z10, ib, Z11 \
	VFMADD231PS Z11, Z9, Z1

// func dotQ6KVNNI(y *float32, w *byte, x *int8, corr *int32, dx *float32, nsb, rows int)
// y[r] = Σ over the nsb Q6_K super-blocks of row r of Σ_i float32(float32(d·sc_i)·dx_i) ·
// (Σ q·x − 32·Σ x) per 16 values i, q the 6-bit codes, x natural, dx one
// per 16 values.
TEXT ·dotQ6KVNNI(SB), NOSPLIT, $0-56
	MOVQ y+0(FP), R13
	MOVQ w+8(FP), DI
	MOVQ rows+48(FP), R10
	MOVL $0x0f0f0f0f, AX
	VPBROADCASTD AX, Z31
	MOVL $0x30303030, AX
	VPBROADCASTD AX, Z30
	VPMOVZXBD mvidx<>+32(SB), Z20
	VPMOVZXBD mvidx<>+112(SB), Z21
	VPMOVZXBD mvidx<>+128(SB), Z22
	VPMOVZXBD mvidx<>+144(SB), Z23
	TESTQ R10, R10
	JZ q6kvend
q6kvrow:
	MOVQ x+16(FP), SI
	MOVQ corr+24(FP), R8
	MOVQ dx+32(FP), R9
	MOVQ nsb+40(FP), CX
	VPXORD Z0, Z0, Z0
	VPXORD Z1, Z1, Z1
q6kvloop:
	MOVWLZX 208(DI), AX
	VMOVD AX, X2
	VCVTPH2PS X2, X2
	VBROADCASTSS X2, Z2
	VPMOVSXBD 192(DI), Z10
	VCVTDQ2PS Z10, Z10
	VMULPS Z2, Z10, Z10
	VMULPS (R9), Z10, Z10
	MOVQ DI, R11
	LEAQ 128(DI), R12
	Q6KVHALF(Z20, Z21)
	ADDQ $64, R11
	ADDQ $32, R12
	ADDQ $128, SI
	ADDQ $128, R8
	Q6KVHALF(Z22, Z23)
	ADDQ $210, DI
	ADDQ $128, SI
	ADDQ $128, R8
	ADDQ $64, R9
	DECQ CX
	JNZ q6kvloop
	VADDPS Z1, Z0, Z0
	MVREDUCE
	VMOVSS X0, (R13)
	ADDQ $4, R13
	DECQ R10
	JNZ q6kvrow
q6kvend:
	VZEROUPPER
	RET

// AVX2 variants: VPMADDUBSW (u8×s8 → s16 pairs) + VPMADDWD by ones (→ s32).
// Q8_0 and NF4 use the sign trick (|w| unsigned, x with w's sign) since a
// +128 bias would saturate the 16-bit pair sums; corr is then unused.

// func dotQ8_0AVX2(y *float32, w *byte, x *int8, corr *int32, dx *float32, nb, rows, skip int)
TEXT ·dotQ8_0AVX2(SB), NOSPLIT, $0-64
	MOVQ y+0(FP), R11
	MOVQ w+8(FP), DI
	MOVQ rows+48(FP), R10
	MOVL $0x00010001, AX
	VMOVD AX, X11
	VPBROADCASTD X11, Y11
	VPMOVZXBD mvidx<>+0(SB), Y12
	VPMOVZXBD mvidx<>+8(SB), Y13
	VPMOVZXBD mvidx<>+16(SB), Y14
	VPMOVZXBD mvidx<>+24(SB), Y15
	TESTQ R10, R10
	JZ q8aend
q8arow:
	MOVQ x+16(FP), SI
	MOVQ dx+32(FP), R9
	MOVQ nb+40(FP), CX
	SHRQ $2, CX
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y3, Y3, Y3
	TESTQ CX, CX
	JZ q8atail
q8aloop:
	F16X4(34, 68, 102)
	VMULPS (R9), X2, X2
	VMOVDQU 2(DI), Y4
	VPABSB Y4, Y5
	VMOVDQU (SI), Y7
	VPSIGNB Y4, Y7, Y7
	VPMADDUBSW Y7, Y5, Y6
	VPMADDWD Y11, Y6, Y6
	VCVTDQ2PS Y6, Y6
	VPERMPS Y2, Y12, Y8
	VFMADD231PS Y8, Y6, Y0
	VMOVDQU 36(DI), Y4
	VPABSB Y4, Y5
	VMOVDQU 32(SI), Y7
	VPSIGNB Y4, Y7, Y7
	VPMADDUBSW Y7, Y5, Y6
	VPMADDWD Y11, Y6, Y6
	VCVTDQ2PS Y6, Y6
	VPERMPS Y2, Y13, Y8
	VFMADD231PS Y8, Y6, Y1
	VMOVDQU 70(DI), Y4
	VPABSB Y4, Y5
	VMOVDQU 64(SI), Y7
	VPSIGNB Y4, Y7, Y7
	VPMADDUBSW Y7, Y5, Y6
	VPMADDWD Y11, Y6, Y6
	VCVTDQ2PS Y6, Y6
	VPERMPS Y2, Y14, Y8
	VFMADD231PS Y8, Y6, Y0
	VMOVDQU 104(DI), Y4
	VPABSB Y4, Y5
	VMOVDQU 96(SI), Y7
	VPSIGNB Y4, Y7, Y7
	VPMADDUBSW Y7, Y5, Y6
	VPMADDWD Y11, Y6, Y6
	VCVTDQ2PS Y6, Y6
	VPERMPS Y2, Y15, Y8
	VFMADD231PS Y8, Y6, Y1
	ADDQ $136, DI
	ADDQ $128, SI
	ADDQ $16, R9
	DECQ CX
	JNZ q8aloop
q8atail:
	MOVQ nb+40(FP), CX
	ANDQ $3, CX
	JZ q8asum
q8at1:
	MOVWLZX (DI), AX
	VMOVD AX, X2
	VCVTPH2PS X2, X2
	VMULSS (R9), X2, X2
	VBROADCASTSS X2, Y2
	VMOVDQU 2(DI), Y4
	VPABSB Y4, Y5
	VMOVDQU (SI), Y7
	VPSIGNB Y4, Y7, Y7
	VPMADDUBSW Y7, Y5, Y6
	VPMADDWD Y11, Y6, Y6
	VCVTDQ2PS Y6, Y6
	VFMADD231PS Y2, Y6, Y3
	ADDQ $34, DI
	ADDQ $32, SI
	ADDQ $4, R9
	DECQ CX
	JNZ q8at1
q8asum:
	VADDPS Y1, Y0, Y0
	VADDPS Y3, Y0, Y0
	MVREDUCE8
	VMOVSS X0, (R11)
	ADDQ $4, R11
	ADDQ skip+56(FP), DI
	DECQ R10
	JNZ q8arow
q8aend:
	VZEROUPPER
	RET

// Q4_0 AVX2: blocks a, a+1 of a group (nibbles at o1, o2), x low halves
// at xo(SI), high at xo+64(SI), corr at xo/4... (co), scales spread by idx.
#define Q4APAIR(o1, o2, xo, co, idx, acc) \
	VMOVDQU o1(DI), X4 \
	VINSERTI128 $1, o2(DI), Y4, Y4 \
	VPSRLW $4, Y4, Y5 \
	VPAND Y15, Y4, Y4 \
	VPAND Y15, Y5, Y5 \
	VPMADDUBSW xo(SI), Y4, Y6 \
	VPMADDUBSW xo+64(SI), Y5, Y7 \
	VPADDW Y7, Y6, Y6 \
	VPMADDWD Y14, Y6, Y6 \
	VPADDD co(R8), Y6, Y6 \
	VCVTDQ2PS Y6, Y6 \
	VPERMPS Y2, idx, Y8 \
	VFMADD231PS Y8, Y6, acc

// func dotQ4_0AVX2(y *float32, w *byte, x *int8, corr *int32, dx *float32, nb, rows, skip int)
TEXT ·dotQ4_0AVX2(SB), NOSPLIT, $0-64
	MOVQ y+0(FP), R11
	MOVQ w+8(FP), DI
	MOVQ rows+48(FP), R10
	MOVL $0x0f0f0f0f, AX
	VMOVD AX, X15
	VPBROADCASTD X15, Y15
	MOVL $0x00010001, AX
	VMOVD AX, X14
	VPBROADCASTD X14, Y14
	VPMOVZXBD mvidx<>+32(SB), Y12
	VPMOVZXBD mvidx<>+40(SB), Y13
	TESTQ R10, R10
	JZ q4aend
q4arow:
	MOVQ x+16(FP), SI
	MOVQ corr+24(FP), R8
	MOVQ dx+32(FP), R9
	MOVQ nb+40(FP), CX
	SHRQ $2, CX
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y3, Y3, Y3
	TESTQ CX, CX
	JZ q4atail
q4aloop:
	F16X4(18, 36, 54)
	VMULPS (R9), X2, X2
	Q4APAIR(2, 20, 0, 0, Y12, Y0)
	Q4APAIR(38, 56, 32, 32, Y13, Y1)
	ADDQ $72, DI
	ADDQ $128, SI
	ADDQ $64, R8
	ADDQ $16, R9
	DECQ CX
	JNZ q4aloop
q4atail:
	MOVQ nb+40(FP), CX
	ANDQ $3, CX
	JZ q4asum
q4at1:
	MOVWLZX (DI), AX
	VMOVD AX, X2
	VCVTPH2PS X2, X2
	VMULSS (R9), X2, X2
	VBROADCASTSS X2, X2
	VMOVDQU 2(DI), X4
	VPSRLW $4, X4, X5
	VPAND X15, X4, X4
	VPAND X15, X5, X5
	VPMADDUBSW (SI), X4, X6
	VPMADDUBSW 16(SI), X5, X7
	VPADDW X7, X6, X6
	VPMADDWD X14, X6, X6
	VPADDD (R8), X6, X6
	VCVTDQ2PS X6, X6
	VFMADD231PS X2, X6, X3
	ADDQ $18, DI
	ADDQ $32, SI
	ADDQ $16, R8
	ADDQ $4, R9
	DECQ CX
	JNZ q4at1
q4asum:
	VADDPS Y1, Y0, Y0
	VADDPS Y3, Y0, Y0
	MVREDUCE8
	VMOVSS X0, (R11)
	ADDQ $4, R11
	ADDQ skip+56(FP), DI
	DECQ R10
	JNZ q4arow
q4aend:
	VZEROUPPER
	RET

// NF4 AVX2: one block (32 nibble bytes at off(DI)), x low values at xl(SI),
// high at xh(SI), signed code book in Y14, its scale spread by Y12.
#define NF4ABLOCK(off, xl, xh) \
	VMOVDQU off(DI), Y4 \
	VPSRLW $4, Y4, Y5 \
	VPAND Y15, Y4, Y4 \
	VPAND Y15, Y5, Y5 \
	VPSHUFB Y4, Y14, Y4 \
	VPSHUFB Y5, Y14, Y5 \
	VPABSB Y4, Y6 \
	VMOVDQU xl(SI), Y7 \
	VPSIGNB Y4, Y7, Y7 \
	VPMADDUBSW Y7, Y6, Y6 \
	VPABSB Y5, Y8 \
	VMOVDQU xh(SI), Y9 \
	VPSIGNB Y5, Y9, Y9 \
	VPMADDUBSW Y9, Y8, Y8 \
	VPMADDWD Y13, Y6, Y6 \
	VPMADDWD Y13, Y8, Y8 \
	VPADDD Y8, Y6, Y6 \
	VCVTDQ2PS Y6, Y6 \
	VPERMPS Y10, Y12, Y7 \
	VPADDD Y11, Y12, Y12 \
	VFMADD231PS Y7, Y6, Y0

// func dotNF4AVX2(y *float32, q, codes *byte, x *int8, corr *int32, dx *float32, nb, rows int, c2, mu float32, tab *byte)
// As dotNF4VNNI with the signed code book; the scales of 8 blocks at a
// time (reads up to 7 codes past the last, inside the tensor's c2 and μ,
// and dx up to 7 past, inside q8Act's padding).
TEXT ·dotNF4AVX2(SB), NOSPLIT, $0-80
	MOVQ y+0(FP), R12
	MOVQ q+8(FP), DI
	MOVQ codes+16(FP), R10
	MOVQ rows+56(FP), R11
	MOVQ tab+72(FP), AX
	VBROADCASTI128 (AX), Y14
	MOVL $0x0f0f0f0f, AX
	VMOVD AX, X15
	VPBROADCASTD X15, Y15
	MOVL $0x00010001, AX
	VMOVD AX, X13
	VPBROADCASTD X13, Y13
	MOVL $1, AX
	VMOVD AX, X11
	VPBROADCASTD X11, Y11
	TESTQ R11, R11
	JZ nf4aend
nf4arow:
	MOVQ x+24(FP), SI
	MOVQ dx+40(FP), R9
	MOVQ nb+48(FP), R13
	VXORPS Y0, Y0, Y0
nf4achunk:
	MOVQ R13, BX
	CMPQ BX, $8
	JLE nf4aok
	MOVQ $8, BX
nf4aok:
	VPMOVSXBD (R10), Y10
	VCVTDQ2PS Y10, Y10
	MOVL $0x42fe0000, AX // 127.0
	VMOVD AX, X3
	VBROADCASTSS X3, Y3
	VDIVPS Y3, Y10, Y10
	VBROADCASTSS c2+64(FP), Y3
	VMULPS Y3, Y10, Y10
	VBROADCASTSS mu+68(FP), Y3
	VADDPS Y3, Y10, Y10
	VXORPS Y3, Y3, Y3
	VMAXPS Y3, Y10, Y10
	VMULPS (R9), Y10, Y10
	VPXOR Y12, Y12, Y12
	SUBQ BX, R13
	ADDQ BX, R10
	LEAQ (R9)(BX*4), R9
	SHRQ $1, BX
nf4apair:
	NF4ABLOCK(0, 0, 64)
	NF4ABLOCK(32, 32, 96)
	ADDQ $64, DI
	ADDQ $128, SI
	DECQ BX
	JNZ nf4apair
	TESTQ R13, R13
	JNZ nf4achunk
	MVREDUCE8
	VMOVSS X0, (R12)
	ADDQ $4, R12
	DECQ R11
	JNZ nf4arow
nf4aend:
	VZEROUPPER
	RET

// Q4_K AVX2: 32-byte group g of nibbles at off(DI): low nibbles are
// sub-block 2g (x at xl), high 2g+1 (x at xh); factors in Y5 spread by Y12
// (incremented per sub-block).
#define Q4KAGROUP(off, xl, xh) \
	VMOVDQU off(DI), Y7 \
	VPSRLW $4, Y7, Y8 \
	VPAND Y15, Y7, Y7 \
	VPAND Y15, Y8, Y8 \
	VPMADDUBSW xl(SI), Y7, Y7 \
	VPMADDUBSW xh(SI), Y8, Y8 \
	VPMADDWD Y14, Y7, Y7 \
	VPMADDWD Y14, Y8, Y8 \
	VCVTDQ2PS Y7, Y7 \
	VCVTDQ2PS Y8, Y8 \
	VPERMPS Y5, Y12, Y9 \
	VPADDD Y11, Y12, Y12 \
	VFMADD231PS Y9, Y7, Y0 \
	VPERMPS Y5, Y12, Y9 \
	VPADDD Y11, Y12, Y12 \
	VFMADD231PS Y9, Y8, Y2

// func dotQ4KAVX2(y *float32, w *byte, x *int8, dx, fsum *float32, nsb, rows int)
TEXT ·dotQ4KAVX2(SB), NOSPLIT, $0-56
	MOVQ y+0(FP), R8
	MOVQ w+8(FP), DI
	MOVL $0x0f0f0f0f, AX
	VMOVD AX, X15
	VPBROADCASTD X15, Y15
	MOVL $0x00010001, AX
	VMOVD AX, X14
	VPBROADCASTD X14, Y14
	MOVL $1, AX
	VMOVD AX, X11
	VPBROADCASTD X11, Y11
	CMPQ rows+48(FP), $0
	JEQ q4kaend
q4karow:
	MOVQ x+16(FP), SI
	MOVQ dx+24(FP), R9
	MOVQ fsum+32(FP), R10
	MOVQ nsb+40(FP), CX
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
q4kaloop:
	MOVL 0(DI), AX
	VMOVD AX, X6
	VCVTPH2PS X6, X6
	VBROADCASTSS X6, Y3
	VMOVSHDUP X6, X4
	VBROADCASTSS X4, Y4
	MOVL 4(DI), AX
	MOVL 8(DI), BX
	MOVL 12(DI), DX
	MOVL AX, R11
	ANDL $0x3f3f3f3f, R11
	MOVL BX, R12
	ANDL $0x3f3f3f3f, R12
	MOVL DX, R13
	ANDL $0x0f0f0f0f, R13
	SHRL $6, AX
	ANDL $0x03030303, AX
	SHLL $4, AX
	ORL AX, R13
	SHRL $4, DX
	ANDL $0x0f0f0f0f, DX
	SHRL $6, BX
	ANDL $0x03030303, BX
	SHLL $4, BX
	ORL BX, DX
	SHLQ $32, R13
	ORQ R13, R11
	SHLQ $32, DX
	ORQ DX, R12
	VMOVQ R11, X5
	VPMOVZXBD X5, Y5
	VCVTDQ2PS Y5, Y5
	VMULPS Y3, Y5, Y5
	VMULPS (R9), Y5, Y5
	VMOVQ R12, X6
	VPMOVZXBD X6, Y6
	VCVTDQ2PS Y6, Y6
	VMULPS Y4, Y6, Y6
	VFMADD231PS (R10), Y6, Y1
	VPXOR Y12, Y12, Y12
	Q4KAGROUP(16, 0, 64)
	Q4KAGROUP(48, 32, 96)
	Q4KAGROUP(80, 128, 192)
	Q4KAGROUP(112, 160, 224)
	ADDQ $144, DI
	ADDQ $256, SI
	ADDQ $32, R9
	ADDQ $32, R10
	DECQ CX
	JNZ q4kaloop
	VADDPS Y2, Y0, Y0
	VMOVAPS Y1, Y9
	MVREDUCE8
	VMOVAPS X0, X10
	VMOVAPS Y9, Y0
	MVREDUCE8
	VSUBSS X0, X10, X0
	VMOVSS X0, (R8)
	ADDQ $4, R8
	DECQ rows+48(FP)
	JNZ q4karow
q4kaend:
	VZEROUPPER
	RET

// Q6_K AVX2: 32 values from ql (low or high nibbles in Y4) and qh bits (in
// Y5, already shifted to bits 4-5), x at xo(SI), corr at xo(R8) (4 bytes
// of corr per value... one int32 per 4 values), factors Y2 spread by idx.
#define Q6AQUARTER(xo, co, idx, acc) \
	VPAND Y14, Y5, Y5 \
	VPOR Y5, Y4, Y4 \
	VPMADDUBSW xo(SI), Y4, Y4 \
	VPMADDWD Y13, Y4, Y4 \
	VPADDD co(R8), Y4, Y4 \
	VCVTDQ2PS Y4, Y4 \
	VPERMPS Y2, idx, Y6 \
	VFMADD231PS Y6, Y4, acc

// Q6_K AVX2 half super-block: ql at R11 (64 bytes), qh at R12 (32), the
// 8 factors of this half in Y2.
#define Q6AHALF \
	VMOVDQU (R12), Y3 \
	VMOVDQU (R11), Y7 \
	VMOVDQU 32(R11), Y8 \
	VPAND Y15, Y7, Y4 \
	VPSLLW $4, Y3, Y5 \
	Q6AQUARTER(0, 0, Y9, Y0) \
	VPAND Y15, Y8, Y4 \
	VPSLLW $2, Y3, Y5 \
	Q6AQUARTER(32, 32, Y10, Y1) \
	VPSRLW $4, Y7, Y4 \
	VPAND Y15, Y4, Y4 \
	VMOVDQA Y3, Y5 \
	Q6AQUARTER(64, 64, Y11, Y0) \
	VPSRLW $4, Y8, Y4 \
	VPAND Y15, Y4, Y4 \
	VPSRLW $2, Y3, Y5 \
	Q6AQUARTER(96, 96, Y12, Y1)

// func dotQ6KAVX2(y *float32, w *byte, x *int8, corr *int32, dx *float32, nsb, rows int)
TEXT ·dotQ6KAVX2(SB), NOSPLIT, $32-56
	MOVQ y+0(FP), R13
	MOVQ w+8(FP), DI
	MOVQ rows+48(FP), R10
	MOVL $0x0f0f0f0f, AX
	VMOVD AX, X15
	VPBROADCASTD X15, Y15
	MOVL $0x30303030, AX
	VMOVD AX, X14
	VPBROADCASTD X14, Y14
	MOVL $0x00010001, AX
	VMOVD AX, X13
	VPBROADCASTD X13, Y13
	VPMOVZXBD mvidx<>+32(SB), Y9
	VPMOVZXBD mvidx<>+40(SB), Y10
	VPMOVZXBD mvidx<>+112(SB), Y11
	VPMOVZXBD mvidx<>+120(SB), Y12
	TESTQ R10, R10
	JZ q6kaend
q6karow:
	MOVQ x+16(FP), SI
	MOVQ corr+24(FP), R8
	MOVQ dx+32(FP), R9
	MOVQ nsb+40(FP), CX
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
q6kaloop:
	MOVQ DI, R11
	LEAQ 128(DI), R12
	MOVWLZX 208(DI), AX
	VMOVD AX, X2
	VCVTPH2PS X2, X2
	VBROADCASTSS X2, Y2
	VPMOVSXBD 192(DI), Y3
	VCVTDQ2PS Y3, Y3
	VMULPS Y2, Y3, Y3
	VMULPS (R9), Y3, Y3
	VPMOVSXBD 200(DI), Y4
	VCVTDQ2PS Y4, Y4
	VMULPS Y2, Y4, Y4
	VMULPS 32(R9), Y4, Y4
	VMOVUPS Y4, Y7
	VMOVUPS Y3, Y2
	VMOVUPS Y7, hi-32(SP)
	Q6AHALF
	VMOVUPS hi-32(SP), Y2
	ADDQ $64, R11
	ADDQ $32, R12
	ADDQ $128, SI
	ADDQ $128, R8
	Q6AHALF
	ADDQ $210, DI
	ADDQ $128, SI
	ADDQ $128, R8
	ADDQ $64, R9
	DECQ CX
	JNZ q6kaloop
	VADDPS Y1, Y0, Y0
	MVREDUCE8
	VMOVSS X0, (R13)
	ADDQ $4, R13
	DECQ R10
	JNZ q6karow
q6kaend:
	VZEROUPPER
	RET

// func quantQ8AVX2(x *float32, q *int8, d, fsum *float32, isum *int32, nb, bs32 int)
// Quantizes nb blocks of 32·g values (bs32 = g = 1 or 2) of x: per block the
// absolute maximum a, d[b] = a/127, q = round-to-nearest-even(x·(127/a))
// (0 when a = 0) in natural order, isum[b] = Σ q and fsum[b] = Σ x (float32,
// in a fixed order).
TEXT ·quantQ8AVX2(SB), NOSPLIT, $0-56
	MOVQ x+0(FP), SI
	MOVQ q+8(FP), DI
	MOVQ d+16(FP), R8
	MOVQ fsum+24(FP), R9
	MOVQ isum+32(FP), R10
	MOVQ nb+40(FP), CX
	MOVQ bs32+48(FP), DX
	MOVL $0x7fffffff, AX
	VMOVD AX, X15
	VPBROADCASTD X15, Y15
	MOVL $0x42fe0000, AX // 127.0
	VMOVD AX, X14
	VPMOVZXBD qperm<>(SB), Y13
	TESTQ CX, CX
	JZ qdone
qblock:
	// absolute maximum over 32·g values into X4, float sum into X5
	VXORPS Y4, Y4, Y4
	VXORPS Y5, Y5, Y5
	MOVQ SI, R11
	MOVQ DX, BX
qamax:
	VMOVUPS (R11), Y0
	VMOVUPS 32(R11), Y1
	VMOVUPS 64(R11), Y2
	VMOVUPS 96(R11), Y3
	VADDPS Y1, Y0, Y6
	VADDPS Y3, Y2, Y7
	VADDPS Y7, Y6, Y6
	VADDPS Y6, Y5, Y5
	VANDPS Y15, Y0, Y0
	VANDPS Y15, Y1, Y1
	VANDPS Y15, Y2, Y2
	VANDPS Y15, Y3, Y3
	VMAXPS Y1, Y0, Y0
	VMAXPS Y3, Y2, Y2
	VMAXPS Y2, Y0, Y0
	VMAXPS Y0, Y4, Y4
	ADDQ $128, R11
	DECQ BX
	JNZ qamax
	VEXTRACTF128 $1, Y4, X0
	VMAXPS X0, X4, X4
	VPERMILPS $0x4e, X4, X0
	VMAXPS X0, X4, X4
	VPERMILPS $0xb1, X4, X0
	VMAXPS X0, X4, X4
	VEXTRACTF128 $1, Y5, X0
	VADDPS X0, X5, X5
	VPERMILPS $0x4e, X5, X0
	VADDPS X0, X5, X5
	VPERMILPS $0xb1, X5, X0
	VADDPS X0, X5, X5
	VMOVSS X5, (R9)
	VDIVSS X14, X4, X0
	VMOVSS X0, (R8)
	VXORPS X6, X6, X6
	VUCOMISS X6, X4
	JBE qzero
	VDIVSS X4, X14, X6
qzero:
	VBROADCASTSS X6, Y6
	VPXOR Y12, Y12, Y12
	MOVQ DX, BX
qconv:
	VMULPS (SI), Y6, Y0
	VMULPS 32(SI), Y6, Y1
	VMULPS 64(SI), Y6, Y2
	VMULPS 96(SI), Y6, Y3
	VCVTPS2DQ Y0, Y0
	VCVTPS2DQ Y1, Y1
	VCVTPS2DQ Y2, Y2
	VCVTPS2DQ Y3, Y3
	VPADDD Y1, Y0, Y7
	VPADDD Y3, Y2, Y8
	VPADDD Y8, Y7, Y7
	VPADDD Y7, Y12, Y12
	VPACKSSDW Y1, Y0, Y0
	VPACKSSDW Y3, Y2, Y2
	VPACKSSWB Y2, Y0, Y0
	VPERMD Y0, Y13, Y0
	VMOVDQU Y0, (DI)
	ADDQ $128, SI
	ADDQ $32, DI
	DECQ BX
	JNZ qconv
	VEXTRACTI128 $1, Y12, X0
	VPADDD X0, X12, X12
	VPSHUFD $0x4e, X12, X0
	VPADDD X0, X12, X12
	VPSHUFD $0xb1, X12, X0
	VPADDD X0, X12, X12
	VMOVD X12, (R10)
	ADDQ $4, R8
	ADDQ $4, R9
	ADDQ $4, R10
	DECQ CX
	JNZ qblock
qdone:
	VZEROUPPER
	RET

// qperm undoes the lane interleaving of VPACKSSDW+VPACKSSWB (dwords).
DATA qperm<>+0(SB)/8, $0x0703060205010400
GLOBL qperm<>(SB), RODATA|NOPTR, $8
