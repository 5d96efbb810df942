package budget

import (
	"errors"
	"strings"
	"testing"
)

func req(budget int64) Request {
	return Request{
		Job: "train", Budget: budget, LayerBytes: []int64{100 << 20, 100 << 20, 100 << 20, 100 << 20},
		OtherBytes: 50 << 20, EmbedBytes: 50 << 20, Batch: 8,
		Activations: func(b int, ckpt bool) int64 {
			if ckpt {
				return int64(b) * 10 << 20
			}
			return int64(b) * 40 << 20
		},
		Workspace: func(b int) int64 { return int64(b) << 20 },
		Fixed:     []Item{{Category: Trainable, Bytes: 10 << 20}, {Category: OptimizerState, Bytes: 20 << 20}},
		Runtime:   30 << 20, CanCheckpoint: true,
	}
}

func TestPlanPrefersFastStrategies(t *testing.T) {
	p, err := Make(req(1 << 40))
	if err != nil || p.Stream || p.Checkpoint || p.MicroBatch != 8 || p.Accum != 1 {
		t.Fatalf("roomy budget: %+v %v", p, err)
	}
	// 400+100 weights + 8·40 acts + 8 ws + 30 fixed + 30 runtime = 888 MiB; a
	// budget of 700 MiB needs checkpointing (8·10) but keeps weights resident.
	p, err = Make(req(700 << 20))
	if err != nil || p.Stream || !p.Checkpoint || p.MicroBatch != 8 {
		t.Fatalf("700 MiB: %+v %v", p, err)
	}
	// Below the weights: stream them.
	p, err = Make(req(400 << 20))
	if err != nil || !p.Stream || p.Peak > 400<<20 {
		t.Fatalf("400 MiB: %+v %v", p, err)
	}
	for _, w := range p.Placement {
		if w != Disk {
			t.Fatalf("placement %v", p.Placement)
		}
	}
	if !strings.Contains(p.String(), "weights streamed") || !strings.Contains(p.String(), "placement: 0 layers on host, 4 on disk") {
		t.Fatalf("plan text:\n%s", p)
	}
}

func TestPlanNoFitNamesSmallestBudget(t *testing.T) {
	_, err := Make(req(100 << 20))
	var nf *NoFitError
	if !errors.As(err, &nf) || !errors.Is(err, ErrNoFit) {
		t.Fatalf("error %v", err)
	}
	// Smallest: stream (50 other + 1 embed + 100 window) + 1·10 ckpt + 1 ws
	// + 30 + 30 = 222 MiB, and the margin kept free: 1 MiB + 222/128 MiB.
	peak := int64(222 << 20)
	if want := peak + 1<<20 + peak/128; nf.Need != want || !strings.Contains(err.Error(), "225MiB") {
		t.Fatalf("need %d, want %d: %v", nf.Need, want, err)
	}
	p, err := Make(req(nf.Need))
	if err != nil || p.Peak != peak || p.Margin != nf.Need-peak {
		t.Fatalf("the named budget does not fit: %v", err)
	}
	if _, err := Make(req(nf.Need - 1)); err == nil {
		t.Fatal("a byte less than the named budget fits: the margin is not kept")
	}
}

func TestAccountant(t *testing.T) {
	a := NewAccountant(10 << 20)
	if err := a.Reserve(Activations, 0, 6<<20); err != nil {
		t.Fatal(err)
	}
	if err := a.Reserve(KVCache, -1, 6<<20); !errors.Is(err, ErrOverBudget) {
		t.Fatalf("over-budget reservation: %v", err)
	}
	a.Release(Activations, 0, 6<<20)
	if err := a.Reserve(KVCache, -1, 6<<20); err != nil {
		t.Fatal(err)
	}
	if a.Peak() != 6<<20 || a.Used() != 6<<20 || !strings.Contains(a.Report(), "kv cache 6.0 MiB") {
		t.Fatalf("peak %d used %d report %q", a.Peak(), a.Used(), a.Report())
	}
	var nilA *Accountant
	if nilA.Reserve(Workspace, 0, 1<<40) != nil {
		t.Fatal("nil accountant refused")
	}
}

// TestPlanOptimizerOnDisk: when the optimizer state is what does not fit,
// it moves to disk before the micro-batch shrinks.
func TestPlanOptimizerOnDisk(t *testing.T) {
	r := req(0)
	r.Fixed = []Item{{Category: Trainable, Bytes: 10 << 20}}
	r.OptimizerBytes, r.OptimizerDiskBytes = 200<<20, 2<<20
	// resident: 500 weights + 8·10 ckpt + 8 ws + 10 + 200 opt + 30 = 828; with
	// the optimizer on disk 630.
	p, err := Make(setBudget(r, 700<<20))
	if err != nil || !p.OptimizerOnDisk || !p.Checkpoint || p.Stream || p.MicroBatch != 8 {
		t.Fatalf("%+v %v", p, err)
	}
	if !strings.Contains(p.String(), "optimizer state on disk") {
		t.Fatalf("plan text:\n%s", p)
	}
	p, err = Make(setBudget(r, 900<<20))
	if err != nil || p.OptimizerOnDisk {
		t.Fatalf("roomy budget moved the optimizer to disk: %+v %v", p, err)
	}
}

