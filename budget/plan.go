package budget

import (
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
)

// Where a layer's weights live during a run.
type Where string

// Placements. Device is chosen by a GPU run (train's --device cuda), whose
// layers all live in the accelerator's memory.
const (
	Host   Where = "host"   // mapped and kept resident
	Disk   Where = "disk"   // mapped, read ahead before use and dropped after
	Device Where = "device" // accelerator memory
)

// PlacementString counts the layers in each place: "5 layers on host,
// 0 on disk, 0 on device".
func (p *Plan) PlacementString() string {
	hosts, disks, devs := 0, 0, 0
	for _, w := range p.Placement {
		switch w {
		case Disk:
			disks++
		case Device:
			devs++
		default:
			hosts++
		}
	}
	return fmt.Sprintf("%d layers on host, %d on disk, %d on device", hosts, disks, devs)
}

// Item is one line of a plan's breakdown.
type Item struct {
	Category Category `json:"category"`
	Bytes    int64    `json:"bytes"`
	Note     string   `json:"note,omitempty"`
	// OffHeap: the item lives in the accountant's slabs, not on the Go
	// heap, whose soft limit leaves it out.
	OffHeap bool `json:"off_heap,omitempty"`
}

// Request describes a run to the planner in bytes only.
type Request struct {
	Job        string  // "train", "eval" or "generate"
	Budget     int64   // 0: no budget (plan only)
	LayerBytes []int64 // stored weights of each block
	OtherBytes int64   // weights every step touches whole (output matrix, norms)
	EmbedBytes int64   // the part of the token embedding the run touches (looked-up rows)
	// Device: the blocks and the output matrix go to an accelerator; the
	// host keeps the looked-up embedding rows and OtherBytes (a piece of
	// a matrix while it is copied), and Pinned while blocks stream there.
	Device bool
	Pinned int64 // page-locked buffers the device's streamed blocks pass through
	Batch  int   // sequences per optimizer step
	// Activations returns the bytes kept for a micro-batch of b sequences:
	// saved activations (train) or live buffers (eval, generate).
	Activations func(b int, checkpoint bool) int64
	// ActivationsNote, when set, says what Activations are in the plan.
	ActivationsNote string
	// Workspace returns transient buffers for a micro-batch of b sequences.
	Workspace func(b int) int64
	// WorkspaceNote, when set, says what Workspace is in the plan.
	WorkspaceNote string
	// Fixed are reservations independent of the strategy (trainable
	// parameters, gradients, optimizer state, KV cache, token cache).
	Fixed []Item
	// Runtime is the process's own footprint (binary, Go runtime, tokenizer).
	Runtime int64
	// Scratch is the kernels' scratch (packed operands, decoded panels,
	// attention blocks): mapped outside the Go heap, its own item.
	Scratch int64
	// CanCheckpoint allows activation checkpointing (training only).
	CanCheckpoint bool
	// Checkpoint requires it (the user asked for it): every candidate
	// checkpoints.
	Checkpoint bool
	// HeapFloor is the smallest heap the runtime keeps whatever the live
	// data (Go's collector does not run below a 4 MiB heap goal).
	HeapFloor int64
	// FloorOutsideLimit marks HeapFloor as a forecast of garbage the run
	// makes that the heap's soft limit should not grant it (a run that makes
	// little garbage per step would otherwise grow into the room).
	FloorOutsideLimit bool
	// OptimizerBytes is optimizer state that may move to a file-backed
	// scratch ("disk"); OptimizerDiskBytes is what stays resident then (one
	// parameter's moments during its update). Zero: not offered.
	OptimizerBytes, OptimizerDiskBytes int64
	// Spillable returns the saved block inputs of a checkpointed
	// micro-batch of b sequences that can be spilled to a file-backed
	// scratch, and the part that stays resident (the block in use).
	Spillable func(b int) (all, resident int64)
}

// Plan is how a run fits its budget.
type Plan struct {
	Job        string `json:"job"` // the Request's
	Budget     int64  `json:"budget"`
	Items      []Item `json:"items"`
	Peak       int64  `json:"peak"` // the planned peak resident memory
	MicroBatch int    `json:"micro_batch"`
	Accum      int    `json:"accum"`      // micro-batches per optimizer step
	Checkpoint bool   `json:"checkpoint"` // activation checkpointing
	Stream     bool   `json:"stream"`     // weights streamed layer by layer
	// OptimizerOnDisk keeps optimizer state in a file-backed scratch that
	// leaves memory between steps.
	OptimizerOnDisk bool `json:"optimizer_on_disk"`
	// SpillActivations keeps checkpointed block inputs in a file-backed
	// scratch, paged back in during the backward pass.
	SpillActivations bool     `json:"spill_activations"`
	Placement        []Where  `json:"placement"`
	Strategy         []string `json:"strategy"`
	// HeapLimit is what the Go heap may use: the budget less the mapped
	// weights the plan keeps resident and the runtime's own pages.
	HeapLimit int64 `json:"heap_limit"`
	// ScratchBytes is the kernels' scratch item (Request.Scratch): the
	// limit of what they map.
	ScratchBytes int64 `json:"scratch_bytes"`
	// FloorBytes is the part of the Runtime item that a FloorOutsideLimit
	// heap floor added: planned, but not part of the heap's soft limit.
	FloorBytes int64 `json:"floor_bytes"`
	// Margin is what the plan keeps free under the budget (Margin(Peak)):
	// a plan fits when Peak+Margin is at most the budget.
	Margin int64 `json:"margin"`
	// Device, for work on a GPU, is its memory plan (--max-vram's), in a
	// line: printed after the host's.
	Device string `json:"device,omitempty"`
}

