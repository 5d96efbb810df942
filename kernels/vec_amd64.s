//go:build amd64 && !noasm

#include "textflag.h"

// Matrix-vector dot products: one weight row (float32 or decoded on the fly
// from its blocks) against one activation row. Each keeps 16-lane partial
// sums and reduces them at the end; the Go twins in matvec.go (decodeRow +
// Dot) are the reference.

// REDUCE sums the 16 lanes of Z0 into X0.
#define REDUCE \
	VEXTRACTF64X4 $1, Z0, Y1 \
	VADDPS Y1, Y0, Y0 \
	VEXTRACTF128 $1, Y0, X1 \
	VADDPS X1, X0, X0 \
	VPERMILPS $0x4e, X0, X1 \
	VADDPS X1, X0, X0 \
	VPERMILPS $0xb1, X0, X1 \
	VADDPS X1, X0, X0

// func dotF32AVX512(x, w *float32, n int) float32
// Σ x[i]·w[i] for n a multiple of 16.
TEXT ·dotF32AVX512(SB), NOSPLIT, $0-28
	MOVQ x+0(FP), SI
	MOVQ w+8(FP), DI
	MOVQ n+16(FP), CX
	VPXORD Z0, Z0, Z0
	VPXORD Z1, Z1, Z1
	VPXORD Z2, Z2, Z2
	VPXORD Z3, Z3, Z3
	MOVQ CX, BX
	SHRQ $6, BX
	JZ f32tail
f32loop:
	VMOVUPS (SI), Z4
	VMOVUPS 64(SI), Z5
	VMOVUPS 128(SI), Z6
	VMOVUPS 192(SI), Z7
	VFMADD231PS (DI), Z4, Z0
	VFMADD231PS 64(DI), Z5, Z1
	VFMADD231PS 128(DI), Z6, Z2
	VFMADD231PS 192(DI), Z7, Z3
	ADDQ $256, SI
	ADDQ $256, DI
	DECQ BX
	JNZ f32loop
f32tail:
	ANDQ $63, CX
	SHRQ $4, CX
	JZ f32done
f32loop16:
	VMOVUPS (SI), Z4
	VFMADD231PS (DI), Z4, Z0
	ADDQ $64, SI
	ADDQ $64, DI
	DECQ CX
	JNZ f32loop16
f32done:
	VADDPS Z1, Z0, Z0
	VADDPS Z3, Z2, Z2
	VADDPS Z2, Z0, Z0
	REDUCE
	VZEROUPPER
	MOVSS X0, ret+24(FP)
	RET

// func dotF16AVX512(x *float32, w *byte, n int) float32
// Σ x[i]·f16(w[2i:]) for n a multiple of 16: four partial sums over 64
// elements per step (then 16 at a time into the first), added as
// (s0+s1)+(s2+s3).
TEXT ·dotF16AVX512(SB), NOSPLIT, $0-28
	MOVQ x+0(FP), SI
	MOVQ w+8(FP), DI
	MOVQ n+16(FP), CX
	VPXORD Z0, Z0, Z0
	VPXORD Z1, Z1, Z1
	VPXORD Z2, Z2, Z2
	VPXORD Z3, Z3, Z3
	MOVQ CX, BX
	SHRQ $6, BX
	JZ f16tail
f16loop:
	VCVTPH2PS (DI), Z4
	VCVTPH2PS 32(DI), Z5
	VCVTPH2PS 64(DI), Z6
	VCVTPH2PS 96(DI), Z7
	VFMADD231PS (SI), Z4, Z0
	VFMADD231PS 64(SI), Z5, Z1
	VFMADD231PS 128(SI), Z6, Z2
	VFMADD231PS 192(SI), Z7, Z3
	ADDQ $128, DI
	ADDQ $256, SI
	DECQ BX
	JNZ f16loop
f16tail:
	ANDQ $63, CX
	SHRQ $4, CX
	JZ f16done
f16loop16:
	VCVTPH2PS (DI), Z4
	VFMADD231PS (SI), Z4, Z0
	ADDQ $32, DI
	ADDQ $64, SI
	DECQ CX
	JNZ f16loop16
f16done:
	VADDPS Z1, Z0, Z0
	VADDPS Z3, Z2, Z2
	VADDPS Z2, Z0, Z0
	REDUCE
	VZEROUPPER
	MOVSS X0, ret+24(FP)
	RET

// func dotBF16AVX512(x *float32, w *byte, n int) float32
// Σ x[i]·bf16(w[2i:]) for n a multiple of 16, summed as dotF16AVX512.
TEXT ·dotBF16AVX512(SB), NOSPLIT, $0-28
	MOVQ x+0(FP), SI
	MOVQ w+8(FP), DI
	MOVQ n+16(FP), CX
	VPXORD Z0, Z0, Z0
	VPXORD Z1, Z1, Z1
	VPXORD Z2, Z2, Z2
	VPXORD Z3, Z3, Z3
	MOVQ CX, BX
	SHRQ $6, BX
	JZ bf16tail
bf16loop:
	VPMOVZXWD (DI), Z4
	VPMOVZXWD 32(DI), Z5
	VPMOVZXWD 64(DI), Z6
	VPMOVZXWD 96(DI), Z7
	VPSLLD $16, Z4, Z4
	VPSLLD $16, Z5, Z5
	VPSLLD $16, Z6, Z6
	VPSLLD $16, Z7, Z7
	VFMADD231PS (SI), Z4, Z0
	VFMADD231PS 64(SI), Z5, Z1
	VFMADD231PS 128(SI), Z6, Z2
	VFMADD231PS 192(SI), Z7, Z3
	ADDQ $128, DI
	ADDQ $256, SI
	DECQ BX
	JNZ bf16loop
