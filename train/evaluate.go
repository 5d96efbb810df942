package train

import (
	"context"
	"fmt"

	"github.com/qtune/qtune/budget"
	"github.com/qtune/qtune/data"
	"github.com/qtune/qtune/model"
)

// EvaluateOptions is one evaluation as a library call (what `qtune eval`
// does, for an app that embeds qtune).
type EvaluateOptions struct {
	// Data is a plain-text file, a {"text"} or {"prompt","completion"}
	// JSONL file (loss and perplexity), or a classification JSONL file
	// (accuracy).
	Data string
	// Records, when set, are the data already read (LoadEvalData), Data
	// unused.
	Records *EvalData
	// Limit evaluates only the first Limit records (0: all).
	Limit int
	// MaxSeqLen is the scoring window (0: the model's context, at most
	// 1024, shortened by halves down to 64 tokens when the budget needs it).
	MaxSeqLen int
	MaxMem    int64 // budget in bytes; 0: none
	// DeviceOptions say where the model runs (the CPU by default): on a
	// GPU the windows go through a KV cache there, and each position's
	// loss is computed there.
	DeviceOptions

	// OnPlan, when set, is given the memory plan before the model is run;
	// returning false stops there (a plan-only call).
	OnPlan func(*budget.Plan) bool
	// Progress, when set, is called after each record with (done, total).
	Progress func(done, total int)
}

// Evaluated is what Evaluate measured: LM for text and prompt/completion
// data, Class for classification data.
type Evaluated struct {
	Kind  data.Kind
	LM    *LMResult
	Class *ClassResult
	Plan  *budget.Plan
}

// Check range-checks the options (ErrBadOptions).
func (o EvaluateOptions) Check() error {
	switch {
	case o.Data == "" && o.Records == nil:
		return fmt.Errorf("eval: no data file: %w", ErrBadOptions)
	case o.Limit < 0:
		return fmt.Errorf("eval: limit %d: want ≥ 0 (0: all records): %w", o.Limit, ErrBadOptions)
	case o.MaxSeqLen < 0 || o.MaxSeqLen > 1<<20:
		return fmt.Errorf("eval: window of %d tokens: want 0..%d (0: the model's context, at most 1024): %w", o.MaxSeqLen, 1<<20, ErrBadOptions)
	case o.MaxMem < 0:
		return fmt.Errorf("eval: budget of %d bytes: %w", o.MaxMem, ErrBadOptions)
	}
	if err := o.DeviceOptions.Check(); err != nil {
		return fmt.Errorf("eval: %w", err)
	}
	return nil
}

// Evaluate scores m on a data file under the budget: the records are
// booked before they are read, the plan is made before the model runs,
// and the Go heap is limited to its share while it runs (put back after).
// Errors in the data are *data.Error (file and line).
func Evaluate(ctx context.Context, m *model.Model, o EvaluateOptions) (*Evaluated, error) {
	if err := o.Check(); err != nil {
		return nil, err
	}
	d := o.Records
	if d == nil {
		var err error
		if d, err = LoadEvalData(o.Data, o.MaxMem); err != nil {
			return nil, err
		}
	}
	prev := m.Acct
	m.Acct = d.acct
	defer func() { m.Acct = prev }()
	recs, kind, size := d.Records, d.Kind, d.size
	if o.Limit > 0 && o.Limit < len(recs) {
		recs = recs[:o.Limit]
	}
	var err error
	ev := &Evaluated{Kind: kind}
	opt := EvalOptions{MaxSeqLen: o.MaxSeqLen, Progress: o.Progress}
	ev.Plan, err = PlanEval(m, opt.Window(m), size, o.MaxMem, o.Device)
	if err != nil && o.MaxSeqLen == 0 { // a shorter scoring window is the evaluation's own knob
		for w := opt.Window(m) / 2; w >= 64 && err != nil; w /= 2 {
			if p, err2 := PlanEval(m, w, size, o.MaxMem, o.Device); err2 == nil {
				ev.Plan, err, opt.MaxSeqLen = p, nil, w
				p.Strategy = append(p.Strategy, fmt.Sprintf("scoring window shortened to %d tokens", w))
			}
		}
	}
	if err != nil {
		return ev, err
	}
	if o.PlanOnly {
		W := opt.window(m)
		if err := planSessionDry(m, o.DeviceOptions, model.GPUSessionOptions{MaxLen: W, Chunk: min(W, gpuEvalRows), Scoring: true}, ev.Plan); err != nil {
			return ev, err
		}
	}
	if o.OnPlan != nil && !o.OnPlan(ev.Plan) {
		return ev, nil
	}
	if err := budget.CheckAvailable(ev.Plan); err != nil {
		return ev, err
	}
	defer ApplyPlan(m, ev.Plan)()
	W := opt.window(m)
	gg, err := openSessionGPU(m, o.DeviceOptions, model.GPUSessionOptions{MaxLen: W, Chunk: min(W, gpuEvalRows), Scoring: true}, ev.Plan)
	if err != nil {
		return ev, err
	}
	if gg == nil && gpuLikely(m, o.Device) {
		return ev, fmt.Errorf("eval: %w", errPlannedForGPU)
	}
	if gg != nil {
		devicePlacement(ev.Plan, gg.resident)
		o.log("placement: " + ev.Plan.PlacementString())
		defer func() {
			o.log(gg.run.peakLine())
			gg.close()
		}()
		opt.dev = gg.dev
	}
	if kind == data.Classification {
		res, err := EvalClassify(ctx, m, recs, opt)
		if err != nil {
			return ev, fmt.Errorf("%s: %w", d.Path, err)
		}
		ev.Class = &res
		return ev, nil
	}
	res, err := EvalLM(ctx, m, recs, kind, opt)
	if err != nil {
		return ev, fmt.Errorf("%s: %w", o.Data, err)
	}
	ev.LM = &res
	return ev, nil
}

// EvalData is an evaluation's records, read under a budget: their memory
// (three times the file: its text, the records, their tokens) is booked
// before they are read, and stays booked in the evaluation's accounting.
type EvalData struct {
	Path    string
	Records []data.Record
	Kind    data.Kind
	size    int64
	acct    *budget.Accountant
}

// LoadEvalData reads a data file for Evaluate under maxMem (0: none).
// Malformed data is a *data.Error naming the file and line.
func LoadEvalData(path string, maxMem int64) (*EvalData, error) {
	d := &EvalData{Path: path, size: FileSize(path), acct: budget.NewAccountant(maxMem)}
	if err := d.acct.Reserve(budget.TokenCache, -1, 3*d.size); err != nil {
		return nil, err
	}
	var err error
	if d.Records, d.Kind, err = data.Load(path); err != nil {
		return nil, err
	}
	return d, nil
}