// Margin is what a plan of peak bytes keeps free under its budget for what
// varies from one run to the next and no estimate can know: which file
// pages the kernel reads ahead or keeps, when the collector runs. The same
// 110M MeZO run at its smallest budget (55 MiB, planned 54.6) peaked
// anywhere from 54.4 to 55.3 MiB over 19 runs; a MiB and 1/128 of the peak
// (0.8%) covers that, and the 1B sweep's highest peak, 98.8% of its budget.
func Margin(peak int64) int64 { return 1<<20 + peak/128 }

// ErrNoFit is returned when no strategy fits the budget.
var ErrNoFit = errors.New("does not fit the memory budget")

// NoFitError says what the smallest feasible budget is.
type NoFitError struct {
	Budget, Need int64
	Job          string
}

func (e *NoFitError) Error() string {
	return fmt.Sprintf("budget: %s %s: %s is not enough, the smallest budget that fits is %s (--max-mem %dMiB)",
		e.Job, ErrNoFit, FormatSize(e.Budget), FormatSize(e.Need), (e.Need+(1<<20)-1)>>20)
}

func (e *NoFitError) Unwrap() error { return ErrNoFit }

type candidate struct {
	micro      int
	checkpoint bool
	stream     bool
	optDisk    bool
	spill      bool
}

// Make chooses the fastest strategy that fits: weights resident before
// streamed, the whole batch before smaller micro-batches with gradient
// accumulation, and at each micro-batch size activation checkpointing, then
// optimizer state on disk, before a smaller micro-batch.
func Make(r Request) (*Plan, error) {
	if r.Batch <= 0 {
		r.Batch = 1
	}
	disk := []bool{false}
	if r.OptimizerBytes > r.OptimizerDiskBytes && r.OptimizerDiskBytes >= 0 && r.OptimizerBytes > 0 {
		disk = append(disk, true)
	}
	var cands []candidate
	streams := []bool{false, true}
	if r.Device { // the device's plan streams, not the host's
		streams = streams[:1]
	}
	for _, stream := range streams {
		for micro := r.Batch; micro >= 1; micro = (micro + 1) / 2 {
			for _, optDisk := range disk {
				if !r.Checkpoint {
					cands = append(cands, candidate{micro, false, stream, optDisk, false})
				}
				if r.CanCheckpoint || r.Checkpoint {
					cands = append(cands, candidate{micro, true, stream, optDisk, false})
				}
			}
			if (r.CanCheckpoint || r.Checkpoint) && r.Spillable != nil {
				cands = append(cands, candidate{micro, true, stream, disk[len(disk)-1], true})
			}
			if micro == 1 {
				break
			}
		}
	}
	var best *Plan
	for _, c := range cands {
		p := r.evaluate(c)
		if r.Budget == 0 || p.Peak+p.Margin <= r.Budget {
			return p, nil
		}
		if best == nil || p.Peak < best.Peak {
			best = p
		}
	}
	return best, &NoFitError{Budget: r.Budget, Need: best.Peak + best.Margin, Job: r.Job}
}

