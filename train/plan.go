package train

import (
	"fmt"
	"os"
	"runtime/debug"

	"github.com/qtune/qtune/budget"
	"github.com/qtune/qtune/data"
	"github.com/qtune/qtune/model"
)

// runtimeBytes estimates the process's own footprint: the binary and Go
// runtime (measured at about 9 MiB for stories260K), the parsed header and
// tokenizer (grow with the vocabulary), and headroom for garbage not yet
// collected.
func runtimeBytes(m *model.Model) int64 {
	n := int64(16 << 19) // 8 MiB: the binary grew by the Jinja engine (generate on stories260K now peaks at 8.5-9.2 MiB)
	if m.Tokenizer != nil {
		n += int64(m.Tokenizer.VocabSize()) * 300
	}
	return n
}

// weightRequest fills the weight fields of a planner request; tokens is how
// many token lookups the run makes (each touches a page of the embedding).
func weightRequest(m *model.Model, r *budget.Request, tokens int64) {
	r.LayerBytes = m.LayerBytes()
	r.OtherBytes = m.OutputBytes()
	emb := m.EmbedBytes()
	if m.Config.Tied { // the output projection reads the whole embedding
		r.OtherBytes += emb
	} else {
		row := emb / int64(m.Config.Vocab)
		r.EmbedBytes = min(emb, tokens*max(row, 4096))
	}
	r.Runtime = runtimeBytes(m)
}

// PlanGenerate plans generation of up to maxLen tokens (prompt included).
func PlanGenerate(m *model.Model, maxLen, promptLen int, limit int64) (*budget.Plan, error) {
	c := m.Config
	r := budget.Request{Job: "generate", Budget: limit, Batch: 1,
		Activations: func(int, bool) int64 { return c.ForwardBytes(max(promptLen, 1)) },
		Workspace:   func(int) int64 { return int64(4 * c.Vocab) },
		Fixed:       []budget.Item{{Category: budget.KVCache, Bytes: c.KVBytes(maxLen), Note: fmt.Sprintf("%d positions", maxLen)}}}
	weightRequest(m, &r, int64(maxLen))
	return budget.Make(r)
}

// PlanEval plans evaluation with windows of w tokens over a data file of
// dataBytes.
func PlanEval(m *model.Model, w int, dataBytes int64, limit int64) (*budget.Plan, error) {
	c := m.Config
	r := budget.Request{Job: "eval", Budget: limit, Batch: 1,
		Activations: func(int, bool) int64 { return c.ForwardBytes(min(w, EvalRows)) },
		Workspace:   func(int) int64 { return int64(4 * min(w, EvalRows) * c.Vocab) },
		Fixed: []budget.Item{{Category: budget.KVCache, Bytes: c.KVBytes(w), Note: fmt.Sprintf("window of %d tokens", w)},
			{Category: budget.TokenCache, Bytes: 3 * dataBytes, Note: "records and their tokens"}}}
	weightRequest(m, &r, dataBytes/2)
	return budget.Make(r)
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
	weightRequest(m, &r, d.Tokens)
	// Training makes garbage enough to reach it (Go keeps a 4 MiB goal plus
	// its own spans); 6 MiB centres the plan on tiny first-order runs, whose
	// peaks measured 12.3–15.0 MiB (stories260K Q4_0, every method, memtest)
	// against 15.0 planned with 7 once the token cache moved to disk.
	r.HeapFloor = 5 << 20
	if _, ok := meth.(scoring); ok {
		// A method that only scores (MeZO) makes little garbage per step;
		// a training run's outputs (checkpoint compression, adapter files)
		// still pass through the heap, ~3 MiB measured on tiny runs. That is
		// forecast in the plan but not granted to the heap's soft limit, so
		// that the run stays at evaluation's footprint.
		r.HeapFloor, r.FloorOutsideLimit = 3<<20, true
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
	if an, ok := meth.(interface{ ActivationsNote() string }); ok {
		r.ActivationsNote = an.ActivationsNote()
	}
	// Asked for, it is kept: the planner may shrink the micro-batch or
	// stream, never drop the checkpointing the user chose.
	r.Checkpoint = cfg.GradCheckpoint
	return budget.Make(r)
}

// ApplyPlan makes m follow p: streaming as planned, every large buffer
// reserved against the budget, and the Go heap limited to what the plan
// leaves for it. The heap limit is process-wide: restore puts back the one
// in force before (an app that embeds qtune calls it when the run is done).
//
// The heap is held near the plan (a soft limit of the planned heap plus a
// tenth, never above what the budget leaves), so garbage does not double
// the footprint and the printed plan stays what the run uses.
func ApplyPlan(m *model.Model, p *budget.Plan) (restore func()) {
	m.Stream = p.Stream
	var nonHeap int64
	for _, it := range p.Items {
		switch it.Category {
		case budget.WeightsResident, budget.WeightsStreamed:
			nonHeap += it.Bytes
		}
	}
	soft := (p.Peak - nonHeap - p.FloorBytes) * 11 / 10
	if p.Budget > 0 && p.HeapLimit > 0 {
		if m.Acct == nil {
			m.Acct = budget.NewAccountant(p.HeapLimit)
		} else {
			m.Acct.SetLimit(p.HeapLimit)
		}
		// Under CPU contention the collector overshoots its limit by a few
		// percent (memtest saw +8% over plan on a loaded machine): leave a
		// twentieth of the budget between the soft limit and the budget.
		soft = min(soft, max(p.HeapLimit-p.Budget/20, p.HeapLimit/2))
	}
	prev := debug.SetMemoryLimit(soft)
	return func() { debug.SetMemoryLimit(prev) }
}

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
