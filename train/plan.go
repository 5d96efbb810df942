package train

import (
	"fmt"
	"os"
	"runtime/debug"
	"runtime/metrics"

	"github.com/qtune/qtune/budget"
	"github.com/qtune/qtune/data"
	"github.com/qtune/qtune/kernels"
	"github.com/qtune/qtune/model"
	"github.com/qtune/qtune/offload/comm"
)

// runtimeBytes is the process's own footprint besides what the accountant
// books: its Go share (goShare) and the kernels' scratch for m's shapes
// (mapped outside the heap).
func runtimeBytes(m *model.Model) int64 { return goShare(m) + scratchBytes(m, 0, 0) }

// goShare is the binary's code and read-only data (file pages), the Go
// runtime with the model open (its floor, the parsed header, the tokenizer,
// the tables), and headroom for a step's small garbage between collections:
// the plan's first "runtime" item.
//
// The Go runtime with a model open was measured (RssAnon after
// debug.FreeOSMemory, in fresh processes on linux/amd64): 0.9 MiB before
// any model, and opening one added 0.6 MiB at a 512-token vocabulary and
// 6.4 MiB at 32,000; the eight llama.cpp test vocabularies parsed alone took
// 115–304 bytes a token (BPE merges the most). An estimate from the model
// rather than a measurement at run time keeps the plan the same from one
// run to the next, which a named smallest budget needs.
func goShare(m *model.Model) int64 {
	base := goRuntime(m)
	return binaryText + base + gcHeadroom(base)
}

// scratchBytes is the most the kernels' scratch holds for m's shapes with
// batches of up to rows positions of sequences of up to T: the plan's
// scratch item, mapped outside the heap.
func scratchBytes(m *model.Model, rows, T int) int64 {
	c := m.Config
	maxS := max(rows, c.Vocab, c.Hidden, c.Dim, c.Heads*c.HeadDim)
	maxK := max(c.Hidden, c.Dim, c.Heads*c.HeadDim)
	return kernels.ScratchBytes(maxS, maxK, max(T, 1), c.HeadDim)
}

// goRuntime is the Go runtime's resident memory with m open: 2 MiB and
// 256 bytes a vocabulary entry. Measured with the model open alone it was
// 1.5 MiB (above); a training run holds more (its goroutines' stacks, the
// worker pool, timers): stories260K LoRA under 16 MiB held 5.4 MiB of Go
// memory at its peak against 4.8 planned with 1.5, and in a C host with
// every core busy went 1.4% over its budget.
func goRuntime(m *model.Model) int64 { return int64(2<<20) + 256*int64(m.Config.Vocab) }

// gcHeadroom is the garbage a run may hold between collections: the Go
// heap's soft limit leaves it, so that the collector is not driven to run
// back to back.
func gcHeadroom(base int64) int64 { return 1<<20 + base/8 }

// weightRequest fills the weight fields of a planner request and its
// runtime; tokens is how many token lookups the run makes (each touches a
// page of the embedding), T its longest sequence. On a GPU (device) the
// host keeps only the rows it looks up, a piece of a matrix while it is
// copied over, and the pinned buffers of streamed blocks: booked whether
// or not --max-vram's plan streams, which is made once the device is open.
func weightRequest(m *model.Model, r *budget.Request, tokens int64, T int, device bool) {
	r.LayerBytes = m.LayerBytes()
	r.OtherBytes = m.OutputBytes()
	emb := m.EmbedBytes()
	rows := min(emb, tokens*max(emb/int64(m.Config.Vocab), 4096))
	switch {
	case device:
		r.Device, r.EmbedBytes, r.Pinned = true, rows, model.GPUStagingBytes(m)
		r.OtherBytes = model.GPUUploadHeld(m)
	case m.Config.Tied: // the output projection reads the whole embedding
		r.OtherBytes += emb
	default:
		r.EmbedBytes = rows
	}
	r.Runtime = goShare(m)
	r.Scratch = scratchBytes(m, r.Batch*T, T)
}

