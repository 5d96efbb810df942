//go:build amd64 && !noasm

package kernels

import (
	"encoding/binary"
	"math"
	"sync"

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

// haveQ8 reports that this build has the integer matrix-vector kernels.
const haveQ8 = true

//go:noescape
func dotQ8_0VNNI(w *byte, x *int8, corr *int32, dx *float32, nb int) float32

//go:noescape
func dotQ4_0VNNI(w *byte, x *int8, corr *int32, dx *float32, nb int) float32

//go:noescape
func dotNF4VNNI(q, codes *byte, x *int8, corr *int32, dx *float32, nb int, c2, mu float32, tab *byte) float32

//go:noescape
func dotQ4KVNNI(w *byte, x *int8, dx, fsum *float32, nsb int) float32

//go:noescape
func dotQ6KVNNI(w *byte, x *int8, corr *int32, dx *float32, nsb int) float32

//go:noescape
func dotQ8_0AVX2(w *byte, x *int8, corr *int32, dx *float32, nb int) float32

//go:noescape
func dotQ4_0AVX2(w *byte, x *int8, corr *int32, dx *float32, nb int) float32

//go:noescape
func dotNF4AVX2(q, codes *byte, x *int8, corr *int32, dx *float32, nb int, c2, mu float32, tab *byte) float32

//go:noescape
func dotQ4KAVX2(w *byte, x *int8, dx, fsum *float32, nsb int) float32

//go:noescape
func dotQ6KAVX2(w *byte, x *int8, corr *int32, dx *float32, nsb int) float32

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
	typ  quant.Type
	vnni bool
	q    []int8    // K values in the kernel's order
	corr []int32   // spread integer corrections (accumulator initial values)
	dx   []float32 // x block scales (Q6_K: one per 16 values, repeated)
	fsum []float32 // Q4_K: float32 sum of x per 32 values
}

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
		a.quantize(w.Type, x[m*K:(m+1)*K], curLevel == levelAVX512 && hasVNNI)
		acts[m] = a
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
func (a *q8Act) quantize(t quant.Type, x []float32, vnni bool) {
	K := len(x)
	bs := q8Block(t)
	nb := K / bs
	a.typ, a.vnni = t, vnni
	a.q = grow(a.q, K)
	a.corr = grow(a.corr, K/4)
	switch t {
	case quant.Q6_K:
		a.dx = grow(a.dx, K/16)
	case quant.NF4:
		a.dx = grow(a.dx, nb+8) // dotNF4AVX2 reads up to 7 past the end
	default:
		a.dx = grow(a.dx, nb)
	}
	if t == quant.Q4_K {
		a.fsum = grow(a.fsum, nb)
	}
	var blk [64]int8
	for b := 0; b < nb; b++ {
		xb := x[b*bs : (b+1)*bs]
		var amax float32
		var fs float64
		for _, v := range xb {
			amax = max(amax, float32(math.Abs(float64(v))))
			fs += float64(v)
		}
		var d, id float32
		if amax > 0 {
			d, id = amax/127, 127/amax
		}
		sum := int32(0)
		for j, v := range xb {
			v *= id
			var q int32
			if v >= 0 {
				q = int32(v + 0.5)
			} else {
				q = int32(v - 0.5)
			}
			q = max(-127, min(127, q))
			blk[j] = int8(q)
			sum += q
		}
		q := a.q
		switch t {
		case quant.Q8_0:
			copy(q[b*32:], blk[:32])
			a.dx[b] = d
			if vnni {
				a.corr[8*b] = -128 * sum
			}
		case quant.Q4_0:
			a.dx[b] = d
			a.corr[4*b] = -8 * sum
			if b < nb&^3 {
				g, i := b/4, b%4
				copy(q[g*128+i*16:], blk[:16])
				copy(q[g*128+64+i*16:], blk[16:32])
			} else {
				copy(q[b*32:], blk[:32])
			}
		case quant.NF4:
			a.dx[b] = d / 127 // the code book is in units of 1/127
			if vnni {
				a.corr[8*b] = -128 * sum
			}
			if b < nb&^1 {
				p, i := b/2, b%2
				copy(q[p*128+i*32:], blk[:32])
				copy(q[p*128+64+i*32:], blk[32:64])
			} else {
				copy(q[b*64:], blk[:64])
			}
		case quant.Q4_K:
			a.dx[b] = d
			a.fsum[b] = float32(fs)
			sb, j := b/8, b%8
			slot := [8]int{0, 2, 1, 3, 4, 6, 5, 7}[j]
			copy(q[sb*256+slot*32:], blk[:32])
		case quant.Q6_K:
			copy(q[b*32:], blk[:32])
			a.dx[2*b], a.dx[2*b+1] = d, d
			var s0, s1 int32
			for j := 0; j < 16; j++ {
				s0 += int32(blk[j])
				s1 += int32(blk[16+j])
			}
			a.corr[8*b], a.corr[8*b+4] = -32*s0, -32*s1
		}
	}
}

