package kernels

import (
	"runtime"
	"sync"
)

// freeList keeps scratch between calls. Unlike sync.Pool it is not emptied
// by a garbage collection: a run held to its memory plan by a soft limit
// collects often, and with sync.Pool every GEMM then allocated its ~700 KiB
// of scratch again, which made more collections (1.3 GB allocated to score
// 8,000 tokens of stories260K). It keeps at most freeListMax items.
type freeList[T any] struct {
	mu   sync.Mutex
	free []*T
}

// freeListMax bounds a list's length: one item per processor and one for
// the caller, as many as can be in use at once. put refuses more (the
// caller returns the item's scratch to the arena or drops it).
var freeListMax = runtime.GOMAXPROCS(0) + 1

// get returns a kept item, or nil.
func (l *freeList[T]) get() *T {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := len(l.free)
	if n == 0 {
		return nil
	}
	t := l.free[n-1]
	l.free[n-1] = nil
	l.free = l.free[:n-1]
	return t
}

// put keeps t, unless freeListMax are kept already: it reports whether t
// was kept.
func (l *freeList[T]) put(t *T) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.free) < freeListMax {
		l.free = append(l.free, t)
		return true
	}
	return false
}

// ScratchBytes is the most the kernels' scratch (scratch.go) maps at once
// on this machine for matrices whose shared dimension is at most maxS (rows
// of a batch, or a matrix's output rows) and inner dimension at most maxK,
// with attention over sequences of up to T positions and heads of D: every
// worker's GEMM block (whole: one mapping), decoded row panel, attention
// score blocks and the shared pack of its attention GEMMs, one shared pack
// of a whole-matrix GEMM, and a page of rounding per block. The arena keeps
// what it maps within this when it is its limit (SetScratchLimit).
func ScratchBytes(maxS, maxK, T, D int) int64 {
	w := int64(freeListMax) // workers, and the caller
	page := int64(4 * pageFloats)
	round := func(n int64) int64 { return (4*n + page - 1) / page * page }
	bq := attnBlockRows(T)
	gemm := round(gemmBufsFloats)
	panel := round(int64(tileRows * maxK))
	attn := round(int64(2 * min(attnScratch, bq*T)))
	attnPack := round(int64((max(bq, D) + 16) * max(T, D)))
	shared := round(min(int64(sharedMax+sharedMax/64), int64(min(sChunk, maxS)+64)*int64(maxK)))
	return w*(gemm+panel+attn+attnPack) + shared
}