func (r *Request) evaluate(c candidate) *Plan {
	p := &Plan{Job: r.Job, Budget: r.Budget, MicroBatch: c.micro, Accum: (r.Batch + c.micro - 1) / c.micro,
		Checkpoint: c.checkpoint, Stream: c.stream, OptimizerOnDisk: c.optDisk, SpillActivations: c.spill}
	var all, biggest int64
	for _, b := range r.LayerBytes {
		all += b
		biggest = max(biggest, b)
	}
	p.Placement = make([]Where, len(r.LayerBytes))
	for i := range p.Placement {
		switch {
		case r.Device:
			p.Placement[i] = Device
		case c.stream:
			p.Placement[i] = Disk
		default:
			p.Placement[i] = Host
		}
	}
	add := func(cat Category, n int64, note string) {
		p.Items = append(p.Items, Item{Category: cat, Bytes: n, Note: note})
	}
	switch {
	case r.Device:
		add(WeightsResident, r.OtherBytes+r.EmbedBytes, fmt.Sprintf("on the GPU: here the embedding rows looked up, and %s of a matrix's pages while it is copied there", FormatSize(r.OtherBytes)))
		if r.Pinned > 0 {
			p.Items = append(p.Items, Item{Category: Pinned, Bytes: r.Pinned, OffHeap: true,
				Note: "page-locked buffers blocks stream through to the GPU (two of the largest), if its budget streams them"})
		}
	case c.stream:
		// The block in use is resident; the next one is read ahead into the
		// page cache, which is not this process's memory until touched.
		add(WeightsResident, r.OtherBytes+min(r.EmbedBytes, 1<<20), "output matrix and norms; embedding rows dropped after lookup")
		add(WeightsStreamed, biggest, fmt.Sprintf("%d layers streamed from the mapped file, one resident at a time", len(r.LayerBytes)))
	default:
		add(WeightsResident, all+r.OtherBytes+r.EmbedBytes, "every layer mapped and kept resident")
	}
	act := int64(0)
	if r.Activations != nil {
		act = r.Activations(c.micro, c.checkpoint)
	}
	switch {
	case r.ActivationsNote != "":
		add(Activations, act, r.ActivationsNote)
	case r.Job != "train":
		add(Activations, act, "live buffers of one forward pass")
	case c.spill:
		all, resident := r.Spillable(c.micro)
		add(SavedInputs, act-all+resident, fmt.Sprintf("block inputs (%s) spilled to a file-backed scratch, one block's resident", FormatSize(all)))
	case c.checkpoint:
		add(SavedInputs, act, "each block's input kept; the block recomputed in the backward pass")
	default:
		add(Activations, act, "every block's activations kept for the backward pass")
	}
	if r.Workspace != nil {
		note := r.WorkspaceNote
		if note == "" {
			note = "logits chunk, backward scratch, dequantization panels"
		}
		add(Workspace, r.Workspace(c.micro), note)
	}
	p.Items = append(p.Items, r.Fixed...)
	if r.OptimizerBytes > 0 {
		if c.optDisk {
			add(OptimizerState, r.OptimizerDiskBytes, fmt.Sprintf("%s in a file-backed scratch, one parameter's moments resident at a time", FormatSize(r.OptimizerBytes)))
		} else {
			add(OptimizerState, r.OptimizerBytes, "moments in memory")
		}
	}
	var heap int64
	for _, it := range p.Items {
		if it.Category != WeightsResident && it.Category != WeightsStreamed {
			heap += it.Bytes
		}
	}
	floor := max(0, r.HeapFloor-heap)
	if r.FloorOutsideLimit {
		p.FloorBytes = floor
	}
	add(Runtime, r.Runtime+floor, "binary, Go runtime, tokenizer, GC headroom")
	if r.Scratch > 0 {
		p.ScratchBytes = r.Scratch
		p.Items = append(p.Items, Item{Category: Runtime, Bytes: r.Scratch, Note: "kernel scratch: packed operands, decoded panels, attention blocks (mapped outside the Go heap)", OffHeap: true})
	}
	var heapFree int64
	for _, it := range p.Items {
		p.Peak += it.Bytes
		switch it.Category {
		case WeightsResident, WeightsStreamed, Runtime:
			heapFree += it.Bytes
		case OptimizerState:
			if c.optDisk {
				heapFree += it.Bytes
			}
		}
	}
	p.Margin = Margin(p.Peak)
	if r.Budget > 0 {
		p.HeapLimit = r.Budget - heapFree
	}
	switch {
	case r.Device:
		p.Strategy = append(p.Strategy, "weights on the GPU (copied from the mapped file, a piece at a time)")
	case c.stream:
		p.Strategy = append(p.Strategy, "weights streamed layer by layer from the mapped file (read ahead of use, dropped after)")
	default:
		p.Strategy = append(p.Strategy, "weights resident (memory-mapped)")
	}
	if r.Job == "train" {
		if c.checkpoint {
			p.Strategy = append(p.Strategy, "activation checkpointing")
		}
		if c.optDisk {
			p.Strategy = append(p.Strategy, "optimizer state on disk")
		}
		if c.spill {
			p.Strategy = append(p.Strategy, "checkpointed activations spilled to disk (uncompressed: float32 block inputs measured incompressible by zstd)")
		}
		if p.Accum > 1 {
			p.Strategy = append(p.Strategy, fmt.Sprintf("micro-batches of %d with %d-step gradient accumulation", c.micro, p.Accum))
		}
	}
	return p
}

// String renders the plan as the lines printed before a run.
func (p *Plan) String() string {
	var b strings.Builder
	if p.Budget > 0 {
		fmt.Fprintf(&b, "memory plan: peak %s of a %s budget (%s kept free for run-to-run variation)\n", FormatSize(p.Peak), FormatSize(p.Budget), FormatSize(p.Margin))
	} else {
		fmt.Fprintf(&b, "memory plan: peak %s (no budget set)\n", FormatSize(p.Peak))
	}
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	for _, it := range p.Items {
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", it.Category, FormatSize(it.Bytes), it.Note)
	}
	tw.Flush()
	fmt.Fprintf(&b, "  strategy: %s\n", strings.Join(p.Strategy, "; "))
	fmt.Fprintf(&b, "  placement: %s", p.PlacementString())
	if p.Device != "" {
		fmt.Fprintf(&b, "\n%s", p.Device)
	}
	return b.String()
}
