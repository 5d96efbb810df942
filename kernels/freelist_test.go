package kernels

import (
	"runtime"
	"testing"

	"github.com/qtune/qtune/budget"
)

// The pooled scratch is mapped outside the Go heap, reused while idle,
// kept to its list's bound (the largest blocks), and unmapped by Release.
func TestScratchOffHeapBounded(t *testing.T) {
	f := &floats{keep: 2}
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	before, mapped := heap(), budget.ScratchBytes()
	const n = 1 << 20 // 4 MiB
	a := f.get(n)
	for i := range *a {
		(*a)[i] = 1 // resident now
	}
	if grown := int64(heap()) - int64(before); grown > 1<<20 {
		t.Errorf("a 4 MiB block grew the live heap by %d bytes", grown)
	}
	if got := budget.ScratchBytes() - mapped; got < 4*n {
		t.Errorf("%d bytes mapped for a block of %d", got, 4*n)
	}
	f.put(a)
	b := f.get(n / 2)
	if &(*b)[0] != &(*a)[0] {
		t.Error("an idle block large enough was not reused")
	}
	f.put(b)
	// Blocks of several shapes: only the keep largest stay.
	var held []*[]float32
	for _, k := range []int{1000, 5000, 3000, 9000} {
		held = append(held, f.get(k*1024))
	}
	for _, h := range held {
		f.put(h)
	}
	if len(f.idle) != 2 {
		t.Fatalf("%d idle blocks kept, want 2", len(f.idle))
	}
	for _, x := range f.idle {
		if cap(x) < 5000*1024 {
			t.Errorf("kept a block of %d values, not one of the largest", cap(x))
		}
	}
	if want := int64(4 * (cap(f.idle[0]) + cap(f.idle[1]))); f.bytes != want {
		t.Errorf("the list counts %d bytes mapped, its idle blocks are %d", f.bytes, want)
	}
	f.release()
	if len(f.idle) != 0 || f.bytes != 0 || budget.ScratchBytes() != mapped {
		t.Errorf("after release: %d idle, %d bytes counted, %d mapped (was %d)", len(f.idle), f.bytes, budget.ScratchBytes(), mapped)
	}
}
