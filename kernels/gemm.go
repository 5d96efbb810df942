package kernels

import (
	"fmt"
	"sync"

	"github.com/qtune/qtune/quant"
)

// Blocked, packed GEMM driver (the BLIS loop nest) around an assembly
// micro-kernel. C (M×N) = A (M×K) · B (K×N), where A and B are views
// (operandA, operandB) that cover the three layouts training needs and
// quantized weights:
//
//	loop jc over N in ncBlock columns          (each worker owns its columns)
//	  loop pc over K in kcBlock steps           (fixed: the reduction order)
//	    pack B[pc:pc+kc, jc:jc+nc] into NR-wide panels (decoding W here)
//	    loop ic over M in mcBlock rows
//	      pack A[ic:ic+mc, pc:pc+kc] into MR-tall panels
//	      for each NR panel, for each MR panel: micro-kernel → C tile
//
// Each element of B is packed (or decoded) once per call; A once per
// ncBlock columns of a worker's range. Packing is copying or, for the
// operands stored across k (Wᵀ, X in X·Wᵀ, dY in dY·W), transposing in
// registers (transposePanel). The micro-kernel prefetches its C tile before
// its last k steps.
//
// Determinism: every C element is one FMA chain over each kc block (k
// ascending), added to C block after block in pc order; the split over
// workers only decides who computes which tile, never the order of the sum,
// so results are bit-identical for any number of workers.
//
// Memory: per worker mcBlock·kcBlock + ncBlock·kcBlock floats (2 MiB: the
// A block stays in a 1 MiB L2, the B block in L3), pooled; a quantized W is
// decoded one kc×nc block at a time, never whole, once per call.
const (
	kcBlock = 256  // a multiple of every block size (32, 64, 256)
	mcBlock = 512  // a multiple of every MR
	ncBlock = 1536 // a multiple of every NR
)

// operandA is A: element (i, k) at a[i*rs+k*cs].
type operandA struct {
	a      []float32
	rs, cs int
}

// operandB is B: element (k, j) at f[k*rs+j*cs], or, when w is set, decoded
// from the weight matrix: B[k][j] = W[j][k] when wT (forward, X·Wᵀ), else
// B[k][j] = W[k][j] (backward, dY·W).
type operandB struct {
	f      []float32
	rs, cs int
	w      *Matrix
	wT     bool
}

type gemmBufs struct {
	ap, bp, row, tmp []float32
}

var gemmBufPool sync.Pool

func getGemmBufs(mk microKernel) *gemmBufs {
	if b, ok := gemmBufPool.Get().(*gemmBufs); ok && len(b.tmp) >= mk.mr*mk.nr {
		return b
	}
	return &gemmBufs{
		ap:  make([]float32, mcBlock*kcBlock),
		bp:  make([]float32, ncBlock*kcBlock),
		row: make([]float32, max(ncBlock+2*256, 64*kcBlock)),
		tmp: make([]float32, 16*64),
	}
}

// gemm runs C = A·B (accum false) or C += A·B on the micro-kernel mk, with
// C (M×N) at c[i*ldc+j].
func gemm(p *Pool, mk microKernel, c []float32, ldc, M, N, K int, A operandA, B operandB, accum bool) {
	if M == 0 || N == 0 {
		return
	}
	if K == 0 {
		if !accum {
			for i := 0; i < M; i++ {
				clear(c[i*ldc : i*ldc+N])
			}
		}
		return
	}
	un := (N + mk.nr - 1) / mk.nr
	um := (M + mk.mr - 1) / mk.mr
	if un >= p.Workers() || un >= um {
		p.Parallel(N, mk.nr, func(j0, j1 int) {
			gemmBlock(mk, c, ldc, 0, M, j0, j1, K, A, B, accum)
		})
		return
	}
	p.Parallel(M, mk.mr, func(i0, i1 int) {
		gemmBlock(mk, c, ldc, i0, i1, 0, N, K, A, B, accum)
	})
}

