package train

import "context"

// The phases of a training run, in Progress.Phase.
const (
	PhaseConverting = "converting base" // a float base quantized to NF4 once (qlora)
	PhaseTokenizing = "tokenizing"      // the data's token cache (fast when it is cached)
	PhaseTraining   = "training"
	PhaseValidating = "validating"
	PhaseSaving     = "saving" // a state to resume from, or the outputs
)

// The kinds of Progress reports.
const (
	KindTrain      = "train"       // an optimizer step's report (every StepsPerReport)
	KindVal        = "val"         // a validation's loss
	KindPhase      = "phase"       // a phase begins
	KindMicroBatch = "micro-batch" // a micro-batch (forward pass) begins
)

// reporter carries a run's progress into the calls below Run (the base's
// conversion, the steps' micro-batches) through their context.
type reporter struct {
	on    func(Progress)
	phase string
}

type reporterKey struct{}

func withReporter(ctx context.Context, on func(Progress)) context.Context {
	return context.WithValue(ctx, reporterKey{}, &reporter{on: on})
}

// reportPhase says that a phase begins (nothing without a reporter, or
// when it is the phase the run is in).
func reportPhase(ctx context.Context, phase string, iter int) {
	if r, _ := ctx.Value(reporterKey{}).(*reporter); r != nil && r.phase != phase {
		r.phase = phase
		r.on(Progress{Iter: iter, Kind: KindPhase, Phase: phase})
	}
}

// reportMicroBatch says that micro-batch k (0-based) of n of iteration it
// begins.
func reportMicroBatch(ctx context.Context, it, k, n int) {
	if r, _ := ctx.Value(reporterKey{}).(*reporter); r != nil {
		r.on(Progress{Iter: it, Kind: KindMicroBatch, Phase: r.phase, MicroBatch: k + 1, MicroBatches: n})
	}
}
