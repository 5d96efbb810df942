package budget

import (
	"errors"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

func TestSlabsStayUnderTheLimit(t *testing.T) {
	const page = pageSize / 4 // float32 values per page
	a := NewAccountant(3 * pageSize)
	v, err := a.Floats(Workspace, -1, 2*page)
	if err != nil {
		t.Fatal(err)
	}
	for i := range v {
		v[i] = 7
	}
	if _, err := a.Floats(Activations, 0, 2*page); !errors.Is(err, ErrOverBudget) {
		t.Fatalf("4 pages under a 3-page limit: %v", err)
	}
	if a.Mapped() != 2*pageSize {
		t.Fatalf("mapped %d after a refusal, want %d", a.Mapped(), 2*pageSize)
	}
	// Freed, the slab stays booked in the cache and comes back zeroed.
	p := &v[0]
	a.Free(v)
	if a.Used() != 2*pageSize {
		t.Fatalf("a cached slab is booked: used %d", a.Used())
	}
	w, err := a.Floats(Workspace, -1, 2*page)
	if err != nil {
		t.Fatal(err)
	}
	if &w[0] != p {
		t.Errorf("same size not reused")
	}
	for i, x := range w {
		if x != 0 {
			t.Fatalf("reused slab not zeroed at %d: %v", i, x)
		}
	}
	a.Free(w)
	// A different size that needs the room unmaps the cached slab first.
	x, err := a.Floats(Activations, 1, 3*page)
	if err != nil {
		t.Fatalf("3 pages with 2 cached under a 3-page limit: %v", err)
	}
	if a.Mapped() != 3*pageSize || a.Used() != 3*pageSize {
		t.Fatalf("mapped %d used %d, want %d", a.Mapped(), a.Used(), 3*pageSize)
	}
	a.Free(x)
	a.Trim()
	if a.Mapped() != 0 || a.Used() != 0 {
		t.Fatalf("after Trim: mapped %d used %d", a.Mapped(), a.Used())
	}
}

func TestSlabFreeOfForeignMemoryPanics(t *testing.T) {
	a := NewAccountant(0)
	v, _ := a.Floats(Workspace, -1, 100)
	defer func() {
		if recover() == nil {
			t.Fatal("freeing a part of a slab did not panic")
		}
	}()
	a.Free(v[1:])
}

func TestNilAccountantFloats(t *testing.T) {
	var a *Accountant
	v, err := a.Floats(Workspace, -1, 10)
	if err != nil || len(v) != 10 {
		t.Fatal(v, err)
	}
	a.Free(v)
	if _, err := a.Floats(Workspace, -1, -1); err == nil {
		t.Fatal("negative size accepted")
	}
}

// rssAnon reads this process's anonymous resident memory (Linux).
func rssAnon(t *testing.T) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skip("no /proc/self/status")
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "RssAnon:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	t.Skip("no RssAnon")
	return 0
}

// The point of slabs: their pages are resident while booked and gone when
// unmapped, whatever the collector does, and they are not Go heap.
func TestSlabPagesLeaveWithTheBooking(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("RssAnon is Linux's")
	}
	const n = 64 << 20
	a := NewAccountant(0)
	before := rssAnon(t)
	var ms0 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	v, err := a.Floats(Workspace, -1, n/4)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(v); i += pageSize / 4 {
		v[i] = 1
	}
	during := rssAnon(t)
	var ms1 runtime.MemStats
	runtime.ReadMemStats(&ms1)
	if during-before < n*9/10 {
		t.Fatalf("touched 64 MiB slab: RssAnon grew by %d", during-before)
	}
	if int64(ms1.HeapSys)-int64(ms0.HeapSys) > n/8 {
		t.Fatalf("slab came from the Go heap: HeapSys %d → %d", ms0.HeapSys, ms1.HeapSys)
	}
	a.Free(v)
	a.Trim()
	if after := rssAnon(t); during-after < n*9/10 {
		t.Fatalf("unmapped 64 MiB slab: RssAnon fell by only %d", during-after)
	}
}
