//go:build amd64 && !noasm

package kernels

import (
	"encoding/binary"
	"math"
	"sync"
	"unsafe"

	"github.com/qtune/qtune/quant"
	"golang.org/x/sys/cpu"
)

// Integer matrix-vector products (generation, M ≤ matVecRows) for Q8_0,
// Q4_0, NF4, Q4_K and Q6_K weights.
//
// The activation row x is quantized once per call to int8 blocks (q8Act):
// one float32 scale dx per x block of 32 values (64 for NF4), q = round(x/dx)
// in [-127, 127]. Each weight row is then dotted in integers per block
// (VPDPBUSD u8×s8 with AVX-512 VNNI, VPMADDUBSW+VPMADDWD with AVX2) and
// every block's exact int32 sum is scaled once in float32:
//
//	y = Σ_b float32(d_w[b]·dx[b]) · float32(Σ_{k∈b} qw[k]·qx[k])      (Q8_0, Q4_0, NF4, Q6_K)
//	y = Σ_j float32(d·sc_j·dx_j)·Σ qw·qx − Σ_j float32(dmin·m_j)·Σ_{k∈j} x[k]   (Q4_K)
//
// The x values are laid out in the order the weight kernel reads its
// nibbles (q8Act.quantize), so no shuffles are needed per block. Offsets of
// the unsigned weight codes (Q4_0 −8, Q6_K −32, the +128 bias of Q8_0 and
// NF4 under VNNI) are exact integer corrections −off·Σ qx that the kernel
// loads as the initial value of each block's accumulator (corr). NF4 codes
// go through a 16-entry int8 code book, round(127·NF4Table[k]): an
// approximation of the float code book, bounded in doc.go.

// hasVNNI reports AVX-512 VNNI (VPDPBUSD); without it the AVX-512 level uses
// the AVX2 integer kernels.
var hasVNNI = cpu.X86.HasAVX512VNNI

// hasVBMI reports AVX-512 VBMI (VPERMT2B) and GFNI (GF2P8AFFINEQB), which
// the cache-line kernels (dotQ4_0VNNIL, dotQ4KVNNIL) need.
var hasVBMI = cpu.X86.HasAVX512VBMI && cpu.X86.HasAVX512GFNI

// haveQ8 reports that this build has the integer matrix-vector kernels.
const haveQ8 = true

// The kernels compute y[r] for rows consecutive weight rows starting at w
// (each of nb blocks, or nsb super-blocks), against one quantized x; skip is
// a number of bytes left out after each row (0 here).

//go:noescape
func dotQ8_0VNNI(y *float32, w *byte, x *int8, corr *int32, dx *float32, nb, rows, skip int)

//go:noescape
func dotQ4_0VNNI(y *float32, w *byte, x *int8, corr *int32, dx *float32, nb, rows, skip int)

//go:noescape
func dotQ4_0VNNIL(y *float32, w *byte, x *int8, corr *int32, dx *float32, nb, rows, skip int)

//go:noescape
func dotNF4VNNI(y *float32, q, codes *byte, x *int8, corr *int32, dx *float32, nb, rows int, c2, mu float32, tab *byte)

//go:noescape
func dotQ4KVNNI(y *float32, w *byte, x *int8, dx, fsum *float32, nsb, rows int)

//go:noescape
func dotQ4KVNNIL(y *float32, w *byte, x *int8, dx, fsum *float32, nsb, rows int)

//go:noescape
func dotQ6KVNNI(y *float32, w *byte, x *int8, corr *int32, dx *float32, nsb, rows int)

//go:noescape
func dotQ8_0AVX2(y *float32, w *byte, x *int8, corr *int32, dx *float32, nb, rows, skip int)

//go:noescape
func dotQ4_0AVX2(y *float32, w *byte, x *int8, corr *int32, dx *float32, nb, rows, skip int)

//go:noescape
func dotNF4AVX2(y *float32, q, codes *byte, x *int8, corr *int32, dx *float32, nb, rows int, c2, mu float32, tab *byte)

//go:noescape
func dotQ4KAVX2(y *float32, w *byte, x *int8, dx, fsum *float32, nsb, rows int)

//go:noescape
func dotQ6KAVX2(y *float32, w *byte, x *int8, corr *int32, dx *float32, nsb, rows int)

//go:noescape
func dotQ5KAVX2(y *float32, w *byte, x *int8, dx, fsum *float32, nsb, rows int)

