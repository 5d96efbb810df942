package train

import (
	"runtime/debug"
	"testing"

	"github.com/qtune/qtune/budget"
	"github.com/qtune/qtune/internal/shared"
	"github.com/qtune/qtune/model"
)

// TestSoftLimitLeavesTheHeapRoom: the heap's soft limit ApplyPlan sets is
// never so low that the runtime's own mapped overhead leaves the heap no
// goal. stories260K's plan gives the heap a share of a few MiB, below that
// overhead; the limit was once set to it, and the collector then ran every
// 0.3 ms (a 1 MB heap goal) and generation slowed tenfold. With a budget,
// the accountant takes the plan's limit and the slab buffers are not heap.
func TestSoftLimitLeavesTheHeapRoom(t *testing.T) {
	m, err := model.Open(shared.Path(t, "assets", "models", "stories260K.gguf"), model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, limit := range []int64{0, 64 << 20} {
		p, err := PlanGenerate(m, 64, 4, limit)
		if err != nil {
			t.Fatal(err)
		}
		m.Acct = nil
		restore := ApplyPlan(m, p)
		soft := debug.SetMemoryLimit(-1)
		over := goOverhead()
		restore()
		// ApplyPlan leaves 4 MiB past the overhead it measured; measured
		// again it moves by a fraction of a MiB.
		if soft-over < 3<<20 {
			t.Errorf("budget %d: soft limit %s leaves the heap %s past the runtime's %s overhead", limit,
				budget.FormatSize(soft), budget.FormatSize(soft-over), budget.FormatSize(over))
		}
		if m.Acct == nil {
			t.Errorf("budget %d: no accountant: the step's buffers would be heap the soft limit does not count", limit)
		}
		if limit > 0 {
			if a := m.Acct; a.Room() != p.HeapLimit {
				t.Errorf("accountant room %d, plan's heap limit %d", a.Room(), p.HeapLimit)
			}
		}
	}
}
