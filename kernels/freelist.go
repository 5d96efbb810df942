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
// the caller, as many as can be in use at once. More is dropped to the
// collector, so a list never holds scratch of shapes no longer in use.
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

func (l *freeList[T]) put(t *T) {
	l.mu.Lock()
	if len(l.free) < freeListMax {
		l.free = append(l.free, t)
	}
	l.mu.Unlock()
}

// floats is float32 scratch of varying sizes, pooled until the next
// collection (sync.Pool): the packed operands and dequantized panels it
// holds can be megabytes, and a run held to a budget must not keep blocks of
// every shape it has used. Only the fixed-size GEMM worker scratch lives in
// a freeList.
type floats struct{ p sync.Pool }

// get returns scratch of length n (its contents are stale).
func (f *floats) get(n int) *[]float32 {
	if s, ok := f.p.Get().(*[]float32); ok && cap(*s) >= n {
		*s = (*s)[:n]
		return s
	}
	s := make([]float32, n)
	return &s
}

func (f *floats) put(s *[]float32) { f.p.Put(s) }

// ScratchBytes is the most the kernels' pooled scratch holds at once on
// this machine for matrices whose shared dimension is at most maxS (rows of
// a batch, or a matrix's output rows) and inner dimension at most maxK,
// with attention over sequences of up to T positions: every worker's GEMM
// block and attention score blocks, and one shared pack. It is Go heap, and
// a plan counts it in the runtime's part.
func ScratchBytes(maxS, maxK, T int) int64 {
	// A worker's GEMM blocks are allocated whole and touched as far as the
	// shapes reach: that part is resident.
	gemm := int64(min(mTaskMax, maxS)*min(kcBlock*pcGroup, maxK) + min(nTaskMax, maxS)*min(kcBlock, maxK) + 64*kcBlock + 16*64)
	bq := attnBlockRows(T)
	attn := int64(2 * min(attnScratch, bq*T))
	shared := min(int64(sharedMax+sharedMax/64), int64(min(sChunk, maxS))*int64(maxK))
	return 4 * (int64(freeListMax)*(gemm+attn) + shared)
}