// PlanGenerate plans generation of up to maxLen tokens (prompt included)
// on device (as --device: "" is the CPU). On the GPU the KV cache and the
// forward's buffers are in --max-vram's plan; the host keeps a token's
// logits for the sampler.
func PlanGenerate(m *model.Model, maxLen, promptLen int, limit int64, device string) (*budget.Plan, error) {
	c := m.Config
	r := budget.Request{Job: "generate", Budget: limit, Batch: 1,
		Activations: func(int, bool) int64 { return c.ForwardBytes(max(promptLen, 1)) },
		Workspace:   func(int) int64 { return int64(4 * c.Vocab) },
		Fixed:       []budget.Item{{Category: budget.KVCache, Bytes: c.KVBytes(maxLen), Note: fmt.Sprintf("%d positions", maxLen)}}}
	gpu := gpuLikely(m, device)
	if gpu {
		onDevice(&r, "a token's logits for the sampler", func(int) int64 { return int64(4 * c.Vocab) })
		r.Fixed[0].Bytes, r.Fixed[0].Note = 0, fmt.Sprintf("%d positions, on the GPU", maxLen)
	}
	r.Fixed = append(r.Fixed, adapterItems(m)...)
	weightRequest(m, &r, int64(maxLen), maxLen, gpu)
	return budget.Make(r)
}

// PlanEval plans evaluation with windows of w tokens over a data file of
// dataBytes on device (as --device). On the GPU the window's KV cache, the
// forward's buffers and the logits are in --max-vram's plan; the host
// keeps one loss per position.
func PlanEval(m *model.Model, w int, dataBytes int64, limit int64, device string) (*budget.Plan, error) {
	c := m.Config
	r := budget.Request{Job: "eval", Budget: limit, Batch: 1,
		Activations: func(int, bool) int64 { return c.ForwardBytes(min(w, EvalRows)) },
		Workspace:   func(int) int64 { return int64(4 * min(w, EvalRows) * c.Vocab) },
		Fixed: []budget.Item{{Category: budget.KVCache, Bytes: c.KVBytes(w), Note: fmt.Sprintf("window of %d tokens", w)},
			{Category: budget.TokenCache, Bytes: 3 * dataBytes, Note: "records and their tokens"}}}
	gpu := gpuLikely(m, device)
	if gpu {
		onDevice(&r, "a window's losses (one float per position)", func(int) int64 { return 8 * int64(w) })
		r.Fixed[0].Bytes, r.Fixed[0].Note = 0, fmt.Sprintf("window of %d tokens, on the GPU", w)
	}
	r.Fixed = append(r.Fixed, adapterItems(m)...)
	weightRequest(m, &r, dataBytes/2, w, gpu)
	return budget.Make(r)
}

// onDevice leaves a plan's activations to the GPU's plan (none in host
// memory); work is what the host keeps as workspace instead.
func onDevice(r *budget.Request, workNote string, work func(b int) int64) {
	r.Activations = func(int, bool) int64 { return 0 }
	r.ActivationsNote = "on the GPU (in --max-vram's plan): none in host memory"
	r.Workspace, r.WorkspaceNote = work, workNote
}

// adapterItems is the plan's item for the adapter applied to m (none when
// there is none): its values, on the Go heap.
func adapterItems(m *model.Model) []budget.Item {
	n := model.AdapterBytes(m.Adapters)
	if n == 0 {
		return nil
	}
	return []budget.Item{{Category: budget.Trainable, Bytes: n, Note: "the applied adapter's values"}}
}

// DataMem is what a training run's data holds in memory. The tokens stay in
// the token cache files on disk; memory is per example (the files' indexes,
// the batchers' orders) plus the buffers of one step.
type DataMem struct {
	Examples int64 // of the train and valid splits
	Tokens   int64 // of the train and valid splits, on disk
	Bytes    int64
}

// dataMem is the DataMem of a run over the opened token files (valid may be
// nil): each file's index, a batcher over it (the valid split's is made at
// each evaluation), and the batches of a step and of an evaluation.
func dataMem(cfg Config, train, valid *data.TokenFile) DataMem {
	o := data.BatchOptions{BatchSize: cfg.BatchSize, MaxSeqLen: cfg.MaxSeqLength, Pack: cfg.Pack}
	var d DataMem
	for _, tf := range []*data.TokenFile{train, valid} {
		if tf == nil {
			continue
		}
		n := int64(tf.NumExamples())
		d.Examples += n
		d.Tokens += tf.NumTokens()
		d.Bytes += tf.MemBytes() + data.BatcherBytes(n, o)
	}
	d.Bytes += int64(max(cfg.GradAccum, 1)+1) * data.BatchBytes(o)
	return d
}