func gemmBlock(mk microKernel, c []float32, ldc, i0, i1, j0, j1, K int, A operandA, B operandB, accum bool) {
	bufs := getGemmBufs(mk)
	defer gemmBufPool.Put(bufs)
	mr, nr := mk.mr, mk.nr
	tmp := bufs.tmp[:mr*nr]
	for jc := j0; jc < j1; jc += ncBlock {
		nc := min(ncBlock, j1-jc)
		for pc := 0; pc < K; pc += kcBlock {
			kc := min(kcBlock, K-pc)
			acc := 0
			if accum || pc > 0 {
				acc = 1
			}
			packB(bufs, B, pc, kc, jc, nc, nr)
			for ic := i0; ic < i1; ic += mcBlock {
				mc := min(mcBlock, i1-ic)
				packA(bufs.ap, A, ic, mc, pc, kc, mr)
				for jr := 0; jr < nc; jr += nr {
					nn := min(nr, nc-jr)
					bpan := &bufs.bp[jr*kc]
					for ir := 0; ir < mc; ir += mr {
						mm := min(mr, mc-ir)
						apan := &bufs.ap[ir*kc]
						ci := (ic+ir)*ldc + jc + jr
						if mm == mr && nn == nr {
							_ = c[ci+(mr-1)*ldc+nr-1]
							mk.fn(kc, apan, bpan, &c[ci], ldc, acc)
							continue
						}
						mk.fn(kc, apan, bpan, &tmp[0], nr, 0)
						for r := 0; r < mm; r++ {
							cr := c[ci+r*ldc : ci+r*ldc+nn]
							tr := tmp[r*nr : r*nr+nn]
							if acc != 0 {
								for j := range cr {
									cr[j] += tr[j]
								}
							} else {
								copy(cr, tr)
							}
						}
					}
				}
			}
		}
	}
}

// packA writes A[ic:ic+mc, pc:pc+kc] as MR-row panels: panel q holds
// ap[q*mr*kc + k*mr + r] = A[ic+q*mr+r][pc+k], rows past mc zero.
func packA(ap []float32, A operandA, ic, mc, pc, kc, mr int) {
	for ir := 0; ir < mc; ir += mr {
		pan := ap[ir*kc : ir*kc+mr*kc]
		mm := min(mr, mc-ir)
		if A.rs == 1 { // A stored transposed: a row of k is contiguous in i
			copyPanel(pan, A.a[pc*A.cs+ic+ir:], A.cs, kc, mm, mr)
			continue
		}
		if A.cs == 1 { // rows of A contiguous: transpose
			transposePanel(pan, A.a[(ic+ir)*A.rs+pc:], A.rs, kc, mm, mr)
			continue
		}
		for r := 0; r < mm; r++ {
			base := (ic+ir+r)*A.rs + pc*A.cs
			for k := 0; k < kc; k++ {
				pan[k*mr+r] = A.a[base+k*A.cs]
			}
		}
		zeroCols(pan, kc, mm, mr)
	}
}

// packB writes B[pc:pc+kc, jc:jc+nc] as NR-column panels: panel q holds
// bp[q*nr*kc + k*nr + j] = B[pc+k][jc+q*nr+j], columns past nc zero.
func packB(bufs *gemmBufs, B operandB, pc, kc, jc, nc, nr int) {
	bp := bufs.bp
	switch {
	case B.w != nil && B.wT: // B[k][j] = W[j][k]: decode rows of W, scatter
		rows := bufs.row[:nr*kc]
		for jr := 0; jr < nc; jr += nr {
			pan := bp[jr*kc : jr*kc+nr*kc]
			nn := min(nr, nc-jr)
			for j := 0; j < nn; j++ {
				decodeRow(B.w, rows[j*kc:(j+1)*kc], jc+jr+j, pc)
			}
			transposePanel(pan, rows, kc, kc, nn, nr)
		}
	case B.w != nil: // B[k][j] = W[k][j]: decode the row segment, copy
		bs := blockSize(B.w.Type)
		lo := jc / bs * bs
		hi := (jc + nc + bs - 1) / bs * bs
		row := bufs.row[:hi-lo]
		for k := 0; k < kc; k++ {
			decodeRow(B.w, row, pc+k, lo)
			seg := row[jc-lo:]
			for jr := 0; jr < nc; jr += nr {
				nn := min(nr, nc-jr)
				d := bp[jr*kc+k*nr : jr*kc+k*nr+nr]
				copy(d, seg[jr:jr+nn])
				clear(d[nn:])
			}
		}
	case B.cs == 1: // rows of B contiguous
		for jr := 0; jr < nc; jr += nr {
			pan := bp[jr*kc : jr*kc+nr*kc]
			copyPanel(pan, B.f[pc*B.rs+jc+jr:], B.rs, kc, min(nr, nc-jr), nr)
		}
	default: // columns of B contiguous (B = Wᵀ with W row-major)
		for jr := 0; jr < nc; jr += nr {
			pan := bp[jr*kc : jr*kc+nr*kc]
			nn := min(nr, nc-jr)
			if B.rs == 1 {
				transposePanel(pan, B.f[(jc+jr)*B.cs+pc:], B.cs, kc, nn, nr)
				continue
			}
			for j := 0; j < nn; j++ {
				base := (jc+jr+j)*B.cs + pc*B.rs
				for k := 0; k < kc; k++ {
					pan[k*nr+j] = B.f[base+k*B.rs]
				}
			}
			zeroCols(pan, kc, nn, nr)
		}
	}
}

