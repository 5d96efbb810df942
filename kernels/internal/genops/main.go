// Command genops writes kernels/ops_amd64.s, the vector bodies of the
// attention-side kernels (ops.go), once for AVX-512 (zmm, 16 lanes) and once
// for AVX2 (ymm, 8 lanes) from the same description:
//
//	go run ./kernels/internal/genops > kernels/ops_amd64.s
//
// Every function handles n a positive multiple of its lane count (or, for
// the row kernels, d a multiple of it); the Go callers in ops_amd64.go do
// the tails with the generic loops of ops_generic.go, which each body
// mirrors operation for operation.
package main

import (
	"fmt"
	"math"
	"os"
	"strings"
)

var out strings.Builder

func p(format string, args ...any) { fmt.Fprintf(&out, "\t"+format+"\n", args...) }
func label(l string)               { fmt.Fprintf(&out, "%s:\n", l) }

type isa struct {
	suf string // function name suffix
	r   string // register prefix
	vl  int    // float32 lanes
}

func (s isa) v(i int) string { return fmt.Sprintf("%s%d", s.r, i) }
func (s isa) b() int         { return 4 * s.vl }

// half names register i at half the vector width (the ymm or xmm alias).
func (s isa) half(i int) string {
	if s.r == "Z" {
		return fmt.Sprintf("Y%d", i)
	}
	return fmt.Sprintf("X%d", i)
}

func (s isa) zero(r string) {
	if s.r == "Z" {
		p("VPXORD %s, %s, %s", r, r, r)
	} else {
		p("VXORPS %s, %s, %s", r, r, r)
	}
}

// reduce folds the lanes of register 0 with op (VADDPS or VMAXPS) into X0,
// using register 1.
func (s isa) reduce(op string) {
	if s.r == "Z" {
		p("VEXTRACTF64X4 $1, Z0, Y1")
		p("%s Y1, Y0, Y0", op)
	}
	p("VEXTRACTF128 $1, Y0, X1")
	p("%s X1, X0, X0", op)
	p("VPERMILPS $0x4e, X0, X1")
	p("%s X1, X0, X0", op)
	p("VPERMILPS $0xb1, X0, X1")
	p("%s X1, X0, X0", op)
}

func header(name, args string, frame int) {
	fmt.Fprintf(&out, "\n// func %s(%s)\n", name, args)
	fmt.Fprintf(&out, "TEXT ·%s(SB), NOSPLIT, $0-%d\n", name, frame)
}

func end() {
	p("VZEROUPPER")
	p("RET")
}

// exp computes dst = exp(x) lane-wise, clobbering x and t (see exp32 in
// ops_generic.go for the algorithm and its bound): clamp to [−87, 88],
// n = round(x·log2 e) by the 1.5·2²³ shift, r = x − n·ln2 (Cody–Waite in two
// parts), p = Σ r^k/k! for k ≤ 7 by Horner, then 2ⁿ added to p's exponent.
func (s isa) exp(x, t, dst string) {
	p("VMAXPS expLo<>(SB), %s, %s", x, x)
	p("VMINPS expHi<>(SB), %s, %s", x, x)
	p("VMOVUPS expMagic<>(SB), %s", t)
	p("VFMADD231PS expLog2e<>(SB), %s, %s", x, t)
	p("VSUBPS expMagic<>(SB), %s, %s", t, dst)
	p("VFNMADD231PS expLn2hi<>(SB), %s, %s", dst, x)
	p("VFNMADD231PS expLn2lo<>(SB), %s, %s", dst, x)
	p("VMOVUPS expC7<>(SB), %s", dst)
	for k := 6; k >= 0; k-- {
		p("VFMADD213PS expC%d<>(SB), %s, %s", k, x, dst)
	}
	p("VPSLLD $23, %s, %s", t, t)
	p("VPADDD %s, %s, %s", t, dst, dst)
}

// loop emits the counted loop "for CX > 0 { body; CX -= vl }".
func (s isa) loop(name string, body func()) {
	label(name)
	body()
	p("SUBQ $%d, CX", s.vl)
	p("JNZ %s", name)
}

