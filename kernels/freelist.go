package kernels

import (
	"runtime"
	"sync"
	"unsafe"

	"github.com/qtune/qtune/budget"
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

// floats is float32 scratch of varying sizes (packed operands, decoded
// panels, attention blocks: megabytes), mapped outside the Go heap
// (budget.MapFloats) so that neither the collector's pace nor a collection
// that empties a pool can move it: a block is reused until it is unmapped.
// A list keeps at most keep idle blocks (freeListMax when zero), the
// largest ones: a run does not keep blocks of every shape it has used, and
// what stays is what the next call of the largest shape needs.
type floats struct {
	keep int

	mu     sync.Mutex
	idle   [][]float32      // mapped blocks not in use (full capacity)
	mapped map[uintptr]bool // base addresses of blocks this list mapped
	bytes  int64            // of mapped blocks, idle and in use
}

// get returns scratch of length n (its contents are stale): the smallest
// idle block that holds n, else a new mapping rounded up to a page.
func (f *floats) get(n int) *[]float32 {
	f.mu.Lock()
	best := -1
	for i, b := range f.idle {
		if cap(b) >= n && (best < 0 || cap(b) < cap(f.idle[best])) {
			best = i
		}
	}
	if best >= 0 {
		b := f.idle[best]
		f.idle = append(f.idle[:best], f.idle[best+1:]...)
		f.mu.Unlock()
		s := b[:n]
		return &s
	}
	f.mu.Unlock()
	size := (max(n, 1) + 1023) &^ 1023
	v, err := budget.MapFloats(size)
	if err != nil { // no mapping to be had: the heap, left to the collector
		v = make([]float32, size)
	} else {
		f.mu.Lock()
		if f.mapped == nil {
			f.mapped = map[uintptr]bool{}
		}
		f.mapped[base(v)] = true
		f.bytes += 4 * int64(size)
		f.mu.Unlock()
	}
	s := v[:n]
	return &s
}

// put returns a block; past keep idle blocks, the smallest is unmapped.
func (f *floats) put(s *[]float32) {
	b := (*s)[:cap(*s)]
	f.mu.Lock()
	defer f.mu.Unlock()
	f.idle = append(f.idle, b)
	keep := f.keep
	if keep <= 0 {
		keep = freeListMax
	}
	for len(f.idle) > keep {
		small := 0
		for i, x := range f.idle {
			if cap(x) < cap(f.idle[small]) {
				small = i
			}
		}
		f.drop(small)
	}
}

// drop forgets idle block i, unmapping it if it was mapped. f.mu is held.
func (f *floats) drop(i int) {
	b := f.idle[i]
	f.idle = append(f.idle[:i], f.idle[i+1:]...)
	if f.mapped[base(b)] {
		delete(f.mapped, base(b))
		f.bytes -= 4 * int64(cap(b))
		budget.UnmapFloats(b)
	}
}

// release unmaps every idle block.
func (f *floats) release() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for len(f.idle) > 0 {
		f.drop(len(f.idle) - 1)
	}
}

func base(v []float32) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(v[:1]))) }

// Release unmaps the kernels' idle scratch: a library call when a run is
// done, so that an app that embeds qtune keeps none of it. Blocks in use
// are not touched; the next call maps what it needs again.
func Release() {
	for _, f := range []*floats{&sharedPool, &scratchPool, &attnPool} {
		f.release()
	}
}

// MappedScratch is the bytes of scratch the kernels have mapped now, idle
// and in use.
func MappedScratch() int64 {
	var n int64
	for _, f := range []*floats{&sharedPool, &scratchPool, &attnPool} {
		f.mu.Lock()
		n += f.bytes
		f.mu.Unlock()
	}
	return n
}

// ScratchBytes is the most the kernels' pooled scratch holds at once on
// this machine for matrices whose shared dimension is at most maxS (rows of
// a batch, or a matrix's output rows) and inner dimension at most maxK,
// with attention over sequences of up to T positions: every worker's GEMM
// block and attention score blocks, and one shared pack. The variable-size
// parts are mapped outside the Go heap (floats), the fixed GEMM blocks are
// heap (a freeList); a plan counts it all as a runtime item.
func ScratchBytes(maxS, maxK, T int) int64 {
	// A worker's GEMM blocks are allocated whole and touched as far as the
	// shapes reach: that part is resident.
	gemm := int64(min(mTaskMax, maxS)*min(kcBlock*pcGroup, maxK) + min(nTaskMax, maxS)*min(kcBlock, maxK) + 64*kcBlock + 16*64)
	bq := attnBlockRows(T)
	attn := int64(2 * min(attnScratch, bq*T))
	shared := min(int64(sharedMax+sharedMax/64), int64(min(sChunk, maxS))*int64(maxK))
	return 4 * (int64(freeListMax)*(gemm+attn) + shared)
}

// ScratchHeapBytes is the part of ScratchBytes on the Go heap: every
// worker's fixed GEMM blocks, made once and kept.
func ScratchHeapBytes(maxS, maxK int) int64 {
	gemm := int64(min(mTaskMax, maxS)*min(kcBlock*pcGroup, maxK) + min(nTaskMax, maxS)*min(kcBlock, maxK) + 64*kcBlock + 16*64)
	return 4 * int64(freeListMax) * gemm
}