//go:noescape
func dotIQ4XSAVX2(y *float32, w *byte, x *int8, dx *float32, nsb, rows int, tab *byte)

//go:noescape
func dotQ3KAVX2(y *float32, w *byte, x *int8, corr *int32, dx *float32, nsb, rows int)

//go:noescape
func dotQ2KAVX2(y *float32, w *byte, x *int8, dx, fsum *float32, nsb, rows int)

// The 32-value block kernels (IQ4_NL, Q4_1, Q5_0, Q5_1) share one
// signature: corr is Q5_0's −16·Σq per block, fsum the mins' x sums, tab
// the IQ4_NL code book.

//go:noescape
func dotIQ4NLAVX2(y *float32, w *byte, x *int8, corr *int32, dx, fsum *float32, nb, rows int, tab *byte)

//go:noescape
func dotQ4_1AVX2(y *float32, w *byte, x *int8, corr *int32, dx, fsum *float32, nb, rows int, tab *byte)

//go:noescape
func dotQ5_0AVX2(y *float32, w *byte, x *int8, corr *int32, dx, fsum *float32, nb, rows int, tab *byte)

//go:noescape
func dotQ5_1AVX2(y *float32, w *byte, x *int8, corr *int32, dx, fsum *float32, nb, rows int, tab *byte)

// iq4I8 is the IQ4_NL / IQ4_XS code book (integers in [-127, 113]) as
// bytes for VPSHUFB.
var iq4I8 = func() (t [16]byte) {
	for k, v := range quant.IQ4NLTable {
		t[k] = byte(v)
	}
	return
}()

// nf4I8 is the NF4 code book in int8, round(127·NF4Table[k]); nf4U8 is the
// same biased by +128 (unsigned operand of VPDPBUSD).
var nf4I8, nf4U8 = func() (s, u [16]byte) {
	for k, v := range quant.NF4Table {
		t := int8(math.Round(127 * float64(v)))
		s[k], u[k] = byte(t), byte(int(t)+128)
	}
	return
}()

// q8Act is one activation row quantized for the integer kernels of one
// weight type (layout in quantize).
type q8Act struct {
	typ    quant.Type
	vnni   bool
	q      []int8    // K values in the kernel's order
	corr   []int32   // spread integer corrections (accumulator initial values)
	dx     []float32 // x block scales (padded by 8)
	dx6    []float32 // Q6_K, Q3_K, Q2_K: dx repeated, one per 16 values
	fsum   []float32 // float32 sum of x per block (the mins of Q4_K, Q5_K, Q4_1, Q5_1)
	fsum16 []float32 // Q2_K: float32 sum of x per 16 values (its mins)
	isum   []int32   // Σ q per block
	nat    []int8    // q in natural order, before the reordering
}

//go:noescape
func quantQ8AVX2(x *float32, q *int8, d, fsum *float32, isum *int32, nb, bs32 int)

var q8Pool sync.Pool

// newQ8Acts quantizes the M rows of x (K values each) for w's integer
// kernel, or returns nil when this level or type has none.
func newQ8Acts(w *Matrix, x []float32, M int) []*q8Act {
	if curLevel < levelAVX2 || q8Block(w.Type) == 0 || w.Cols%typeBlock(w.Type) != 0 {
		return nil
	}
	K := w.Cols
	acts := make([]*q8Act, M)
	for m := range acts {
		a, _ := q8Pool.Get().(*q8Act)
		if a == nil {
			a = new(q8Act)
		}
		acts[m] = a
		if !a.quantize(w.Type, x[m*K:(m+1)*K], curLevel == levelAVX512 && hasVNNI) {
			putQ8Acts(acts[:m+1])
			return nil // NaN or ±Inf in x: the float path propagates them
		}
	}
	return acts
}

func putQ8Acts(acts []*q8Act) {
	for _, a := range acts {
		q8Pool.Put(a)
	}
}

func grow[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n)
	}
	s = s[:n]
	clear(s)
	return s
}

