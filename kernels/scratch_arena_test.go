package kernels

import "testing"

// TestArenaKeepsBlocksBySize: a freed block serves the next request of a
// similar size; a small request does not take a block more than twice its
// size (which the large request after it would then have to map again);
// the limit unmaps free blocks, largest first, before mapping past it; a
// block returned twice is a panic, not a silent double use.
func TestArenaKeepsBlocksBySize(t *testing.T) {
	var a arena
	const mib = 1 << 18 // floats in a MiB of scratch
	big := a.get(16 * mib)
	if a.held != 16<<20 {
		t.Fatalf("held %d after a 16 MiB get", a.held)
	}
	a.put(big)
	again := a.get(16*mib - 100)
	if &again[0] != &big[0] {
		t.Fatal("a request of nearly the same size did not reuse the free block")
	}
	a.put(again)
	small := a.get(mib)
	if &small[0] == &big[0] {
		t.Fatal("a 1 MiB request took the 16 MiB block")
	}
	if a.held != 17<<20 {
		t.Fatalf("held %d, want 17 MiB (the free 16 MiB block and a new 1 MiB one)", a.held)
	}
	// Under a limit, mapping a new block first unmaps free ones.
	a.limit = 8 << 20
	mid := a.get(4 * mib) //: 17+4 > 8, so the free 16 MiB block goes
	if a.held != 5<<20 || a.over != 0 {
		t.Fatalf("held %d over %d, want 5 MiB and nothing over", a.held, a.over)
	}
	// What is in use cannot be unmapped: past the limit is recorded.
	huge := a.get(8 * mib)
	if a.over != 5<<20 {
		t.Fatalf("over %d, want 5 MiB (13 MiB in use under an 8 MiB limit)", a.over)
	}
	for _, s := range [][]float32{small, mid, huge} {
		a.put(s)
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Error("a block returned twice was accepted")
			}
		}()
		a.put(mid)
	}()
	for len(a.free) > 0 {
		a.unmap(0)
	}
	if a.held != 0 {
		t.Fatalf("held %d after every block was unmapped", a.held)
	}
}

// TestArenaFreeCountBounded: without a limit the arena keeps at most
// scratchFreeMax free blocks, so blocks of shapes no longer used go.
func TestArenaFreeCountBounded(t *testing.T) {
	var a arena
	var got [][]float32
	for i := range 3 * scratchFreeMax {
		got = append(got, a.get(1024*(i+1)))
	}
	for _, s := range got {
		a.put(s)
	}
	if len(a.free) != scratchFreeMax {
		t.Fatalf("%d free blocks kept, want %d", len(a.free), scratchFreeMax)
	}
	var want int64
	for _, b := range a.free {
		want += 4 * int64(cap(b.f))
	}
	if a.held != want {
		t.Fatalf("held %d, the free blocks hold %d", a.held, want)
	}
	for len(a.free) > 0 {
		a.unmap(0)
	}
}