func constants() {
	c := func(name string, v float32) {
		for i := 0; i < 16; i++ {
			fmt.Fprintf(&out, "DATA %s<>+%d(SB)/4, $%s\n", name, 4*i, f32(v))
		}
		fmt.Fprintf(&out, "GLOBL %s<>(SB), RODATA|NOPTR, $64\n\n", name)
	}
	c("expLo", -87)
	c("expHi", 88)
	c("expMagic", 0x1.8p23)
	c("expLog2e", 1.44269504088896341)
	c("expLn2hi", 0.693359375)
	c("expLn2lo", -2.12194440e-4)
	fact := 1.0
	for k := 0; k <= 7; k++ {
		if k > 0 {
			fact *= float64(k)
		}
		c(fmt.Sprintf("expC%d", k), float32(1/fact))
	}
	c("one", 1)
	for i := 0; i < 16; i++ {
		v := float32(1)
		if i%2 == 0 {
			v = -1
		}
		fmt.Fprintf(&out, "DATA altSign<>+%d(SB)/4, $%s\n", 4*i, f32(v))
	}
	fmt.Fprintf(&out, "GLOBL altSign<>(SB), RODATA|NOPTR, $64\n\n")
	for i := 0; i < 16; i++ {
		fmt.Fprintf(&out, "DATA dupIdx<>+%d(SB)/4, $%d\n", 4*i, i/2)
	}
	fmt.Fprintf(&out, "GLOBL dupIdx<>(SB), RODATA|NOPTR, $64\n")
}

func f32(v float32) string { return fmt.Sprintf("%#x", math.Float32bits(v)) }

