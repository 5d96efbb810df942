//go:build amd64 && !noasm

package kernels

import (
	"encoding/binary"
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
func dotQ8_0AVX512(x *float32, w *byte, nb int) float32

//go:noescape
func dotQ4_0AVX512(x *float32, w *byte, nb int) float32

//go:noescape
func dotNF4AVX512(x *float32, q, codes *byte, nb int, c2, mu float32, tab *float32) float32

//go:noescape
func dotQ4KAVX512(x *float32, w *byte, nsb int, dsc *float32) float32

//go:noescape
func dotQ6KAVX512(x *float32, w *byte, nsb int, ds *float32) float32

//go:noescape
func dotF32AVX2(x, w *float32, n int) float32

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

// fusedRowDot returns Σₖ x[k]·W[r][k], reading row r of w straight from its
// blocks, and false when this level has no fused kernel for w's type (the
// caller then decodes the row and uses dotF32Fast).
//
// scales is a scratch of at least Cols/16 floats for the K-quants' unpacked
// sub-block scales.
func fusedRowDot(w *Matrix, r int, x, scales []float32) (float32, bool) {
	if curLevel != levelAVX512 {
		return 0, false
	}
	K := w.Cols
	if bs := typeBlock(w.Type); bs == 0 || K%bs != 0 || K == 0 {
		return 0, false
	}
	x = x[:K]
	off := r * K
	switch w.Type {
	case quant.Q8_0:
		src := w.Data[off/32*34 : (off+K)/32*34]
		return dotQ8_0AVX512(&x[0], &src[0], K/32), true
	case quant.Q4_0:
		src := w.Data[off/32*18 : (off+K)/32*18]
		return dotQ4_0AVX512(&x[0], &src[0], K/32), true
	case quant.F16, quant.BF16:
		src := w.Data[2*off : 2*(off+K)]
		m := K &^ 15
		var s float32
		if m > 0 {
			if w.Type == quant.F16 {
				s = dotF16AVX512(&x[0], &src[0], m)
			} else {
				s = dotBF16AVX512(&x[0], &src[0], m)
			}
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
	case quant.Q4_K:
		src := w.Data[off/256*144 : (off+K)/256*144]
		sc := scales[:K/16]
		q4kScales(sc, src)
		return dotQ4KAVX512(&x[0], &src[0], K/256, &sc[0]), true
	case quant.Q6_K:
		src := w.Data[off/256*210 : (off+K)/256*210]
		sc := scales[:K/16]
		q6kScales(sc, src)
		return dotQ6KAVX512(&x[0], &src[0], K/256, &sc[0]), true
	case quant.NF4:
		codes, c2off, muoff := nf4Layout(w.Rows * K)
		mu := math.Float32frombits(binary.LittleEndian.Uint32(w.Data[muoff:]))
		b0, b1 := off/64, (off+K)/64
		var s float32
		for b := b0; b < b1; {
			e := min(b1, (b/256+1)*256) // blocks of one double-quantization group
			c2 := math.Float32frombits(binary.LittleEndian.Uint32(w.Data[c2off+4*(b/256):]))
			_ = w.Data[codes+e-1]
			_ = w.Data[e*32-1]
			s += dotNF4AVX512(&x[(b-b0)*64], &w.Data[b*32], &w.Data[codes+b], e-b, c2, mu, &quant.NF4Table[0])
			b = e
		}
		return s, true
	}
	return 0, false
}
