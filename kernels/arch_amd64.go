//go:build amd64 && !noasm

package kernels

import (
	"math"

	"github.com/qtune/qtune/quant"
	"golang.org/x/sys/cpu"
)

// Assembly kernels (gemm_amd64.s, vec_amd64.s). Each is documented by the Go
// loop it replaces; see the generic twins.

//go:noescape
func gemmKernAVX512(k int, a, b, c *float32, ldc int, accum int)

//go:noescape
func gemmKernAVX2(k int, a, b, c *float32, ldc int, accum int)

// detectLevel picks the best instruction set this CPU and OS support.
func detectLevel() level {
	switch {
	case cpu.X86.HasAVX512F && cpu.X86.HasAVX512BW && cpu.X86.HasAVX512VL && cpu.X86.HasAVX2 && cpu.X86.HasFMA:
		return levelAVX512
	case cpu.X86.HasAVX2 && cpu.X86.HasFMA:
		return levelAVX2
	}
	return levelGeneric
}

// kernelFor returns the GEMM micro-kernel of a level (fn nil for generic).
func kernelFor(l level) microKernel {
	switch l {
	case levelAVX512:
		return microKernel{mr: 8, nr: 48, fn: gemmKernAVX512}
	case levelAVX2:
		return microKernel{mr: 4, nr: 24, fn: gemmKernAVX2}
	}
	return microKernel{}
}

//go:noescape
func dotF32AVX512(x, w *float32, n int) float32

//go:noescape
func dotF16AVX512(x *float32, w *byte, n int) float32

//go:noescape
func dotBF16AVX512(x *float32, w *byte, n int) float32

//go:noescape
func dotF32AVX2(x, w *float32, n int) float32

//go:noescape
func dotF16AVX2(x *float32, w *byte, n int) float32

//go:noescape
func dotBF16AVX2(x *float32, w *byte, n int) float32

// dotF32Fast returns Σ x[i]·w[i] over len(x) elements with the level's
// vector kernel (tail in Go).
func dotF32Fast(x, w []float32) float32 {
	n := len(x)
	w = w[:n]
	var s float32
	m := 0
	switch curLevel {
	case levelAVX512:
		if m = n &^ 15; m > 0 {
			s = dotF32AVX512(&x[0], &w[0], m)
		}
	case levelAVX2:
		if m = n &^ 7; m > 0 {
			s = dotF32AVX2(&x[0], &w[0], m)
		}
	default:
		return Dot(x, w)
	}
	for i := m; i < n; i++ {
		s += x[i] * w[i]
	}
	return s
}

// fusedRowDot returns Σₖ x[k]·W[r][k] for F16 and BF16 weights, reading
// row r of w straight from its bytes (AVX-512, AVX2), and false for other types
// and levels (the caller then reads F32 in place or decodes the row; the
// quantized types with an integer kernel never get here, see matVec).
func fusedRowDot(w *Matrix, r int, x []float32) (float32, bool) {
	if curLevel < levelAVX2 || (w.Type != quant.F16 && w.Type != quant.BF16) {
		return 0, false
	}
	K := w.Cols
	if K == 0 {
		return 0, false
	}
	x = x[:K]
	off := r * K
	src := w.Data[2*off : 2*(off+K)]
	var s float32
	m := K &^ 15
	f := dotF16AVX512
	switch {
	case curLevel == levelAVX2 && w.Type == quant.F16:
		m, f = K&^7, dotF16AVX2
	case curLevel == levelAVX2:
		m, f = K&^7, dotBF16AVX2
	case w.Type == quant.BF16:
		f = dotBF16AVX512
	}
	if m > 0 {
		s = f(&x[0], &src[0], m)
	}
	for i := m; i < K; i++ {
		h := uint16(src[2*i]) | uint16(src[2*i+1])<<8
		if w.Type == quant.F16 {
			s += x[i] * f16(h)
		} else {
			s += x[i] * math.Float32frombits(uint32(h)<<16)
		}
	}
	return s, true
}
