package train

import (
	"fmt"
	"runtime/debug"
	"runtime/metrics"

	"github.com/qtune/qtune/budget"
	"github.com/qtune/qtune/kernels/cuda"
	"github.com/qtune/qtune/model"
)

// hostShare measures the host memory the CUDA driver and its libraries
// take while a device opens and runs its warm-up: their code and data
// pages, the driver's own heap, cuBLAS's host state. No plan can know it
// beforehand (it depends on the driver, the libraries' versions and lazy
// loading), so it is measured: what the process's resident set grew by,
// less what qtune itself booked with the accountant and what the Go
// runtime took meanwhile, and less the device's own allocations where
// those are host memory (an integrated GPU, or qtune's emulator).
type hostShare struct {
	rss, booked, goMem int64
	ok                 bool
	// loaded is what loading and initialising the driver took when that
	// happened before the first reading (--device auto asks for a GPU
	// before the plan): measured then by package cuda.
	loaded int64
}

// startHostShare takes the measure's first reading (before the device is
// opened).
func startHostShare(m *model.Model) hostShare {
	rss, ok := residentBytes()
	h := hostShare{rss: rss, booked: m.Acct.Used(), goMem: goResident(), ok: ok}
	if n, done := cuda.DriverInitBytes(); done {
		h.loaded = n
	}
	return h
}

// measure takes the second reading (after the warm-up) and returns the
// driver's and libraries' share, 0 where the resident set cannot be read.
func (h hostShare) measure(m *model.Model, d *cuda.Device) int64 {
	rss, ok := residentBytes()
	if !h.ok || !ok {
		return 0
	}
	n := h.loaded + (rss - h.rss) - (m.Acct.Used() - h.booked) - (goResident() - h.goMem)
	if d.Integrated {
		n -= d.Used()
	}
	return max(n, 0)
}

// fitHostShare checks the driver's measured share against the host plan:
// without a budget it is only reported; under --max-mem it must fit the
// room the plan leaves (the budget less its peak and margin), which the
// Go heap's soft limit then gives up, so that the whole stays within the
// budget. Otherwise the run stops naming a budget that holds it.
func fitHostShare(what string, share int64, plan *budget.Plan, log Logger) error {
	if plan == nil || plan.Budget <= 0 {
		log(fmt.Sprintf("host memory: the CUDA driver and its libraries took %s after the warm-up (measured; no --max-mem)", fmtMiB(share)))
		return nil
	}
	room := plan.Budget - plan.Peak - plan.Margin
	if share > room {
		need := plan.Peak + share + share/16 // the next run's measure may differ a little
		need += budget.Margin(need)
		return fmt.Errorf("%s: the CUDA driver and its libraries took %s of host memory after the warm-up (measured), and --max-mem %s leaves %s beside the plan's peak of %s: give --max-mem %dMiB or more, or --device cpu: %w",
			what, fmtMiB(share), budget.FormatSize(plan.Budget), fmtMiB(max(room, 0)), budget.FormatSize(plan.Peak), (need+(1<<20)-1)>>20, budget.ErrOverBudget)
	}
	if share > 0 {
		debug.SetMemoryLimit(max(debug.SetMemoryLimit(-1)-share, goOverhead()+4<<20))
	}
	log(fmt.Sprintf("host memory: the CUDA driver and its libraries took %s after the warm-up (measured), within the %s --max-mem leaves beside the plan; the Go heap's limit is lowered by as much", fmtMiB(share), fmtMiB(room)))
	return nil
}

// goResident is the memory the Go runtime holds mapped and not returned,
// once its free pages are returned (a collection first): its part of a
// change in the resident set.
func goResident() int64 {
	debug.FreeOSMemory()
	s := []metrics.Sample{{Name: "/memory/classes/total:bytes"}, {Name: "/memory/classes/heap/released:bytes"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 || s[1].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return int64(s[0].Value.Uint64()) - int64(s[1].Value.Uint64())
}
