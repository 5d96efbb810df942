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
// 0.3 ms (a 1 MB heap goal) and generation slowed tenfold.
func TestSoftLimitLeavesTheHeapRoom(t *testing.T) {
	m, err := model.Open(shared.Path(t, "assets", "models", "stories260K.gguf"), model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, limit := range []int64{0, 64 << 20} {
		p, err := PlanGenerate(m, 64, 4, limit, "")
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
		// With a budget the accountant may book what the plan books (and a
		// MiB of page rounding), never more than the plan's heap limit.
		if limit > 0 {
			planned := p.HeapLimit - (p.Budget - p.Peak)
			if r := m.Acct.Room(); r < planned || r > p.HeapLimit {
				t.Errorf("accountant room %d outside [%d planned, %d heap limit]", r, planned, p.HeapLimit)
			}
		}
	}
}