// rowDot returns Σₖ x[k]·W[r][k] for the row x that a was quantized from.
func (a *q8Act) rowDot(w *Matrix, r int) float32 {
	K := w.Cols
	off := r * K
	switch w.Type {
	case quant.Q8_0:
		src := w.Data[off/32*34 : (off+K)/32*34]
		nb := K / 32
		n4 := nb &^ 3
		var s float32
		if n4 > 0 {
			if a.vnni {
				s = dotQ8_0VNNI(&src[0], &a.q[0], &a.corr[0], &a.dx[0], n4)
			} else {
				s = dotQ8_0AVX2(&src[0], &a.q[0], &a.corr[0], &a.dx[0], n4)
			}
		}
		for b := n4; b < nb; b++ {
			blk := (*[34]byte)(src[b*34:])
			xq := a.q[b*32 : b*32+32]
			var is int32
			for j := 0; j < 32; j++ {
				is += int32(int8(blk[2+j])) * int32(xq[j])
			}
			s += f16(uint16(blk[0])|uint16(blk[1])<<8) * a.dx[b] * float32(is)
		}
		return s
	case quant.Q4_0:
		src := w.Data[off/32*18 : (off+K)/32*18]
		nb := K / 32
		n4 := nb &^ 3
		var s float32
		if n4 > 0 {
			if a.vnni {
				s = dotQ4_0VNNI(&src[0], &a.q[0], &a.corr[0], &a.dx[0], n4)
			} else {
				s = dotQ4_0AVX2(&src[0], &a.q[0], &a.corr[0], &a.dx[0], n4)
			}
		}
		for b := n4; b < nb; b++ {
			blk := (*[18]byte)(src[b*18:])
			xq := a.q[b*32 : b*32+32]
			var is int32
			for j := 0; j < 16; j++ {
				is += (int32(blk[2+j]&15)-8)*int32(xq[j]) + (int32(blk[2+j]>>4)-8)*int32(xq[16+j])
			}
			s += f16(uint16(blk[0])|uint16(blk[1])<<8) * a.dx[b] * float32(is)
		}
		return s
	case quant.NF4:
		return a.rowDotNF4(w, r)
	case quant.Q4_K:
		src := w.Data[off/256*144 : (off+K)/256*144]
		if a.vnni {
			return dotQ4KVNNI(&src[0], &a.q[0], &a.dx[0], &a.fsum[0], K/256)
		}
		return dotQ4KAVX2(&src[0], &a.q[0], &a.dx[0], &a.fsum[0], K/256)
	case quant.Q6_K:
		src := w.Data[off/256*210 : (off+K)/256*210]
		if a.vnni {
			return dotQ6KVNNI(&src[0], &a.q[0], &a.corr[0], &a.dx[0], K/256)
		}
		return dotQ6KAVX2(&src[0], &a.q[0], &a.corr[0], &a.dx[0], K/256)
	}
	panic("kernels: q8Act.rowDot: " + w.Type.String())
}

// rowDotNF4 splits the row at its double-quantization groups (one c2 per
// 256 blocks); a block pair that straddles a group boundary and an odd last
// block are summed in Go.
func (a *q8Act) rowDotNF4(w *Matrix, r int) float32 {
	K := w.Cols
	nb := K / 64
	codes, c2off, muoff := nf4Layout(w.Rows * K)
	mu := math.Float32frombits(binary.LittleEndian.Uint32(w.Data[muoff:]))
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
		if a.vnni {
			s += dotNF4VNNI(&w.Data[b*32], &w.Data[codes+b], &a.q[rel*64], &a.corr[8*rel], &a.dx[rel], n, c2, mu, &tab[0])
		} else {
			s += dotNF4AVX2(&w.Data[b*32], &w.Data[codes+b], &a.q[rel*64], &a.corr[8*rel], &a.dx[rel], n, c2, mu, &tab[0])
		}
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