// quantize fills a from x for weight type t. Layout of q (positions of the
// x values, per type; the kernels read them in this order):
//
//	Q8_0, Q6_K: natural order.
//	Q4_0: groups of 4 blocks (128 values): the first halves (values 0..15,
//	      the low nibbles) of the 4 blocks, then their second halves; the
//	      last nb mod 4 blocks in natural order.
//	NF4:  pairs of blocks (128 values): the first halves (0..31, low
//	      nibbles) of both, then the second halves; an odd last block in
//	      natural order.
//	Q4_K: per super-block, the 32-value sub-blocks in the order 0,2,1,3,4,6,5,7
//	      (low and high nibbles of two 32-byte groups per 64-byte load).
//
// corr: Q8_0 (VNNI) −128·Σq at [8b]; Q4_0 −8·Σq at [4b]; NF4 (VNNI) −128·Σq
// at [8b]; Q6_K −32·Σq of each 16 values i at [4i]; the kernels add the
// dword groups of one block together, so the other entries are 0.
//
// It returns false, leaving a unusable, when x holds a NaN or an infinity
// (int8 blocks cannot carry them).
func (a *q8Act) quantize(t quant.Type, x []float32, vnni bool) bool {
	K := len(x)
	bs := q8Block(t)
	nb := K / bs
	a.typ, a.vnni = t, vnni
	a.q = grow(a.q, K)
	a.corr = grow(a.corr, K/4)
	a.fsum = grow(a.fsum, nb)
	a.isum = grow(a.isum, nb)
	a.dx = grow(a.dx, nb+8) // dotNF4AVX2 reads up to 7 past the end
	nat := a.q
	if t == quant.Q4_0 || t == quant.NF4 || t == quant.Q4_K {
		a.nat = grow(a.nat, K)
		nat = a.nat
	}
	if nb > 0 {
		quantQ8AVX2(&x[0], &nat[0], &a.dx[0], &a.fsum[0], &a.isum[0], nb, bs/32)
	}
	for _, f := range a.fsum {
		if f-f != 0 { // NaN or ±Inf in the block (or a sum that overflowed)
			return false
		}
	}
	q := a.q
	switch t {
	case quant.Q8_0:
		if vnni {
			for b, s := range a.isum {
				a.corr[8*b] = -128 * s
			}
		}
	case quant.Q4_0:
		n4 := nb &^ 3
		for b, s := range a.isum {
			a.corr[4*b] = -8 * s
			if b < n4 {
				g, i := b/4, b%4
				*(*[16]int8)(q[g*128+i*16:]) = *(*[16]int8)(nat[b*32:])
				*(*[16]int8)(q[g*128+64+i*16:]) = *(*[16]int8)(nat[b*32+16:])
			} else {
				*(*[32]int8)(q[b*32:]) = *(*[32]int8)(nat[b*32:])
			}
		}
	case quant.NF4:
		n2 := nb &^ 1
		for b, s := range a.isum {
			a.dx[b] /= 127 // the code book is in units of 1/127
			if vnni {
				a.corr[8*b] = -128 * s
			}
			if b < n2 {
				p, i := b/2, b%2
				*(*[32]int8)(q[p*128+i*32:]) = *(*[32]int8)(nat[b*64:])
				*(*[32]int8)(q[p*128+64+i*32:]) = *(*[32]int8)(nat[b*64+32:])
			} else {
				*(*[64]int8)(q[b*64:]) = *(*[64]int8)(nat[b*64:])
			}
		}
	case quant.Q4_K:
		for b := range nb {
			sb, j := b/8, b%8
			slot := [8]int{0, 2, 1, 3, 4, 6, 5, 7}[j]
			*(*[32]int8)(q[sb*256+slot*32:]) = *(*[32]int8)(nat[b*32:])
		}
	case quant.Q5_0:
		for b, s := range a.isum {
			a.corr[b] = -16 * s
		}
	case quant.Q6_K, quant.Q3_K:
		off := int32(32)
		if t == quant.Q3_K {
			off = 4
		}
		a.spreadDx16()
		for b := range nb {
			var s0 int32
			for _, v := range q[b*32 : b*32+16] {
				s0 += int32(v)
			}
			a.corr[8*b], a.corr[8*b+4] = -off*s0, -off*(a.isum[b]-s0)
		}
	case quant.Q2_K:
		a.spreadDx16()
		a.fsum16 = grow(a.fsum16, K/16)
		for i := range a.fsum16 {
			var s float32
			for _, v := range x[16*i : 16*i+16] {
				s += v
			}
			a.fsum16[i] = s
		}
	}
	return true
}

// spreadDx16 sets dx6 to dx repeated, one per 16 values (Q6_K, Q3_K, Q2_K:
// one weight scale per 16 values).
func (a *q8Act) spreadDx16() {
	nb := len(a.q) / 32
	a.dx6 = grow(a.dx6, 2*nb)
	for b, d := range a.dx[:nb] {
		a.dx6[2*b], a.dx6[2*b+1] = d, d
	}
}