// transposePanel writes pan[k*nr+j] = src[j*ld+k] for j < nn, k < kc, and
// zeros columns nn..nr-1: nn rows of src become one packed B panel.
//
// Groups of 16, 8 or 4 rows go through transposeFast (in-register
// transposes of 16×16 or 8×8 blocks); what it leaves, the rows past the last
// group and the k past its last block, is done here.
func transposePanel(pan, src []float32, ld, kc, nn, nr int) {
	for j := 0; j < nn; {
		g, kd := transposeFast(pan[j:], src[j*ld:], ld, kc, nn-j, nr)
		if g == 0 {
			g = nn - j
		}
		for r := j; r < j+g && kd < kc; r++ {
			s := src[r*ld+kd : r*ld+kc]
			d := pan[kd*nr+r:]
			for k, v := range s {
				d[k*nr] = v
			}
		}
		j += g
	}
	zeroCols(pan, kc, nn, nr)
}

// copyPanel writes pan[k*nr+j] = src[k*ld+j] for j < nn, k < kc, and zeros
// columns nn..nr-1: kc rows of src become one packed panel.
func copyPanel(pan, src []float32, ld, kc, nn, nr int) {
	if !copyFast(pan, src, ld, kc, nn, nr) {
		for k := 0; k < kc; k++ {
			copy(pan[k*nr:k*nr+nn], src[k*ld:k*ld+nn])
		}
	}
	zeroCols(pan, kc, nn, nr)
}

func zeroCols(pan []float32, kc, nn, nr int) {
	if nn == nr {
		return
	}
	for k := 0; k < kc; k++ {
		clear(pan[k*nr+nn : k*nr+nr])
	}
}

func blockSize(t quant.Type) int {
	in, err := quant.Lookup(t)
	if err != nil {
		panic(err)
	}
	return in.BlockSize
}

func checkGemm(op string, c, a, b []float32, M, N, K, la, lb int) {
	if M < 0 || N < 0 || K < 0 || len(c) < M*N || len(a) < la || len(b) < lb {
		panic(fmt.Sprintf("kernels: %s: c %d a %d b %d for M=%d N=%d K=%d", op, len(c), len(a), len(b), M, N, K))
	}
}

// GemmNT computes C (M×N) = A (M×K) · Bᵀ for B (N×K), or C += A·Bᵀ when
// accumulate. This is the forward Y = X·Wᵀ of a float32 weight or adapter.
// Reference loop:
//
//	for m { for n { var s float32; for k { s += a[m*K+k]*b[n*K+k] }; c[m*N+n] (+)= s } }
func GemmNT(p *Pool, c, a, b []float32, M, N, K int, accumulate bool) {
	checkGemm("GemmNT", c, a, b, M, N, K, M*K, N*K)
	if kern.fn == nil {
		gemmNTGeneric(p, c, a, b, M, N, K, accumulate)
		return
	}
	gemm(p, kern, c, N, M, N, K, operandA{a: a, rs: K, cs: 1}, operandB{f: b, rs: 1, cs: K}, accumulate)
}

// GemmNN computes C (M×N) += A (M×K) · B (K×N). This is the input gradient
// dX += dY·W of a float32 weight or adapter. Reference loop:
//
//	for m { for n { for k { c[m*N+n] += a[m*K+k]*b[k*N+n] } } }
func GemmNN(p *Pool, c, a, b []float32, M, N, K int) {
	checkGemm("GemmNN", c, a, b, M, N, K, M*K, K*N)
	if kern.fn == nil {
		gemmNNGeneric(p, c, a, b, M, N, K)
		return
	}
	gemm(p, kern, c, N, M, N, K, operandA{a: a, rs: K, cs: 1}, operandB{f: b, rs: N, cs: 1}, true)
}

// GemmTN computes C (M×N) += Aᵀ · B for A (K×M) and B (K×N). This is the
// weight gradient dW += dYᵀ·X with dY (B·T × out) as A and X (B·T × in) as
// B: M = out, N = in, K = B·T. Reference loop:
//
//	for m { for n { for k { c[m*N+n] += a[k*M+m]*b[k*N+n] } } }
func GemmTN(p *Pool, c, a, b []float32, M, N, K int) {
	checkGemm("GemmTN", c, a, b, M, N, K, K*M, K*N)
	if kern.fn == nil {
		gemmTNGeneric(p, c, a, b, M, N, K)
		return
	}
	gemm(p, kern, c, N, M, N, K, operandA{a: a, rs: 1, cs: M}, operandB{f: b, rs: N, cs: 1}, true)
}