// PlanTrain plans a training run of meth over m with the data d.
func PlanTrain(m *model.Model, cfg Config, meth Method, d DataMem, limit int64) (*budget.Plan, error) {
	c := m.Config
	T := cfg.MaxSeqLength
	r := budget.Request{Job: "train", Budget: limit, Batch: cfg.BatchSize, CanCheckpoint: true,
		Activations: func(b int, ckpt bool) int64 { return c.ActivationBytes(b, T, ckpt) },
		Workspace:   func(b int) int64 { return c.StepWorkspaceBytes(b, T, true) },
		Fixed: []budget.Item{
			{Category: budget.Trainable, Bytes: meth.StateBytes(), Note: meth.Describe()},
			{Category: budget.Gradients}, // split off the method's state below
			{Category: budget.TokenCache, Bytes: d.Bytes, Note: fmt.Sprintf("index of %d examples and a step's batches (their %d tokens on disk)", d.Examples, d.Tokens)}}}
	weightRequest(m, &r, d.Tokens, T, cfg.onGPU)
	if g := cfg.parallel(); g != nil && g.Footprint() > 0 {
		// MPI's libraries, heap and shared memory in this rank: measured
		// when it started (mpi.Open), outside the Go heap and the slabs.
		r.Fixed = append(r.Fixed, budget.Item{Category: budget.Runtime, Bytes: g.Footprint(), OffHeap: true,
			Note: fmt.Sprintf("communication: the MPI library's code, heap and shared memory in this rank (measured at start, with a %s bucket)", budget.FormatSize(4*comm.BucketFloats))})
	}
	// Training makes garbage enough to reach it (Go keeps a 4 MiB goal plus
	// its own spans); with the runtime item's headroom, 3 MiB more centres
	// the plan on tiny first-order runs, whose peaks measured 11.8–13.8 MiB
	// (stories260K Q4_0, every method, memtest) against 15.8 planned with 5.
	r.HeapFloor = 3 << 20
	if _, ok := meth.(scoring); ok {
		// A method that only scores (MeZO) makes little garbage per step;
		// a training run's outputs (checkpoint compression, adapter files)
		// still pass through the heap, ~3 MiB measured on tiny runs. That is
		// forecast in the plan but not granted to the heap's soft limit, so
		// that the run stays at evaluation's footprint.
		r.HeapFloor, r.FloorOutsideLimit = 1<<20, true
	}
	if od, ok := meth.(optimizerOnDisk); ok {
		total, largest := od.OptimizerBytes()
		if total > 0 {
			r.Fixed[0].Bytes -= total
			r.OptimizerBytes, r.OptimizerDiskBytes = total, largest
		}
	}
	// Of the rest, the parameters themselves are 4 bytes per trainable
	// value; what is left (first-order methods) is their gradients.
	params := min(4*meth.Trainable(), r.Fixed[0].Bytes)
	r.Fixed[1].Bytes = r.Fixed[0].Bytes - params
	r.Fixed[1].Note = "of the trainable parameters (none for zeroth-order updates)"
	r.Fixed[0].Bytes = params
	// Both are slabs (Run's slabSet and slabMoments), each booked to the
	// next page: the method's, and the optimizer state's and a stage's
	// to come.
	r.Fixed[0].OffHeap, r.Fixed[1].OffHeap = true, true
	r.Fixed[0].Bytes += 4096 * int64(cfg.tensors.count()+laterSlabs(meth))
	r.Spillable = func(b int) (int64, int64) {
		one := 4 * int64(b*T*c.Dim)
		return int64(c.Layers) * one, one
	}
	// Methods that do not back-propagate through every block (MeZO, LoHO)
	// say what one step of theirs keeps.
	if sa, ok := meth.(interface {
		StepActivations(B, T int, ckpt bool) int64
		StepWorkspace(B, T int) int64
	}); ok {
		r.Activations = func(b int, ckpt bool) int64 { return sa.StepActivations(b, T, ckpt) }
		r.Workspace = func(b int) int64 { return sa.StepWorkspace(b, T) }
	}
	// The adapters' own scratch (products with the rows, dropout masks) is
	// a part of the step's workspace slab (model.ScratchAdapter).
	if sa, ok := meth.(interface{ stepAdapters() []model.Adapters }); ok {
		work := r.Workspace
		r.Workspace = func(b int) int64 {
			n := 0
			for _, ad := range sa.stepAdapters() {
				n = max(n, model.AdapterScratchFloats(ad, b*T))
			}
			return work(b) + 4*int64((n+15)&^15)
		}
	}
	if an, ok := meth.(interface{ ActivationsNote() string }); ok {
		r.ActivationsNote = an.ActivationsNote()
	}
	if cfg.onGPU {
		// The step's activations and workspace are on the device, in
		// --max-vram's plan; the host keeps a copy-back buffer of the
		// largest gradient and the batch's tokens.
		var largest int64
		for _, t := range meth.Tensors() {
			largest = max(largest, int64(len(t.Data)))
		}
		onDevice(&r, "a gradient's copy from the GPU, the batch's tokens", func(b int) int64 { return 4*largest + 16*int64(b*T) })
		r.CanCheckpoint = cfg.GradCheckpoint
	}
	// Asked for, it is kept: the planner may shrink the micro-batch or
	// stream, never drop the checkpointing the user chose.
	r.Checkpoint = cfg.GradCheckpoint
	p, err := budget.Make(r)
	if g := cfg.parallel(); g != nil && p != nil {
		line := fmt.Sprintf("data-parallel: %s; %s summed per step", g.Name(), commBytes(cfg, meth))
		if _, ok := meth.(*loraMethod); ok && (cfg.Device == "" || cfg.Device == "cpu") { // the GPU step sums after it
			_, why := cfg.overlapSums()
			line += ", " + why
		}
		p.Strategy = append(p.Strategy, line)
	}
	return p, err
}