// rowsDot sets y[n-lo] = Σₖ x[k]·W[n][k] for the rows n in [lo, hi), for
// the row x that a was quantized from.
func (a *q8Act) rowsDot(w *Matrix, y []float32, lo, hi int) {
	K := w.Cols
	rows := hi - lo
	if rows <= 0 {
		return
	}
	y = y[:rows]
	switch w.Type {
	case quant.Q8_0, quant.Q4_0:
		bb := 34
		if w.Type == quant.Q4_0 {
			bb = 18
		}
		nb := K / 32
		src := w.Data[lo*nb*bb : hi*nb*bb]
		f := dotQ8_0AVX2
		switch {
		case w.Type == quant.Q8_0 && a.vnni:
			f = dotQ8_0VNNI
		case w.Type == quant.Q4_0 && a.vnni && q4Aligned(src, nb):
			f = dotQ4_0VNNIL
		case w.Type == quant.Q4_0 && a.vnni:
			f = dotQ4_0VNNI
		case w.Type == quant.Q4_0:
			f = dotQ4_0AVX2
		}
		f(&y[0], &src[0], &a.q[0], &a.corr[0], &a.dx[0], nb, rows, 0)
	case quant.NF4:
		a.rowsDotNF4(w, y, lo, hi)
	case quant.Q4_K:
		src := w.Data[lo*K/256*144 : hi*K/256*144]
		switch {
		case a.vnni && hasVBMI && K%1024 == 0 && halfLineAligned(src):
			dotQ4KVNNIL(&y[0], &src[0], &a.q[0], &a.dx[0], &a.fsum[0], K/256, rows)
		case a.vnni:
			dotQ4KVNNI(&y[0], &src[0], &a.q[0], &a.dx[0], &a.fsum[0], K/256, rows)
		default:
			dotQ4KAVX2(&y[0], &src[0], &a.q[0], &a.dx[0], &a.fsum[0], K/256, rows)
		}
	case quant.Q6_K:
		src := w.Data[lo*K/256*210 : hi*K/256*210]
		if a.vnni {
			dotQ6KVNNI(&y[0], &src[0], &a.q[0], &a.corr[0], &a.dx6[0], K/256, rows)
		} else {
			dotQ6KAVX2(&y[0], &src[0], &a.q[0], &a.corr[0], &a.dx6[0], K/256, rows)
		}
	case quant.Q5_K:
		src := w.Data[lo*K/256*176 : hi*K/256*176]
		dotQ5KAVX2(&y[0], &src[0], &a.q[0], &a.dx[0], &a.fsum[0], K/256, rows)
	case quant.IQ4_XS:
		src := w.Data[lo*K/256*136 : hi*K/256*136]
		dotIQ4XSAVX2(&y[0], &src[0], &a.q[0], &a.dx[0], K/256, rows, &iq4I8[0])
	case quant.Q3_K:
		src := w.Data[lo*K/256*110 : hi*K/256*110]
		dotQ3KAVX2(&y[0], &src[0], &a.q[0], &a.corr[0], &a.dx6[0], K/256, rows)
	case quant.Q2_K:
		src := w.Data[lo*K/256*84 : hi*K/256*84]
		dotQ2KAVX2(&y[0], &src[0], &a.q[0], &a.dx6[0], &a.fsum16[0], K/256, rows)
	case quant.IQ4_NL, quant.Q4_1, quant.Q5_0, quant.Q5_1:
		f, bb := dotIQ4NLAVX2, 18
		switch w.Type {
		case quant.Q4_1:
			f, bb = dotQ4_1AVX2, 20
		case quant.Q5_0:
			f, bb = dotQ5_0AVX2, 22
		case quant.Q5_1:
			f, bb = dotQ5_1AVX2, 24
		}
		nb := K / 32
		src := w.Data[lo*nb*bb : hi*nb*bb]
		f(&y[0], &src[0], &a.q[0], &a.corr[0], &a.dx[0], &a.fsum[0], nb, rows, &iq4I8[0])
	default:
		panic("kernels: q8Act.rowsDot: " + w.Type.String())
	}
}

// q4Aligned reports that dotQ4_0VNNIL can run on the Q4_0 rows src of nb
// blocks each: whole periods of 32 blocks (576 bytes, 9 cache lines) from a
// start at 0 or 32 bytes into a cache line.
func q4Aligned(src []byte, nb int) bool {
	return hasVBMI && nb%32 == 0 && halfLineAligned(src)
}