bf16tail:
	ANDQ $63, CX
	SHRQ $4, CX
	JZ bf16done
bf16loop16:
	VPMOVZXWD (DI), Z4
	VPSLLD $16, Z4, Z4
	VFMADD231PS (SI), Z4, Z0
	ADDQ $32, DI
	ADDQ $64, SI
	DECQ CX
	JNZ bf16loop16
bf16done:
	VADDPS Z1, Z0, Z0
	VADDPS Z3, Z2, Z2
	VADDPS Z2, Z0, Z0
	REDUCE
	VZEROUPPER
	MOVSS X0, ret+24(FP)
	RET

// func dotF32AVX2(x, w *float32, n int) float32
// Σ x[i]·w[i] for n a multiple of 8.
TEXT ·dotF32AVX2(SB), NOSPLIT, $0-28
	MOVQ x+0(FP), SI
	MOVQ w+8(FP), DI
	MOVQ n+16(FP), CX
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	MOVQ CX, BX
	SHRQ $5, BX
	JZ a2tail
a2loop:
	VMOVUPS (SI), Y4
	VMOVUPS 32(SI), Y5
	VMOVUPS 64(SI), Y6
	VMOVUPS 96(SI), Y7
	VFMADD231PS (DI), Y4, Y0
	VFMADD231PS 32(DI), Y5, Y1
	VFMADD231PS 64(DI), Y6, Y2
	VFMADD231PS 96(DI), Y7, Y3
	ADDQ $128, SI
	ADDQ $128, DI
	DECQ BX
	JNZ a2loop
a2tail:
	ANDQ $31, CX
	SHRQ $3, CX
	JZ a2done
a2loop8:
	VMOVUPS (SI), Y4
	VFMADD231PS (DI), Y4, Y0
	ADDQ $32, SI
	ADDQ $32, DI
	DECQ CX
	JNZ a2loop8
a2done:
	VADDPS Y1, Y0, Y0
	VADDPS Y3, Y2, Y2
	VADDPS Y2, Y0, Y0
	VEXTRACTF128 $1, Y0, X1
	VADDPS X1, X0, X0
	VPERMILPS $0x4e, X0, X1
	VADDPS X1, X0, X0
	VPERMILPS $0xb1, X0, X1
	VADDPS X1, X0, X0
	VZEROUPPER
	MOVSS X0, ret+24(FP)
	RET

// F16CVT and BF16CVT widen the 8 halves at off(DI) to float32 in r.
#define F16CVT(off, r) \
	VCVTPH2PS off(DI), r

#define BF16CVT(off, r) \
	VPMOVZXWD off(DI), r \
	VPSLLD $16, r, r

// HALFDOTAVX2 is the body of dotF16AVX2 and dotBF16AVX2: Σ x[i]·w_i over
// CX elements (a multiple of 8) of x at SI and halves at DI, CVT widening
// them; four partial sums over 32 elements per step (then 8 at a time into
// the first), added as (s0+s1)+(s2+s3), into X0.
#define HALFDOTAVX2(CVT) \
	VXORPS Y0, Y0, Y0 \
	VXORPS Y1, Y1, Y1 \
	VXORPS Y2, Y2, Y2 \
	VXORPS Y3, Y3, Y3 \
	MOVQ CX, BX \
	SHRQ $5, BX \
	JZ h2tail \
h2loop: \
	CVT(0, Y4) \
	CVT(16, Y5) \
	CVT(32, Y6) \
	CVT(48, Y7) \
	VFMADD231PS (SI), Y4, Y0 \
	VFMADD231PS 32(SI), Y5, Y1 \
	VFMADD231PS 64(SI), Y6, Y2 \
	VFMADD231PS 96(SI), Y7, Y3 \
	ADDQ $64, DI \
	ADDQ $128, SI \
	DECQ BX \
	JNZ h2loop \
h2tail: \
	ANDQ $31, CX \
	SHRQ $3, CX \
	JZ h2done \
h2loop8: \
	CVT(0, Y4) \
	VFMADD231PS (SI), Y4, Y0 \
	ADDQ $16, DI \
	ADDQ $32, SI \
	DECQ CX \
	JNZ h2loop8 \
h2done: \
	VADDPS Y1, Y0, Y0 \
	VADDPS Y3, Y2, Y2 \
	VADDPS Y2, Y0, Y0 \
	VEXTRACTF128 $1, Y0, X1 \
	VADDPS X1, X0, X0 \
	VPERMILPS $0x4e, X0, X1 \
	VADDPS X1, X0, X0 \
	VPERMILPS $0xb1, X0, X1 \
	VADDPS X1, X0, X0 \
	VZEROUPPER

// func dotF16AVX2(x *float32, w *byte, n int) float32
// Σ x[i]·f16(w[2i:]) for n a multiple of 8.
TEXT ·dotF16AVX2(SB), NOSPLIT, $0-28
	MOVQ x+0(FP), SI
	MOVQ w+8(FP), DI
	MOVQ n+16(FP), CX
	HALFDOTAVX2(F16CVT)
	MOVSS X0, ret+24(FP)
	RET

// func dotBF16AVX2(x *float32, w *byte, n int) float32
// Σ x[i]·bf16(w[2i:]) for n a multiple of 8, summed as dotF16AVX2.
TEXT ·dotBF16AVX2(SB), NOSPLIT, $0-28
	MOVQ x+0(FP), SI
	MOVQ w+8(FP), DI
	MOVQ n+16(FP), CX
	HALFDOTAVX2(BF16CVT)
	MOVSS X0, ret+24(FP)
	RET