// commBytes says what a data-parallel step sums over the ranks: every
// trainable value's gradient and two float64s (loss, tokens) for LoRA and
// LoReML (the stage's), one float64 per perturbed evaluation for MeZO, and
// both for LoHO (its first-order gradients on first-order steps). The sums are made in place
// (no buffer besides the gradients), at most comm.BucketFloats values per
// call, so that the library's own copy of a message is bounded (it is in
// the plan's communication item).
func commBytes(cfg Config, meth Method) string {
	bucket := budget.FormatSize(4 * comm.BucketFloats)
	switch h := meth.(type) {
	case *mezoMethod:
		return fmt.Sprintf("%d B (one float64 per perturbed evaluation)", 16*max(cfg.Perturbations, 1))
	case *lohoMethod:
		var fo int64
		for _, p := range h.fo {
			fo += int64(len(p.W))
		}
		zo := ""
		if h.zo != nil {
			zo = fmt.Sprintf(", %d B for the zeroth-order part (one float64 per perturbed evaluation)", 16*max(cfg.Perturbations, 1))
		}
		return fmt.Sprintf("%s on first-order steps (their gradients, in place, in buckets of %s, and the loss and token count)%s", budget.FormatSize(4*fo+16), bucket, zo)
	}
	return budget.FormatSize(4*meth.Trainable()+16) + fmt.Sprintf(" (every gradient, in place, in buckets of %s, and the loss and token count)", bucket)
}

// laterSlabs is how many slabs meth makes after it is built: the
// optimizer state's, unless it says otherwise.
func laterSlabs(meth Method) int {
	if l, ok := meth.(interface{ laterSlabs() int }); ok {
		return l.laterSlabs()
	}
	return 1
}