// halfLineAligned reports that b starts 0 or 32 bytes into a 64-byte cache
// line (GGUF aligns tensor data to 32 bytes).
func halfLineAligned(b []byte) bool {
	return uintptr(unsafe.Pointer(&b[0]))%32 == 0
}

// rowsDotNF4 runs the kernel on runs of rows that lie in one
// double-quantization group (one c2); a row that straddles two groups, or
// any row when it has an odd number of blocks, goes through rowDotNF4.
func (a *q8Act) rowsDotNF4(w *Matrix, y []float32, lo, hi int) {
	K := w.Cols
	nb := K / 64
	codes, c2off, muoff := nf4Layout(w.Rows * K)
	mu := math.Float32frombits(binary.LittleEndian.Uint32(w.Data[muoff:]))
	tab := &nf4U8
	if !a.vnni {
		tab = &nf4I8
	}
	for n := lo; n < hi; {
		g := n * nb / 256
		if nb%2 == 1 || ((n+1)*nb-1)/256 != g {
			y[n-lo] = a.rowDotNF4(w, n, codes, c2off, mu)
			n++
			continue
		}
		e := n + 1 // rows [n, e) end inside group g
		for e < hi && ((e+1)*nb-1)/256 == g {
			e++
		}
		b := n * nb
		c2 := math.Float32frombits(binary.LittleEndian.Uint32(w.Data[c2off+4*g:]))
		_ = w.Data[codes+e*nb-1]
		_ = w.Data[e*nb*32-1]
		if a.vnni {
			dotNF4VNNI(&y[n-lo], &w.Data[b*32], &w.Data[codes+b], &a.q[0], &a.corr[0], &a.dx[0], nb, e-n, c2, mu, &tab[0])
		} else {
			dotNF4AVX2(&y[n-lo], &w.Data[b*32], &w.Data[codes+b], &a.q[0], &a.corr[0], &a.dx[0], nb, e-n, c2, mu, &tab[0])
		}
		n = e
	}
}

// rowDotNF4 is one NF4 row split at its double-quantization groups; a block
// pair that straddles a group boundary and an odd last block are summed in
// Go.
func (a *q8Act) rowDotNF4(w *Matrix, r, codes, c2off int, mu float32) float32 {
	K := w.Cols
	nb := K / 64
	b0 := r * nb
	tab := &nf4U8
	if !a.vnni {
		tab = &nf4I8
	}
	var s float32
	for rel := 0; rel < nb; {
		b := b0 + rel
		e := min(nb, (b/256+1)*256-b0) // relative end of this group
		if rel%2 == 1 || rel == nb-1 || e-rel < 2 {
			s += a.nf4Block(w.Data, rel, b, codes, c2off, mu)
			rel++
			continue
		}
		n := (e - rel) &^ 1
		c2 := math.Float32frombits(binary.LittleEndian.Uint32(w.Data[c2off+4*(b/256):]))
		_ = w.Data[codes+b+n-1]
		_ = w.Data[(b+n)*32-1]
		var v float32
		if a.vnni {
			dotNF4VNNI(&v, &w.Data[b*32], &w.Data[codes+b], &a.q[rel*64], &a.corr[8*rel], &a.dx[rel], n, 1, c2, mu, &tab[0])
		} else {
			dotNF4AVX2(&v, &w.Data[b*32], &w.Data[codes+b], &a.q[rel*64], &a.corr[8*rel], &a.dx[rel], n, 1, c2, mu, &tab[0])
		}
		s += v
		rel += n
	}
	return s
}

// nf4Block is one NF4 block (relative index rel, absolute b) in Go.
func (a *q8Act) nf4Block(data []byte, rel, b, codes, c2off int, mu float32) float32 {
	nb := len(a.q) / 64
	var lo, hi []int8
	if rel < nb&^1 {
		p, i := rel/2, rel%2
		lo, hi = a.q[p*128+i*32:][:32], a.q[p*128+64+i*32:][:32]
	} else {
		lo, hi = a.q[rel*64:][:32], a.q[rel*64+32:][:32]
	}
	q := (*[32]byte)(data[b*32:])
	var is int32
	for j := 0; j < 32; j++ {
		is += int32(int8(nf4I8[q[j]&15]))*int32(lo[j]) + int32(int8(nf4I8[q[j]>>4]))*int32(hi[j])
	}
	sc := nf4BlockScale(data, b, codes, c2off, mu)
	return sc * a.dx[rel] * float32(is)
}
