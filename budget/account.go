package budget

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
)

// Category names what a reservation is for; the plan and the accountant's
// report use the same names.
type Category string

// The categories of memory a run uses.
const (
	WeightsResident Category = "weights resident"
	WeightsStreamed Category = "weights streamed"
	Activations     Category = "activations"
	SavedInputs     Category = "saved inputs"
	Trainable       Category = "trainable parameters"
	Gradients       Category = "gradients"
	OptimizerState  Category = "optimizer state"
	KVCache         Category = "kv cache"
	Workspace       Category = "workspace"
	TokenCache      Category = "token cache"
	Runtime         Category = "runtime"
	// Pinned is page-locked host memory a device copies from (the buffers
	// a GPU run's streamed blocks pass through): booked with the
	// accountant, outside the Go heap.
	Pinned Category = "pinned buffers"
)

// ErrOverBudget is returned when a reservation would exceed the budget.
var ErrOverBudget = errors.New("over the memory budget")

// MinReservation is the size below which buffers need no reservation.
const MinReservation = 1 << 20

// Accountant tracks reserved bytes by category and layer against a limit.
// A nil *Accountant accepts everything, so callers need not check.
type Accountant struct {
	mu    sync.Mutex
	limit int64 // 0: none
	used  int64
	peak  int64
	byCat map[Category]int64
	peakC map[Category]int64
	slabs slabState
	// peakLive is the most booked at once outside the slab cache.
	peakLive int64
}

// NewAccountant returns an accountant for limit bytes (0: unlimited).
func NewAccountant(limit int64) *Accountant {
	return &Accountant{limit: limit, byCat: map[Category]int64{}, peakC: map[Category]int64{}}
}

// Reserve books n bytes for cat (layer −1 when not per layer) before they
// are allocated, failing with ErrOverBudget when the limit would be passed.
func (a *Accountant) Reserve(cat Category, layer int, n int64) error {
	if a == nil || n <= 0 {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.reserveLocked(cat, layer, n)
}

// reserveLocked books n bytes, unmapping cached slabs first when they stand
// in the way.
func (a *Accountant) reserveLocked(cat Category, layer int, n int64) error {
	a.trimLocked(n)
	if a.limit > 0 && a.used+n > a.limit {
		where := ""
		if layer >= 0 {
			where = fmt.Sprintf(" (layer %d)", layer)
		}
		return fmt.Errorf("budget: %s%s needs %s more, %s of %s already reserved: %w",
			cat, where, FormatSize(n), FormatSize(a.used), FormatSize(a.limit), ErrOverBudget)
	}
	a.used += n
	a.byCat[cat] += n
	a.peak = max(a.peak, a.used)
	a.peakLive = max(a.peakLive, a.used-a.byCat[cached])
	a.peakC[cat] = max(a.peakC[cat], a.byCat[cat])
	return nil
}

// SetLimit changes the limit (for example once a plan has decided how much
// of the budget the heap may use). Reservations already made stay.
func (a *Accountant) SetLimit(limit int64) {
	if a == nil {
		return
	}
	a.mu.Lock()
	a.limit = limit
	a.mu.Unlock()
}

// Release returns n bytes of cat.
func (a *Accountant) Release(cat Category, layer int, n int64) {
	if a == nil || n <= 0 {
		return
	}
	a.mu.Lock()
	a.used -= n
	a.byCat[cat] -= n
	a.mu.Unlock()
}

// Used is the bytes reserved now; Peak the most ever reserved at once.
func (a *Accountant) Used() int64 {
	if a == nil {
		return 0
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.used
}

// Peak is the high-water mark of reservations.
func (a *Accountant) Peak() int64 {
	if a == nil {
		return 0
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.peak
}

// Report lists each category's peak reservation.
func (a *Accountant) Report() string {
	if a == nil {
		return ""
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	var cats []string
	for c := range a.peakC {
		cats = append(cats, string(c))
	}
	sort.Strings(cats)
	var b strings.Builder
	for _, c := range cats {
		fmt.Fprintf(&b, "%s %s; ", c, FormatSize(a.peakC[Category(c)]))
	}
	return strings.TrimSuffix(b.String(), "; ")
}