func gen(s isa) {
	V := s.v
	B := s.b()
	n := func(base string) string { return base + s.suf }

	// axpy: y[i] += a·x[i]
	header(n("axpy"), "y, x *float32, n int, a float32", 28)
	p("MOVQ y+0(FP), DI")
	p("MOVQ x+8(FP), SI")
	p("MOVQ n+16(FP), CX")
	p("VBROADCASTSS a+24(FP), %s", V(15))
	s.loop(n("axpyloop"), func() {
		p("VMOVUPS (SI), %s", V(0))
		p("VFMADD213PS (DI), %s, %s", V(15), V(0))
		p("VMOVUPS %s, (DI)", V(0))
		p("ADDQ $%d, SI", B)
		p("ADDQ $%d, DI", B)
	})
	end()

	// scal: x[i] *= a
	header(n("scal"), "x *float32, n int, a float32", 20)
	p("MOVQ x+0(FP), DI")
	p("MOVQ n+8(FP), CX")
	p("VBROADCASTSS a+16(FP), %s", V(15))
	s.loop(n("scalloop"), func() {
		p("VMULPS (DI), %s, %s", V(15), V(0))
		p("VMOVUPS %s, (DI)", V(0))
		p("ADDQ $%d, DI", B)
	})
	end()

	// mulScale: out[i] = x[i]·a·w[i]
	header(n("mulScale"), "out, x, w *float32, n int, a float32", 36)
	p("MOVQ out+0(FP), DI")
	p("MOVQ x+8(FP), SI")
	p("MOVQ w+16(FP), DX")
	p("MOVQ n+24(FP), CX")
	p("VBROADCASTSS a+32(FP), %s", V(15))
	s.loop(n("mulscaleloop"), func() {
		p("VMULPS (SI), %s, %s", V(15), V(0))
		p("VMULPS (DX), %s, %s", V(0), V(0))
		p("VMOVUPS %s, (DI)", V(0))
		p("ADDQ $%d, SI", B)
		p("ADDQ $%d, DX", B)
		p("ADDQ $%d, DI", B)
	})
	end()

	// max: max_i x[i]
	header(n("max"), "x *float32, n int", 20)
	p("MOVQ x+0(FP), SI")
	p("MOVQ n+8(FP), CX")
	p("VMOVUPS (SI), %s", V(0))
	p("ADDQ $%d, SI", B)
	p("SUBQ $%d, CX", s.vl)
	p("JZ %s", n("maxdone"))
	s.loop(n("maxloop"), func() {
		p("VMAXPS (SI), %s, %s", V(0), V(0))
		p("ADDQ $%d, SI", B)
	})
	label(n("maxdone"))
	s.reduce("VMAXPS")
	p("VMOVSS X0, ret+16(FP)")
	end()

	// expSum: e = exp(x[i]−m); dst[i] = e when dst != nil; returns Σ e
	header(n("expSum"), "dst, x *float32, n int, m float32", 36)
	p("MOVQ dst+0(FP), DI")
	p("MOVQ x+8(FP), SI")
	p("MOVQ n+16(FP), CX")
	p("VBROADCASTSS m+24(FP), %s", V(15))
	s.zero(V(0))
	s.loop(n("expsumloop"), func() {
		p("VMOVUPS (SI), %s", V(2))
		p("VSUBPS %s, %s, %s", V(15), V(2), V(2))
		s.exp(V(2), V(3), V(4))
		p("VADDPS %s, %s, %s", V(4), V(0), V(0))
		p("TESTQ DI, DI")
		p("JZ %s", n("expsumnost"))
		p("VMOVUPS %s, (DI)", V(4))
		p("ADDQ $%d, DI", B)
		label(n("expsumnost"))
		p("ADDQ $%d, SI", B)
	})
	s.reduce("VADDPS")
	p("VMOVSS X0, ret+32(FP)")
	end()

	// addExp: dst[i] += a·exp(x[i]−m)
	header(n("addExp"), "dst, x *float32, n int, m, a float32", 32)
	p("MOVQ dst+0(FP), DI")
	p("MOVQ x+8(FP), SI")
	p("MOVQ n+16(FP), CX")
	p("VBROADCASTSS m+24(FP), %s", V(15))
	p("VBROADCASTSS a+28(FP), %s", V(14))
	s.loop(n("addexploop"), func() {
		p("VMOVUPS (SI), %s", V(2))
		p("VSUBPS %s, %s, %s", V(15), V(2), V(2))
		s.exp(V(2), V(3), V(4))
		p("VFMADD213PS (DI), %s, %s", V(14), V(4))
		p("VMOVUPS %s, (DI)", V(4))
		p("ADDQ $%d, SI", B)
		p("ADDQ $%d, DI", B)
	})
	end()

	// swiglu: out[i] = g/(1+exp(−g))·u[i]
	header(n("swiglu"), "out, gate, up *float32, n int", 32)
	p("MOVQ out+0(FP), DI")
	p("MOVQ gate+8(FP), SI")
	p("MOVQ up+16(FP), DX")
	p("MOVQ n+24(FP), CX")
	s.zero(V(15))
	s.loop(n("swigluloop"), func() {
		p("VMOVUPS (SI), %s", V(1))
		p("VSUBPS %s, %s, %s", V(1), V(15), V(2))
		s.exp(V(2), V(3), V(4))
		p("VADDPS one<>(SB), %s, %s", V(4), V(4))
		p("VDIVPS %s, %s, %s", V(4), V(1), V(1))
		p("VMULPS (DX), %s, %s", V(1), V(1))
		p("VMOVUPS %s, (DI)", V(1))
		p("ADDQ $%d, SI", B)
		p("ADDQ $%d, DX", B)
		p("ADDQ $%d, DI", B)
	})
	end()

	// swigluBack: s = 1/(1+exp(−g)); du += dy·g·s; dg += dy·u·s·(1+g·(1−s))
	header(n("swigluBack"), "dg, du, dy, gate, up *float32, n int", 48)
	p("MOVQ dg+0(FP), DI")
	p("MOVQ du+8(FP), R8")
	p("MOVQ dy+16(FP), R9")
	p("MOVQ gate+24(FP), SI")
	p("MOVQ up+32(FP), DX")
	p("MOVQ n+40(FP), CX")
	s.zero(V(15))
	p("VMOVUPS one<>(SB), %s", V(14))
	s.loop(n("swiglubackloop"), func() {
		p("VMOVUPS (SI), %s", V(1))               // g
		p("VSUBPS %s, %s, %s", V(1), V(15), V(2)) // −g
		s.exp(V(2), V(3), V(4))
		p("VADDPS %s, %s, %s", V(14), V(4), V(4))
		p("VDIVPS %s, %s, %s", V(4), V(14), V(5)) // s
		p("VMOVUPS (R9), %s", V(6))               // dy
		p("VMULPS %s, %s, %s", V(1), V(6), V(7))  // dy·g
		p("VMULPS %s, %s, %s", V(5), V(7), V(7))  // ·s
		p("VADDPS (R8), %s, %s", V(7), V(7))      // du +
		p("VMOVUPS %s, (R8)", V(7))               //
		p("VSUBPS %s, %s, %s", V(5), V(14), V(8)) // 1−s
		p("VMULPS %s, %s, %s", V(8), V(1), V(8))  // g·(1−s)
		p("VADDPS %s, %s, %s", V(14), V(8), V(8)) // 1+g·(1−s)
		p("VMULPS (DX), %s, %s", V(6), V(9))      // dy·u
		p("VMULPS %s, %s, %s", V(5), V(9), V(9))  // ·s
		p("VMULPS %s, %s, %s", V(8), V(9), V(9))  // ·(1+g·(1−s))
		p("VADDPS (DI), %s, %s", V(9), V(9))      // dg +
		p("VMOVUPS %s, (DI)", V(9))               //
		for _, r := range []string{"SI", "DX", "DI", "R8", "R9"} {
			p("ADDQ $%d, %s", B, r)
		}
	})
	end()

	// dot3: Σ a[i]·b[i]·c[i]
	header(n("dot3"), "a, b, c *float32, n int", 36)
	p("MOVQ a+0(FP), SI")
	p("MOVQ b+8(FP), DX")
	p("MOVQ c+16(FP), DI")
	p("MOVQ n+24(FP), CX")
	s.zero(V(0))
	s.loop(n("dot3loop"), func() {
		p("VMOVUPS (SI), %s", V(2))
		p("VMULPS (DX), %s, %s", V(2), V(2))
		p("VFMADD231PS (DI), %s, %s", V(2), V(0))
		p("ADDQ $%d, SI", B)
		p("ADDQ $%d, DX", B)
		p("ADDQ $%d, DI", B)
	})
	s.reduce("VADDPS")
	p("VMOVSS X0, ret+32(FP)")
	end()

	// rmsBack: dx[i] += r·w[i]·dy[i] − x[i]·c; dw[i] += dy[i]·x[i]·r when dw != nil
	header(n("rmsBack"), "dx, dw, dy, x, w *float32, n int, r, c float32", 56)
	p("MOVQ dx+0(FP), DI")
	p("MOVQ dw+8(FP), R8")
	p("MOVQ dy+16(FP), R9")
	p("MOVQ x+24(FP), SI")
	p("MOVQ w+32(FP), DX")
	p("MOVQ n+40(FP), CX")
	p("VBROADCASTSS r+48(FP), %s", V(15))
	p("VBROADCASTSS c+52(FP), %s", V(14))
	s.loop(n("rmsbackloop"), func() {
		p("VMULPS (DX), %s, %s", V(15), V(0)) // r·w
		p("VMOVUPS (R9), %s", V(1))           // dy
		p("VMULPS %s, %s, %s", V(1), V(0), V(0))
		p("VMOVUPS (SI), %s", V(2)) // x
		p("VMULPS %s, %s, %s", V(14), V(2), V(3))
		p("VSUBPS %s, %s, %s", V(3), V(0), V(0))
		p("VADDPS (DI), %s, %s", V(0), V(0))
		p("VMOVUPS %s, (DI)", V(0))
		p("TESTQ R8, R8")
		p("JZ %s", n("rmsbacknodw"))
		p("VMULPS %s, %s, %s", V(2), V(1), V(1)) // dy·x
		p("VMULPS %s, %s, %s", V(15), V(1), V(1))
		p("VADDPS (R8), %s, %s", V(1), V(1))
		p("VMOVUPS %s, (R8)", V(1))
		p("ADDQ $%d, R8", B)
		label(n("rmsbacknodw"))
		for _, r := range []string{"DI", "R9", "SI", "DX"} {
			p("ADDQ $%d, %s", B, r)
		}
	})
	end()

	// ropeI: adjacent pairs (v[2j], v[2j+1]) rotated by (cos[j], sign·sin[j])
	header(n("ropeI"), "v, cos, sin *float32, n int, sign float32", 36)
	p("MOVQ v+0(FP), DI")
	p("MOVQ cos+8(FP), SI")
	p("MOVQ sin+16(FP), DX")
	p("MOVQ n+24(FP), CX")
	p("VBROADCASTSS sign+32(FP), %s", V(15))
	p("VMULPS altSign<>(SB), %s, %s", V(15), V(15)) // (−sign, +sign, …)
	p("VMOVUPS dupIdx<>(SB), %s", V(14))
	s.loop(n("ropeiloop"), func() {
		p("VMOVUPS (SI), %s", s.half(1))
		p("VPERMPS %s, %s, %s", V(1), V(14), V(1)) // c c
		p("VMOVUPS (DX), %s", s.half(2))
		p("VPERMPS %s, %s, %s", V(2), V(14), V(2)) // s s
		p("VMULPS %s, %s, %s", V(15), V(2), V(2))  // −s +s
		p("VMOVUPS (DI), %s", V(3))
		p("VPERMILPS $0xb1, %s, %s", V(3), V(4)) // b a
		p("VMULPS %s, %s, %s", V(1), V(3), V(3))
		p("VFMADD231PS %s, %s, %s", V(2), V(4), V(3))
		p("VMOVUPS %s, (DI)", V(3))
		p("ADDQ $%d, DI", B)
		p("ADDQ $%d, SI", B/2)
		p("ADDQ $%d, DX", B/2)
	})
	end()

	// ropeN: half-split pairs (v[j], v[j+half]), j < n, rotated by (cos[j], sign·sin[j])
	header(n("ropeN"), "v, cos, sin *float32, n, half int, sign float32", 44)
	p("MOVQ v+0(FP), DI")
	p("MOVQ cos+8(FP), SI")
	p("MOVQ sin+16(FP), DX")
	p("MOVQ n+24(FP), CX")
	p("MOVQ half+32(FP), R8")
	p("LEAQ (DI)(R8*4), R8")
	p("VBROADCASTSS sign+40(FP), %s", V(15))
	s.loop(n("ropenloop"), func() {
		p("VMOVUPS (SI), %s", V(1))              // c
		p("VMULPS (DX), %s, %s", V(15), V(2))    // s
		p("VMOVUPS (DI), %s", V(3))              // a
		p("VMOVUPS (R8), %s", V(4))              // b
		p("VMULPS %s, %s, %s", V(1), V(3), V(5)) // a·c
		p("VFNMADD231PS %s, %s, %s", V(2), V(4), V(5))
		p("VMULPS %s, %s, %s", V(1), V(4), V(6)) // b·c
		p("VFMADD231PS %s, %s, %s", V(2), V(3), V(6))
		p("VMOVUPS %s, (DI)", V(5))
		p("VMOVUPS %s, (R8)", V(6))
		for _, r := range []string{"DI", "R8", "SI", "DX"} {
			p("ADDQ $%d, %s", B, r)
		}
	})
	end()

	// gemv: y[u] = alpha·Σ_i a[u*lda+i]·x[i], u < n, i < d
	header(n("gemv"), "y, a, x *float32, n, d, lda int, alpha float32", 52)
	p("MOVQ y+0(FP), DI")
	p("MOVQ a+8(FP), R8")
	p("MOVQ x+16(FP), R9")
	p("MOVQ n+24(FP), BX")
	p("MOVQ d+32(FP), R10")
	p("MOVQ lda+40(FP), R11")
	p("SHLQ $2, R11")
	p("VMOVSS alpha+48(FP), X15")
	label(n("gemvrow"))
	p("MOVQ R8, SI")
	p("MOVQ R9, DX")
	p("MOVQ R10, CX")
	s.zero(V(0))
	s.loop(n("gemvloop"), func() {
		p("VMOVUPS (SI), %s", V(2))
		p("VFMADD231PS (DX), %s, %s", V(2), V(0))
		p("ADDQ $%d, SI", B)
		p("ADDQ $%d, DX", B)
	})
	s.reduce("VADDPS")
	p("VMULSS X15, X0, X0")
	p("VMOVSS X0, (DI)")
	p("ADDQ $4, DI")
	p("ADDQ R11, R8")
	p("DECQ BX")
	p("JNZ %s", n("gemvrow"))
	end()

	// gemvT: y[i] += Σ_u x[u]·a[u*lda+i], u < n, i < d; four vectors of y
	// at a time while they last, then one.
	header(n("gemvT"), "y, a, x *float32, n, d, lda int", 48)
	p("MOVQ y+0(FP), DI")
	p("MOVQ a+8(FP), R8")
	p("MOVQ x+16(FP), R9")
	p("MOVQ n+24(FP), BX")
	p("MOVQ d+32(FP), R10")
	p("MOVQ lda+40(FP), R11")
	p("SHLQ $2, R11")
	label(n("gemvtquad"))
	p("CMPQ R10, $%d", 4*s.vl)
	p("JLT %s", n("gemvtone"))
	for j := 0; j < 4; j++ {
		p("VMOVUPS %d(DI), %s", j*B, V(j))
	}
	p("MOVQ R8, SI")
	p("MOVQ R9, DX")
	p("MOVQ BX, CX")
	label(n("gemvtquadu"))
	p("VBROADCASTSS (DX), %s", V(8))
	for j := 0; j < 4; j++ {
		p("VFMADD231PS %d(SI), %s, %s", j*B, V(8), V(j))
	}
	p("ADDQ $4, DX")
	p("ADDQ R11, SI")
	p("DECQ CX")
	p("JNZ %s", n("gemvtquadu"))
	for j := 0; j < 4; j++ {
		p("VMOVUPS %s, %d(DI)", V(j), j*B)
	}
	p("ADDQ $%d, DI", 4*B)
	p("ADDQ $%d, R8", 4*B)
	p("SUBQ $%d, R10", 4*s.vl)
	p("JMP %s", n("gemvtquad"))
	label(n("gemvtone"))
	p("TESTQ R10, R10")
	p("JZ %s", n("gemvtdone"))
	p("VMOVUPS (DI), %s", V(0))
	p("MOVQ R8, SI")
	p("MOVQ R9, DX")
	p("MOVQ BX, CX")
	label(n("gemvtoneu"))
	p("VBROADCASTSS (DX), %s", V(8))
	p("VFMADD231PS (SI), %s, %s", V(8), V(0))
	p("ADDQ $4, DX")
	p("ADDQ R11, SI")
	p("DECQ CX")
	p("JNZ %s", n("gemvtoneu"))
	p("VMOVUPS %s, (DI)", V(0))
	p("ADDQ $%d, DI", B)
	p("ADDQ $%d, R8", B)
	p("SUBQ $%d, R10", s.vl)
	p("JMP %s", n("gemvtone"))
	label(n("gemvtdone"))
	end()

	// ger: a[u*lda+i] += x[u]·y[i], u < n, i < d
	header(n("ger"), "a, x, y *float32, n, d, lda int", 48)
	p("MOVQ a+0(FP), R8")
	p("MOVQ x+8(FP), R9")
	p("MOVQ y+16(FP), R12")
	p("MOVQ n+24(FP), BX")
	p("MOVQ d+32(FP), R10")
	p("MOVQ lda+40(FP), R11")
	p("SHLQ $2, R11")
	label(n("gerrow"))
	p("VBROADCASTSS (R9), %s", V(15))
	p("MOVQ R8, DI")
	p("MOVQ R12, SI")
	p("MOVQ R10, CX")
	s.loop(n("gerloop"), func() {
		p("VMOVUPS (SI), %s", V(0))
		p("VFMADD213PS (DI), %s, %s", V(15), V(0))
		p("VMOVUPS %s, (DI)", V(0))
		p("ADDQ $%d, SI", B)
		p("ADDQ $%d, DI", B)
	})
	p("ADDQ $4, R9")
	p("ADDQ R11, R8")
	p("DECQ BX")
	p("JNZ %s", n("gerrow"))
	end()
}

func main() {
	out.WriteString("// Code generated by go run ./kernels/internal/genops; DO NOT EDIT.\n\n")
	out.WriteString("//go:build amd64 && !noasm\n\n#include \"textflag.h\"\n\n")
	out.WriteString("// Vector bodies of the kernels in ops.go; each mirrors its generic loop in\n")
	out.WriteString("// ops_generic.go. n (or d) is a positive multiple of the lane count.\n\n")
	constants()
	gen(isa{"AVX512", "Z", 16})
	gen(isa{"AVX2", "Y", 8})
	os.Stdout.WriteString(out.String())
}