func setBudget(r Request, b int64) Request { r.Budget = b; return r }

// A checkpointing the user asked for is never dropped: at every budget the
// plan checkpoints, shrinking the micro-batch or streaming instead, and its
// peak counts checkpointed activations.
func TestPlanKeepsRequestedCheckpoint(t *testing.T) {
	for _, b := range []int64{1 << 40, 900 << 20, 700 << 20, 500 << 20, 400 << 20} {
		r := req(b)
		r.Checkpoint = true
		p, err := Make(r)
		if err != nil {
			t.Fatalf("%d MiB: %v", b>>20, err)
		}
		if !p.Checkpoint {
			t.Errorf("%d MiB: checkpointing dropped: %+v", b>>20, p)
		}
		free, _ := Make(req(b))
		if b == 1<<40 && (free.Checkpoint || p.Peak >= free.Peak) {
			t.Errorf("roomy budget: without the flag %+v, with it %+v", free, p)
		}
	}
}

// A plan without a budget that needs more than the machine has available
// is refused before the run (a 2^24-token context's KV cache grew until
// the kernel killed the process); with a budget, the budget decides.
func TestCheckAvailable(t *testing.T) {
	defer func(f func() int64) { available = f }(available)
	available = func() int64 { return 300 << 20 }
	free, err := Make(req(0)) // 500 MiB of weights, 388 MiB besides
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckAvailable(free); err == nil || !strings.Contains(err.Error(), "available") || !strings.Contains(err.Error(), "--max-mem") {
		t.Errorf("no budget, too big: %v", err)
	}
	bounded, _ := Make(req(700 << 20))
	if err := CheckAvailable(bounded); err != nil {
		t.Errorf("with a budget: %v", err)
	}
	available = func() int64 { return 400 << 20 } // less than the weights: they are mapped
	if err := CheckAvailable(free); err != nil {
		t.Errorf("room enough besides the weights: %v", err)
	}
	available = func() int64 { return 0 } // unknown
	if err := CheckAvailable(free); err != nil {
		t.Errorf("unknown: %v", err)
	}
	if Available() < 0 {
		t.Error("negative")
	}
}

// A run whose weights go to an accelerator: every layer placed there, the
// host booking the looked-up rows, a matrix's pages in transit and the
// pinned buffers, which the accountant holds (in its share, not the heap's
// or the mapped weights'); the host never streams instead.
func TestPlanDeviceWeights(t *testing.T) {
	r := req(0)
	r.Device, r.OtherBytes, r.EmbedBytes, r.Pinned = true, 4<<20, 2<<20, 200<<20
	r.Activations = func(int, bool) int64 { return 0 }
	p, err := Make(r)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range p.Placement {
		if w != Device {
			t.Fatalf("placement %v", p.Placement)
		}
	}
	var weights, pinned int64
	for _, it := range p.Items {
		switch it.Category {
		case WeightsResident, WeightsStreamed:
			weights += it.Bytes
		case Pinned:
			pinned += it.Bytes
		}
	}
	if weights != 6<<20 || pinned != 200<<20 || p.Stream {
		t.Fatalf("weights %d, pinned %d B, streaming %v:\n%s", weights, pinned, p.Stream, p)
	}
	if !strings.Contains(p.String(), "placement: 0 layers on host, 0 on disk, 4 on device") {
		t.Fatalf("plan text:\n%s", p)
	}
	// Under a budget the pinned buffers are the accountant's: the heap
	// limit (the budget less the mapped weights and the runtime) keeps them.
	r.Budget = p.Peak + p.Margin
	q, err := Make(r)
	if err != nil {
		t.Fatal(err)
	}
	if want := r.Budget - weights - 30<<20; q.HeapLimit != want {
		t.Errorf("heap limit %d, want the budget less weights and runtime %d", q.HeapLimit, want)
	}
	// Short of that, no host streaming (the device's plan streams): the
	// smallest plan keeps the pinned buffers and the device placement.
	r.Budget = p.Peak / 2
	var nf *NoFitError
	best, err := Make(r)
	if !errors.As(err, &nf) || best.Stream || best.Placement[0] != Device || nf.Need < 200<<20 {
		t.Errorf("half the budget: %v, streaming %v, placement %v", err, best.Stream, best.Placement)
	}
}
