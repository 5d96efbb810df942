package budget

import (
	"fmt"
	"sort"
	"sync/atomic"
	"unsafe"
)

// slabBytes is the bytes of slabs mapped now by every accountant.
var slabBytes atomic.Int64

// SlabBytes is the bytes of slabs every accountant of the process has
// mapped now (a diagnostic: QTUNE_MEMTRACE reports it).
func SlabBytes() int64 { return slabBytes.Load() }

// Slabs: memory the accountant owns. A buffer that grows with the model, the
// batch or the input is asked of the accountant, which books it and maps it
// outside the Go heap (an anonymous private mapping, see slab_unix.go). Its
// pages are this process's only while the buffer lives: Free puts the slab
// in a small cache for the next step (still booked, so still counted), and a
// reservation that would pass the limit unmaps cached slabs first. The
// collector never sees these bytes, so how fast it runs cannot move the
// peak: the resident set is the mapped weights in use, the booked slabs and
// the small Go heap the plan allows for the rest.

// slab is one mapping handed out whole.
type slab struct {
	mem   []byte
	cat   Category
	layer int
	dirty bool // handed out before: not zero any more
}

// slabState is the accountant's record of its slabs.
type slabState struct {
	live   map[uintptr]*slab // by base address
	cached []*slab           // freed, kept for reuse (booked as cached)
	mapped int64             // bytes of live and cached slabs
}

// cached is the category of slabs freed and kept for the next step.
const cached Category = "slab cache"

// pageRound rounds n up to the slab granularity.
func pageRound(n int64) int64 { return (n + pageSize - 1) &^ (pageSize - 1) }

const pageSize = 4096

// maxCached bounds the cache of an accountant without a limit.
const maxCached = 64

// Floats returns n zeroed float32 values that the accountant owns, booked to
// cat (and layer, −1 when not per layer). They live until Free. An
// accountant over its limit returns ErrOverBudget and maps nothing. A nil
// accountant (no budget) returns ordinary heap memory.
func (a *Accountant) Floats(cat Category, layer int, n int) ([]float32, error) {
	if n < 0 {
		return nil, fmt.Errorf("budget: %s: %d values", cat, n)
	}
	if n == 0 {
		return []float32{}, nil
	}
	if a == nil {
		return make([]float32, n), nil
	}
	b, err := a.bytes(cat, layer, 4*int64(n))
	if err != nil {
		return nil, err
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(&b[0])), n), nil
}

// Free returns a buffer that Floats gave (a nil accountant's is left to the
// collector). Freeing one twice, or a part of one, is a programmer error and
// panics.
func (a *Accountant) Free(v []float32) {
	if len(v) == 0 {
		return
	}
	if a == nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	p := uintptr(unsafe.Pointer(&v[0]))
	s := a.slabs.live[p]
	if s == nil {
		panic(fmt.Sprintf("budget: Free of %d values at %#x the accountant did not give", len(v), p))
	}
	delete(a.slabs.live, p)
	// Keep it for the next step, still booked (as cached): a reservation
	// that needs the room unmaps it.
	n := int64(len(s.mem))
	a.byCat[s.cat] -= n
	a.byCat[cached] += n
	s.dirty = true
	a.slabs.cached = append(a.slabs.cached, s)
	a.trimLocked(0)
}

// bytes maps (or reuses) a slab of at least n bytes for cat.
func (a *Accountant) bytes(cat Category, layer int, n int64) ([]byte, error) {
	size := pageRound(n)
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.slabs.live == nil {
		a.slabs.live = map[uintptr]*slab{}
	}
	// A cached slab of the same size is the common case: the same buffers
	// every step.
	for i, s := range a.slabs.cached {
		if int64(len(s.mem)) == size {
			a.slabs.cached = append(a.slabs.cached[:i], a.slabs.cached[i+1:]...)
			a.used -= size
			a.byCat[cached] -= size
			if err := a.reserveLocked(cat, layer, size); err != nil {
				a.unmapLocked(s)
				return nil, err
			}
			if s.dirty {
				clear(s.mem[:n])
			}
			s.cat, s.layer = cat, layer
			a.slabs.live[uintptr(unsafe.Pointer(&s.mem[0]))] = s
			return s.mem[:n], nil
		}
	}
	if err := a.reserveLocked(cat, layer, size); err != nil {
		return nil, err
	}
	mem, err := MapAnon(int(size))
	if err != nil {
		a.used -= size
		a.byCat[cat] -= size
		return nil, fmt.Errorf("budget: %s: mapping %s: %w", cat, FormatSize(size), err)
	}
	a.slabs.mapped += size
	slabBytes.Add(size)
	s := &slab{mem: mem, cat: cat, layer: layer}
	a.slabs.live[uintptr(unsafe.Pointer(&mem[0]))] = s
	return mem[:n], nil
}

// trimLocked unmaps cached slabs, largest first, until n more bytes fit
// under the limit and the cache would not raise the bookings above the
// highest the live buffers have reached (so a cache never makes a run's
// footprint more than its plan: the logits freed before the backward pass
// are not kept beside the backward's scratch). Without a limit at most
// maxCached slabs are kept.
func (a *Accountant) trimLocked(n int64) {
	if len(a.slabs.cached) == 0 {
		return
	}
	sort.Slice(a.slabs.cached, func(i, j int) bool { return len(a.slabs.cached[i].mem) > len(a.slabs.cached[j].mem) })
	for len(a.slabs.cached) > 0 {
		live := a.used - a.byCat[cached]
		over := a.limit > 0 && a.used+n > a.limit
		above := a.used+n > max(a.peakLive, live+n)
		many := len(a.slabs.cached) > maxCached
		if !over && !above && !many {
			return
		}
		s := a.slabs.cached[0]
		a.slabs.cached = a.slabs.cached[1:]
		a.used -= int64(len(s.mem))
		a.byCat[cached] -= int64(len(s.mem))
		a.unmapLocked(s)
	}
}

func (a *Accountant) unmapLocked(s *slab) {
	a.slabs.mapped -= int64(len(s.mem))
	slabBytes.Add(-int64(len(s.mem)))
	Unmap(s.mem)
	s.mem = nil
}

// Trim unmaps every cached slab (a run that is done, or a pause).
func (a *Accountant) Trim() {
	if a == nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, s := range a.slabs.cached {
		a.used -= int64(len(s.mem))
		a.byCat[cached] -= int64(len(s.mem))
		a.unmapLocked(s)
	}
	a.slabs.cached = nil
}

// Room is what can still be booked under the limit, cached slabs counted
// as free (0 without a limit).
func (a *Accountant) Room() int64 {
	if a == nil {
		return 0
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.limit == 0 {
		return 0
	}
	return max(a.limit-(a.used-a.byCat[cached]), 0)
}

// Live is the bytes booked now outside the slab cache: what the run holds.
func (a *Accountant) Live() int64 {
	if a == nil {
		return 0
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.used - a.byCat[cached]
}

// Mapped is the bytes of slabs mapped now, live and cached.
func (a *Accountant) Mapped() int64 {
	if a == nil {
		return 0
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.slabs.mapped
}

// SlabsOf is the bytes of live slabs booked to cat (the part of cat's
// bookings that is not on the Go heap).
func (a *Accountant) SlabsOf(cat Category) int64 {
	if a == nil {
		return 0
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	var n int64
	for _, s := range a.slabs.live {
		if s.cat == cat {
			n += int64(len(s.mem))
		}
	}
	return n
}
