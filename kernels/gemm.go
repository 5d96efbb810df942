package kernels

import (
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/qtune/qtune/quant"
)

// Blocked, packed GEMM driver (the BLIS loop nest) around an assembly
// micro-kernel. C (M×N) = A (M×K) · B (K×N), where A and B are views
// (operandA, operandB) that cover the three layouts training needs and
// quantized weights.
//
// One operand is packed once into a buffer all workers share: the smaller
// one (A when M ≤ N), or B whenever it is a quantized W read row by row
// (MatMulT), so that each block of W is decoded exactly once. The other is
// split into tasks (column ranges of B, or row ranges of A) that the workers
// take in turn, each packing its own share privately:
//
//	loop s0 over the shared operand's rows/columns in sChunk steps
//	  loop k0 over K in chunks whose shared pack fits sharedMax
//	    all workers: pack the shared operand [s0 chunk, k0 chunk]
//	    all workers, tasks taken dynamically, each task:
//	      column tasks (A shared):
//	        loop pc over the chunk in kcBlock steps  (fixed: the reduction order)
//	          pack the task's columns of B
//	          for each NR panel, for each MR panel: micro-kernel → C tile
//	      row tasks (B shared):
//	        loop over the chunk in groups of pcGroup kcBlock steps
//	          pack the task's rows of A for each step of the group
//	          for each NR panel, for each MR panel:
//	            for each pc of the group: micro-kernel → C tile
//
// The row tasks' order keeps a C tile in cache across its kc blocks: with B
// shared, C is the largest operand (the weight gradient dW = dYᵀ·X has K =
// B·T), and the tile after the current one is prefetched towards L2 while
// the current one runs.
//
// Every element of A and B is packed (or decoded) once per call. Packing is
// copying or, for the operands stored across k (Wᵀ, X in X·Wᵀ, dY in
// dY·W), transposing in registers (transposePanel). The micro-kernel
// prefetches its C tile before its last k steps.
//
// Determinism: every C element is one FMA chain over each kc block (k
// ascending), added to C block after block in pc order, by whichever worker
// takes its task; the tasks and blocks are fixed by the shape alone, so
// results are bit-identical for any number of workers.
//
// Memory: the shared pack (at most 65/64·sharedMax floats, 4.06 MiB) per
// call, and per worker a private A or B block of mTaskMax·pcGroup·kcBlock
// or nTaskMax·kcBlock floats, pooled; a quantized W is decoded one block at
// a time, never whole.
const (
	kcBlock  = 256 // a multiple of every block size (32, 64, 256)
	mcBlock  = 512 // rows of shared A swept per B panel (an L2-sized block); a multiple of every MR
	mTaskMax = 128 // rows of a row task (its A block stays in L2); a multiple of every MR
	nTaskMax = 384 // columns of a column task; a multiple of every NR
	pcGroup  = 2   // kc blocks of a row task's A packed together, so that each C tile takes them in turn while in cache
	colGroup = 768 // columns of a quantized W decoded together: a multiple of every NR and block size
)