// ApplyPlan makes m follow p: streaming as planned, every buffer that grows
// with the batch a slab of the accountant's, and the Go heap limited to
// what the plan leaves for it. The heap limit is process-wide: restore puts
// back the one in force before (an app that embeds qtune calls it when the
// run is done).
//
// The accountant's limit is the budget less the mapped weights and the
// runtime: slabs (activations, workspace, KV cache, the method's tensors
// and its optimizer's moments) and the bookings of what lives on the heap
// (an applied adapter, the token cache) share it. The Go heap's soft limit
// is what the plan puts on the heap: those bookings and the runtime's heap
// part, less the binary's text (file pages, not heap); items marked
// OffHeap (the method's state, the kernels' scratch) are not in it. Slabs
// and the scratch are outside the heap, so the collector's pace cannot move
// them; what it can move is the small garbage of a step, inside the
// runtime. The kernels' scratch is limited to its item
// (kernels.SetScratchLimit) until restore.
func ApplyPlan(m *model.Model, p *budget.Plan) (restore func()) {
	m.Stream = p.Stream
	var heap int64
	for _, it := range p.Items {
		switch it.Category {
		case budget.Trainable, budget.Gradients, budget.TokenCache, budget.Runtime:
			if !it.OffHeap { // an adapter applied to generate or eval
				heap += it.Bytes
			}
		}
		// optimizer state is the optimizer's moments, a slab in Run
		// (slabMoments), or on disk
	}
	soft := heap - p.FloorBytes - binaryText
	// Without a budget the accountant has no limit, but its slabs still
	// keep the batch's buffers off the heap, which the soft limit assumes.
	if m.Acct == nil {
		m.Acct = budget.NewAccountant(0)
	}
	if p.Budget > 0 && p.HeapLimit > 0 {
		// The accountant gets what the plan books (and a MiB for the
		// slabs' page rounding); the budget's slack past the plan goes to
		// the heap, whose live data then sits well under its goal (at the
		// plan's share alone a 110M run at 160 MiB collected 960 times in
		// 6 steps). At the smallest budget there is no slack and the heap
		// has its share.
		acct := min(p.HeapLimit, p.HeapLimit-(p.Budget-p.Peak)+1<<20)
		m.Acct.SetLimit(acct)
		soft += max(p.HeapLimit-acct-p.Margin, 0) // the margin stays free
	}
	// The soft limit counts everything the Go runtime has mapped and not
	// returned, including its metadata, which is mostly not resident. In a
	// small process the plan's heap share can be below that overhead, and
	// the heap goal then falls to a MiB and the collector runs without pause
	// (stories260K generated 10x slower): the limit is never below the
	// overhead, measured once free pages are returned, plus 4 MiB. Adding
	// the overhead to every share instead let 110M runs pass their budget
	// by 3-4% (the sweep caught it).
	soft = max(soft, goOverhead()+4<<20) + goUnresident()
	prev := debug.SetMemoryLimit(soft)
	prevScratch := kernels.SetScratchLimit(p.ScratchBytes)
	return func() {
		debug.SetMemoryLimit(prev)
		kernels.SetScratchLimit(prevScratch)
		kernels.ReleaseScratch() // an app that embeds qtune gets the blocks back
	}
}

// goUnresident is address space the Go runtime maps at start and that the
// soft limit counts, but that is not resident: the profile's bucket hash
// table (1.4 MiB, mapped whatever the profiling rate; with no heap profile
// sampled its zero pages are never written). Without it in the soft limit,
// a 110M run whose kernels' scratch is outside the heap had its heap goal
// at its live heap and collected 4,262 times in 3 steps.
func goUnresident() int64 {
	s := []metrics.Sample{{Name: "/memory/classes/profiling/buckets:bytes"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return min(int64(s[0].Value.Uint64()), 2<<20)
}

// goOverhead is the memory the Go runtime holds mapped besides heap
// objects once free pages are returned: its metadata and stacks, mostly
// mapped but not resident (the resident part is in the runtime item).
func goOverhead() int64 {
	debug.FreeOSMemory()
	s := []metrics.Sample{{Name: "/memory/classes/total:bytes"}, {Name: "/memory/classes/heap/released:bytes"},
		{Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(s)
	var v [3]int64
	for i := range s {
		if s[i].Value.Kind() == metrics.KindUint64 {
			v[i] = int64(s[i].Value.Uint64())
		}
	}
	return min(max(v[0]-v[1]-v[2], 2<<20), 8<<20)
}

// tokenizingHeap is the Go heap's soft limit while a run tokenizes its
// data under limit, before there is a plan: the budget less the binary's
// pages, the weights (opening the model may have read them all) and the
// plan's margin; never under the runtime's own mapped overhead and 4 MiB,
// where the collector would run without pause.
func tokenizingHeap(m *model.Model, limit int64) int64 {
	return max(limit-binaryText-m.WeightBytes()-budget.Margin(limit), goOverhead()+4<<20)
}

// binaryText is the part of the runtime item that is the binary's code and
// read-only data: file pages the kernel maps, not heap (text 6.4 MB with
// size(1) on linux/amd64, of which a run touches most).
const binaryText = 6 << 20

// FileSize returns a file's size, or 0.
func FileSize(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	if st.IsDir() {
		var n int64
		for _, f := range []string{"train.jsonl", "valid.jsonl"} {
			n += FileSize(path + "/" + f)
		}
		return n
	}
	return st.Size()
}
