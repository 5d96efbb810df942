package kernels

import (
	"sync"
	"unsafe"

	"github.com/qtune/qtune/budget"
)

// scratch is the kernels' float32 scratch: the GEMM's shared packs and its
// workers' blocks, decoded panels of quantized weights and attention score
// blocks. It lives outside the Go heap (anonymous mappings, budget.MapAnon),
// so the collector neither sees it nor frees it: a run under a memory plan
// does not make megabytes of garbage per call (with sync.Pool every
// collection emptied the pools and the next GEMM allocated its packs again,
// 97% of a 110M training run's allocations), and the bytes it holds are
// counted exactly (Held) against the plan's scratch item.
//
// Blocks are kept after use for the next call of a similar size: a request
// takes the smallest free block that holds it and is at most twice its size
// (a small request never takes the block a large one needs next), else a
// new block is mapped. Before mapping, free blocks are unmapped while the
// mapped total would pass the limit (SetScratchLimit), largest first, and
// there are never more free blocks than scratchFreeMax.
var scratch arena

type block struct {
	f   []float32
	buf []byte // the mapping
}

type arena struct {
	mu    sync.Mutex
	free  []*block            // free blocks, in the order they were freed
	inUse map[*float32]*block // blocks handed out, by their first element
	held  int64               // bytes mapped: in use and free
	peak  int64
	limit int64
	over  int64 // bytes mapped past the limit (nothing free left to unmap)
}

// scratchFreeMax bounds how many blocks are kept free: a few per worker,
// as many sizes as a step uses at once.
var scratchFreeMax = 4*freeListMax + 4

const pageFloats = 1024 // 4 KiB

// get returns scratch of length n (its contents are stale).
func (a *arena) get(n int) []float32 {
	n = max(n, 1)
	a.mu.Lock()
	defer a.mu.Unlock()
	best := -1
	for i, b := range a.free {
		if c := cap(b.f); c >= n && c <= 2*n+pageFloats && (best < 0 || c < cap(a.free[best].f)) {
			best = i
		}
	}
	var b *block
	if best >= 0 {
		b = a.free[best]
		a.free = append(a.free[:best], a.free[best+1:]...)
	} else {
		c := (n + pageFloats - 1) / pageFloats * pageFloats
		a.trim(4 * int64(c))
		b = &block{}
		// Where the kernel refuses the mapping the block is heap memory
		// (still counted).
		var err error
		if b.buf, err = budget.MapAnon(4 * c); err != nil {
			b.buf = make([]byte, 4*c)
		}
		b.f = unsafe.Slice((*float32)(unsafe.Pointer(unsafe.SliceData(b.buf))), c)
		a.held += 4 * int64(c)
		a.peak = max(a.peak, a.held)
		if a.limit > 0 && a.held > a.limit {
			a.over = max(a.over, a.held-a.limit)
		}
	}
	if a.inUse == nil {
		a.inUse = map[*float32]*block{}
	}
	a.inUse[unsafe.SliceData(b.f)] = b
	return b.f[:n]
}

// put returns s, got from get, to the free blocks.
func (a *arena) put(s []float32) {
	a.mu.Lock()
	defer a.mu.Unlock()
	p := unsafe.SliceData(s)
	b := a.inUse[p]
	if b == nil {
		panic("kernels: scratch returned twice or not from the arena")
	}
	delete(a.inUse, p)
	a.free = append(a.free, b)
	if len(a.free) > scratchFreeMax {
		a.unmap(0)
	}
}

// trim unmaps free blocks, largest first, until n more bytes fit under the
// limit (or none is left free).
func (a *arena) trim(n int64) {
	for a.limit > 0 && a.held+n > a.limit && len(a.free) > 0 {
		big := 0
		for i, b := range a.free {
			if cap(b.f) > cap(a.free[big].f) {
				big = i
			}
		}
		a.unmap(big)
	}
}

func (a *arena) unmap(i int) {
	b := a.free[i]
	a.free = append(a.free[:i], a.free[i+1:]...)
	a.held -= 4 * int64(cap(b.f))
	budget.Unmap(b.buf)
}

// SetScratchLimit caps the bytes the kernels' scratch keeps mapped (0: no
// cap besides the count of free blocks) and returns the cap before. Free
// blocks past it are unmapped at once. A plan sets it to its scratch item:
// what is in use at once never passes that item when the plan sized it for
// the shapes it runs (ScratchBytes), so kept blocks give way to new ones.
func SetScratchLimit(n int64) int64 {
	a := &scratch
	a.mu.Lock()
	defer a.mu.Unlock()
	prev := a.limit
	a.limit = max(n, 0)
	a.trim(0)
	a.peak = a.held
	return prev
}

// ScratchStats is what the kernels' scratch holds now (bytes mapped, in use
// and free), the most it held since the limit was last set, and the most it
// ever went past a limit in this process (0 when every limit held).
func ScratchStats() (held, peak, over int64) {
	a := &scratch
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.held, a.peak, a.over
}

// ReleaseScratch unmaps every free block, the workers' kept GEMM blocks
// included (a run's end, or a host app that wants its memory back). No
// kernel may be running.
func ReleaseScratch() {
	for b := gemmBufPool.get(); b != nil; b = gemmBufPool.get() {
		scratch.put(b.ap)
	}
	a := &scratch
	a.mu.Lock()
	defer a.mu.Unlock()
	for len(a.free) > 0 {
		a.unmap(len(a.free) - 1)
	}
}