// The shared operand is packed sChunk rows or columns at a time (a multiple
// of mcBlock and colGroup), over as many kcBlock steps of K as fit in
// sharedMax floats (65/64 of it: slack for padding; sChunk·kcBlock ≤
// sharedMax). They are variables only so that a test can shrink them: the
// results do not depend on them (the K chunks are whole kcBlock steps).
var (
	sChunk    = 3072
	sharedMax = 1 << 20
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

// gemmBufs is a worker's private scratch: a task's A or B block, a decoded
// row strip, and an edge tile.
type gemmBufs struct {
	ap, bp, row, tmp []float32
}

var gemmBufPool freeList[gemmBufs]

// gemmBufsFloats is the size of a worker's gemmBufs, one scratch block.
const gemmBufsFloats = mTaskMax*kcBlock*pcGroup + nTaskMax*kcBlock + 64*kcBlock + 16*64

func getGemmBufs() *gemmBufs {
	if b := gemmBufPool.get(); b != nil {
		return b
	}
	f := scratch.get(gemmBufsFloats)
	b := &gemmBufs{}
	b.ap, f = f[:mTaskMax*kcBlock*pcGroup:mTaskMax*kcBlock*pcGroup], f[mTaskMax*kcBlock*pcGroup:]
	b.bp, f = f[:nTaskMax*kcBlock:nTaskMax*kcBlock], f[nTaskMax*kcBlock:]
	b.row, f = f[:64*kcBlock:64*kcBlock], f[64*kcBlock:]
	b.tmp = f
	return b
}

// putGemmBufs keeps b for the next call, or returns its block to the
// scratch when enough are kept.
func putGemmBufs(b *gemmBufs) {
	if !gemmBufPool.put(b) {
		scratch.put(b.ap)
	}
}

// gemm runs C = A·B (accum false) or C += A·B on the micro-kernel mk, with
// C (M×N) at c[i*ldc+j].
func gemm(p *Pool, mk microKernel, c []float32, ldc, M, N, K int, A operandA, B operandB, accum bool) {
	gemmW(p, mk, c, ldc, M, N, K, A, B, nil, accum)
}

// gemmW is gemm with B decoded from the weight matrix w (B.w unset; B.wT
// says how): w is copied, not kept, so a caller's Matrix stays on its stack.
func gemmW(p *Pool, mk microKernel, c []float32, ldc, M, N, K int, A operandA, B operandB, w *Matrix, accum bool) {
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
	mr := mk.mr
	g := gemmCalls.get()
	if g == nil {
		g = new(gemmCall)
	}
	g.mk, g.c, g.ldc, g.A, g.accum = mk, c, ldc, A, accum
	g.B = B
	if w != nil {
		g.w = *w
		g.B.w = &g.w
	}
	B = g.B
	g.shareA = M <= N && (B.w == nil || B.wT)
	W := p.Workers()
	// S is the shared dimension (M or N), T the task dimension.
	S, tUnit, tMax := M, mk.nr, nTaskMax
	g.T, g.sUnit = N, mr
	if !g.shareA {
		S, tUnit, tMax = N, mr, mTaskMax
		g.T, g.sUnit = M, mk.nr
	}
	g.tUnit = tUnit
	// Row tasks prefetch the next C tile where it pays: beside tiles of 256
	// or more k steps, or where C (16 MiB or more, half this L3) comes from
	// memory (the call and its 32 prefetches cost a few percent beside 64 k
	// steps on a C in cache).
	g.pfC = K >= kcBlock || M*N >= 4<<20
	// Tasks: U units of tUnit split evenly (sizes differ by at most one
	// unit) into about three per worker, each at most tMax wide and, for row
	// tasks, at least 32 rows so that a shared B panel serves several tiles.
	U := (g.T + tUnit - 1) / tUnit
	uMax := tMax / tUnit
	nTask := max(3*W, (U+uMax-1)/uMax)
	if !g.shareA {
		nTask = min(nTask, max(1, U/(32/tUnit)))
	}
	g.U, g.nTask = U, max(min(nTask, U), (U+uMax-1)/uMax)
	// Shared packing units: groups of rows of A or columns of B.
	g.gw = 8 * g.sUnit
	if !g.shareA && B.w != nil {
		g.gw = colGroup
	}
	for s0 := 0; s0 < S; s0 += sChunk {
		g.s0, g.sn = s0, min(sChunk, S-s0)
		g.sPad = (g.sn + g.sUnit - 1) / g.sUnit * g.sUnit
		// A 1/64 slack for the padding: 2048 columns padded to 2064 (whole
		// panels of 48) must still take two kc blocks per chunk.
		kChunk := max(kcBlock, (sharedMax+sharedMax/64)/g.sPad/kcBlock*kcBlock)
		g.shared = scratch.get(g.sPad * min(K, kChunk))
		for k0 := 0; k0 < K; k0 += kChunk {
			g.k0, g.k1 = k0, min(K, k0+kChunk)
			g.nPc = (g.k1 - k0 + kcBlock - 1) / kcBlock
			g.nGroup = (g.sn + g.gw - 1) / g.gw
			g.run(p, g.nPc*g.nGroup, g.nTask)
		}
		scratch.put(g.shared)
	}
	g.c, g.A, g.B, g.w, g.shared = nil, operandA{}, operandB{}, Matrix{}, nil // no reference kept
	gemmCalls.put(g)
}

// gemmCall is one gemm call's state, kept between calls (gemmCalls) so that
// a call allocates nothing: its two task phases are methods, run by the
// pool's workers through the runner interface.
type gemmCall struct {
	mk                        microKernel
	c                         []float32
	ldc                       int
	A                         operandA
	B                         operandB
	w                         Matrix
	accum, shareA, pfC        bool
	T, sUnit, tUnit, U, nTask int
	gw, s0, sn, sPad          int
	k0, k1, nPc, nGroup       int
	shared                    []float32
	n1, n2                    int
	next1, done1, next2       atomic.Int64
	wg                        sync.WaitGroup
}

var gemmCalls freeList[gemmCall]

// pack is task u of the first phase: the shared pack of kc block pc of the
// chunk, for one group of rows of A or columns of B (packed panel q of the
// block at (pc-k0)*sPad + q*sUnit*kc).
func (g *gemmCall) pack(bufs *gemmBufs, u int) {
	pc := g.k0 + u/g.nGroup*kcBlock
	kc := min(kcBlock, g.k1-pc)
	g0 := u % g.nGroup * g.gw
	g1 := min(g.sn, g0+g.gw)
	dst := g.shared[(pc-g.k0)*g.sPad+g0*kc:]
	if g.shareA {
		packA(dst, g.A, g.s0+g0, g1-g0, pc, kc, g.mk.mr)
	} else {
		packB(dst, bufs.row, g.B, pc, kc, g.s0+g0, g1-g0, g.mk.nr)
	}
}

// task is task t of the second phase: its rows (or columns) of C against
// the shared pack.
func (g *gemmCall) task(bufs *gemmBufs, t int) {
	mk, c, ldc, k0, k1, sPad, shared := g.mk, g.c, g.ldc, g.k0, g.k1, g.sPad, g.shared
	mr, nr := mk.mr, mk.nr
	t0 := t * g.U / g.nTask * g.tUnit
	t1 := min(g.T, (t+1)*g.U/g.nTask*g.tUnit)
	if !g.shareA {
		// Row tasks: the task's A for up to pcGroup kc blocks at once, so
		// that each C tile takes them in turn while it is in cache.
		mPad := (t1 - t0 + mr - 1) / mr * mr
		for pg := k0; pg < k1; pg += pcGroup * kcBlock {
			pe := min(k1, pg+pcGroup*kcBlock)
			for pc := pg; pc < pe; pc += kcBlock {
				packA(bufs.ap[(pc-pg)/kcBlock*mPad*kcBlock:], g.A, t0, t1-t0, pc, min(kcBlock, pe-pc), mr)
			}
			sh := shared[(pg-k0)*sPad:]
			if pe-pg <= kcBlock && !g.pfC { // one shallow block: the plain loop
				acc := 0
				if g.accum || pg > 0 {
					acc = 1
				}
				gemmTiles(mk, c, ldc, t0, t1-t0, g.s0, g.sn, pe-pg, bufs.ap, sh, acc, bufs.tmp)
				continue
			}
			gemmTilesK(mk, c, ldc, t0, t1-t0, g.s0, g.sn, pg, pe, sh, sPad, bufs.ap, mPad, g.accum, g.pfC, bufs.tmp)
		}
		return
	}
	for pc := k0; pc < k1; pc += kcBlock {
		kc := min(kcBlock, k1-pc)
		acc := 0
		if g.accum || pc > 0 {
			acc = 1
		}
		packB(bufs.bp, bufs.row, g.B, pc, kc, t0, t1-t0, nr)
		sh := shared[(pc-k0)*sPad:]
		for ic := 0; ic < g.sn; ic += mcBlock {
			mc := min(mcBlock, g.sn-ic)
			gemmTiles(mk, c, ldc, g.s0+ic, mc, t0, t1-t0, kc, sh[ic*kc:], bufs.bp, acc, bufs.tmp)
		}
	}
}

// run runs pack(bufs, u) for u < n1, then task(bufs, t) for t < n2, on the
// pool's workers, each with its own pooled scratch taking the next task as
// it finishes one. No second-phase task starts before every pack has
// finished; a worker that starts late (a busy core) simply finds the first
// phase done.
func (g *gemmCall) run(p *Pool, n1, n2 int) {
	g.n1, g.n2 = n1, n2
	g.next1.Store(0)
	g.done1.Store(0)
	g.next2.Store(0)
	p.parallelRunner(min(max(n1, n2), p.Workers()), g, &g.wg)
}

// Run is one worker's share of run (the pool's runner interface).
func (g *gemmCall) Run(_, _ int) {
	bufs := getGemmBufs()
	defer putGemmBufs(bufs)
	for {
		u := int(g.next1.Add(1)) - 1
		if u >= g.n1 {
			break
		}
		g.pack(bufs, u)
		g.done1.Add(1)
	}
	for g.done1.Load() < int64(g.n1) {
		runtime.Gosched() // another worker is finishing its share
	}
	for {
		t := int(g.next2.Add(1)) - 1
		if t >= g.n2 {
			return
		}
		g.task(bufs, t)
	}
}

// gemmTiles runs the micro-kernel over C[i0:i0+mc, j0:j0+nc] from the packed
// A panels ap (rows i0+ir at ap[ir*kc]) and B panels bp (columns j0+jr at
// bp[jr*kc]): each NR panel of B against every MR panel of A.
func gemmTiles(mk microKernel, c []float32, ldc, i0, mc, j0, nc, kc int, ap, bp []float32, acc int, tmp []float32) {
	mr, nr := mk.mr, mk.nr
	tmp = tmp[:mr*nr]
	for jr := 0; jr < nc; jr += nr {
		nn := min(nr, nc-jr)
		bpan := &bp[jr*kc : jr*kc+nr*kc][0]
		for ir := 0; ir < mc; ir += mr {
			mm := min(mr, mc-ir)
			apan := &ap[ir*kc : ir*kc+mr*kc][0]
			ci := (i0+ir)*ldc + j0 + jr
			runTile(mk, kc, apan, bpan, c, ci, ldc, mm, nn, acc, tmp)
		}
	}
}

// runTile computes one mm×nn (≤ MR×NR) tile of C at c[ci] from an A and a
// B panel: straight into C when the tile is whole, else through tmp and
// then added (acc ≠ 0) or copied into the tile's part of C.
func runTile(mk microKernel, kc int, apan, bpan *float32, c []float32, ci, ldc, mm, nn, acc int, tmp []float32) {
	mr, nr := mk.mr, mk.nr
	if mm == mr && nn == nr {
		_ = c[ci+(mr-1)*ldc+nr-1]
		mk.fn(kc, apan, bpan, &c[ci], ldc, acc)
		return
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

// gemmTilesK runs the micro-kernel over C[i0:i0+mc, j0:j0+nc] for the kc
// blocks pc = pg, pg+kcBlock, … < pe, all of them on one C tile before the
// next, so that the tile stays in cache between its blocks (the sums are
// those of gemmTiles block after block: one FMA chain per block, added to C
// in pc order). Block b (pc = pg + b·kcBlock) has its A panels at
// ap[b*mPad*kcBlock:] and its B panels at bp[b*bStride*kcBlock:] (mPad, bStride
// the packs' padded widths), laid out as gemmTiles reads them. With pf, the
// C tile after the current one is prefetched while it runs.
func gemmTilesK(mk microKernel, c []float32, ldc, i0, mc, j0, nc, pg, pe int, bp []float32, bStride int, ap []float32, mPad int, accum, pf bool, tmp []float32) {
	mr, nr := mk.mr, mk.nr
	tmp = tmp[:mr*nr]
	for jr := 0; jr < nc; jr += nr {
		nn := min(nr, nc-jr)
		for ir := 0; ir < mc; ir += mr {
			mm := min(mr, mc-ir)
			ci := (i0+ir)*ldc + j0 + jr
			if pf {
				if ni, nj := ir+mr, jr; ni+mr <= mc && nj+nr <= nc {
					prefetchTile(&c[(i0+ni)*ldc+j0+nj], ldc, mr, nr)
				} else if ni, nj = 0, jr+nr; ni+mr <= mc && nj+nr <= nc {
					prefetchTile(&c[(i0+ni)*ldc+j0+nj], ldc, mr, nr)
				}
			}
			for pc := pg; pc < pe; pc += kcBlock {
				kc := min(kcBlock, pe-pc)
				acc := 0
				if accum || pc > 0 {
					acc = 1
				}
				bb := (pc-pg)*bStride + jr*kc
				ab := (pc-pg)*mPad + ir*kc
				bpan := &bp[bb : bb+nr*kc][0]
				apan := &ap[ab : ab+mr*kc][0]
				runTile(mk, kc, apan, bpan, c, ci, ldc, mm, nn, acc, tmp)
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
func packB(bp, rowBuf []float32, B operandB, pc, kc, jc, nc, nr int) {
	switch {
	case B.w != nil && B.wT: // B[k][j] = W[j][k]: decode rows of W, scatter
		rows := rowBuf[:nr*kc]
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
		row := rowBuf[:hi-lo]
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
