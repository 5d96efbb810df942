package kernels_test

import (
	"math/rand/v2"
	"testing"

	"github.com/qtune/qtune/kernels"
	"github.com/qtune/qtune/quant"
)

// TestScratchWithinScratchBytes runs a training step's kernels for a
// 110M-shaped block (and an output matrix) as the model calls them,
// attention concurrently for each sequence of the batch, with the scratch's
// limit at ScratchBytes for those shapes: the arena never maps past it.
func TestScratchWithinScratchBytes(t *testing.T) {
	const dim, hidden, heads, D, T, B, vocab = 768, 2048, 12, 64, 128, 2, 4096
	r := rand.New(rand.NewPCG(1, 2))
	p := kernels.Default()
	rows := B * T
	limit := kernels.ScratchBytes(max(rows, vocab, hidden, dim), max(hidden, dim), T, D)
	kernels.ReleaseScratch()
	prev := kernels.SetScratchLimit(limit)
	defer kernels.SetScratchLimit(prev)
	types := []quant.Type{quant.Q4_0, quant.NF4, quant.F32}
	if testing.Short() { // arm64 under qemu
		types = types[:1]
	}
	for _, typ := range types {
		qkv := randMatrix(typ, dim, dim, r)
		up := randMatrix(typ, hidden, dim, r)
		down := randMatrix(typ, dim, hidden, r)
		out := randMatrix(typ, vocab, dim, r)
		x := randSlice(r, rows*dim)
		h := randSlice(r, rows*hidden)
		y := make([]float32, rows*max(vocab, hidden))
		kernels.MatMul(p, y[:rows*dim], x, rows, qkv)
		kernels.MatMul(p, y[:rows*hidden], x, rows, up)
		kernels.MatMul(p, y[:rows*dim], h, rows, down)
		kernels.MatMul(p, y[:rows*vocab], x, rows, out)
		kernels.MatMulT(p, h, y[:rows*dim], rows, down)
		kernels.MatMulT(p, x, y[:rows*hidden], rows, up)
		kernels.MatMulT(p, x, y[:rows*vocab], rows, out)
		kernels.MatMul(p, y[:dim], x[:dim], 1, qkv) // the matrix-vector path
		q, k, v := randSlice(r, rows*dim), randSlice(r, rows*dim), randSlice(r, rows*dim)
		att, lse := make([]float32, rows*dim), make([]float32, B*heads*T)
		dq, dk, dv := make([]float32, rows*dim), make([]float32, rows*dim), make([]float32, rows*dim)
		p.Parallel(B, 1, func(lo, hi int) {
			sc := make([]float32, 2*T)
			for b := lo; b < hi; b++ {
				o := b * T * dim
				kernels.AttentionSeq(att[o:o+T*dim], lse[b*heads*T:(b+1)*heads*T], q[o:o+T*dim], k[o:o+T*dim], v[o:o+T*dim], T, heads, heads, D, sc)
				kernels.AttentionSeqBackward(dq[o:o+T*dim], dk[o:o+T*dim], dv[o:o+T*dim], att[o:o+T*dim], q[o:o+T*dim], k[o:o+T*dim], v[o:o+T*dim],
					lse[b*heads*T:(b+1)*heads*T], T, heads, heads, D, sc)
			}
		})
	}
	held, peak, over := kernels.ScratchStats()
	t.Logf("limit %.2f MiB, peak %.2f MiB, held at the end %.2f MiB", float64(limit)/(1<<20), float64(peak)/(1<<20), float64(held)/(1<<20))
	if over > 0 || peak > limit {
		t.Fatalf("the scratch mapped %d bytes past its limit of %d (peak %d)", over, limit, peak)
	}
	kernels.ReleaseScratch()
	if held, _, _ := kernels.ScratchStats(); held != 0 {
		t.Errorf("%d bytes still mapped after ReleaseScratch", held)
	}
	if peak < limit/4 && kernels.ISA() != "generic" { // the generic kernels map only a row panel per worker
		t.Errorf("peak %d is under a quarter of ScratchBytes %d: the bound is loose", peak, limit)
	}
}

// TestGEMMAllocatesNothing: a MatMul of a batch (the blocked GEMM with its
// shared pack, worker blocks and task state) makes no garbage once its
// scratch is mapped, so that a run's collector has nothing of the model's
// size to chase.
func TestGEMMAllocatesNothing(t *testing.T) {
	if kernels.ISA() == "generic" {
		t.Skip("the generic kernels (no micro-kernel for this machine or -tags noasm) hand closures to the pool")
	}
	r := rand.New(rand.NewPCG(3, 4))
	p := kernels.Default()
	for _, typ := range []quant.Type{quant.Q4_0, quant.F32} {
		w := randMatrix(typ, 512, 256, r)
		x := randSlice(r, 64*256)
		y := make([]float32, 64*512)
		dx := make([]float32, 64*256)
		allocs := testing.AllocsPerRun(20, func() {
			kernels.MatMul(p, y, x, 64, w)
			kernels.MatMulT(p, dx, y, 64, w)
		})
		if allocs > 0 {
			t.Errorf("%v: MatMul + MatMulT allocated %.1f objects a call", typ, allocs)
		}
	}
}
