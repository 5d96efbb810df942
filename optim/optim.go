package optim

import (
	"errors"
	"fmt"
	"math"
)

// Errors that callers can branch on with errors.Is.
var (
	// ErrConfig marks invalid hyper-parameters, learning rates or schedules.
	ErrConfig = errors.New("invalid configuration")
	// ErrParam marks an invalid parameter list: a nil entry, an empty or
	// duplicate name, a gradient whose length differs from its weight's.
	ErrParam = errors.New("invalid parameter")
	// ErrState marks optimizer state that does not fit: unknown names in
	// LoadState, buffers whose length differs from the parameter's.
	ErrState = errors.New("state mismatch")
)

// Param is one trainable parameter: a flat float32 weight and its gradient
// of the same length. A Param with a nil G is frozen for this step and is
// skipped by optimizers (its state, if any, is kept).
type Param struct {
	Name  string    // unique; optimizer state is keyed by it
	W     []float32 // (n) weights, updated in place
	G     []float32 // (n) gradient, read by Step; nil: skip this parameter
	Decay bool      // apply weight decay (false for norms, biases, scales)
}

// StateTensor is one named optimizer buffer, e.g. "adamw.m/<param>".
type StateTensor struct {
	Name string
	Data []float32
}

// Optimizer updates parameters from their gradients.
type Optimizer interface {
	// Step updates every param with a non-nil G using learning rate lr.
	// It validates everything before changing anything: on error no
	// weight and no state has been modified.
	Step(params []*Param, lr float64) error
	// State returns the optimizer's buffers sorted by name. The slices
	// alias the live state: save them before the next Step.
	State() []StateTensor
	// LoadState replaces all state with copies of the given buffers.
	LoadState([]StateTensor) error
	// Name is the optimizer's name as used in state tensor names.
	Name() string
	// StateBytes is the memory the state needs for numParams trainable
	// float32 values (the budget planner reserves it before training).
	StateBytes(numParams int64) int64
}

// Both optimizers satisfy the interface.
var (
	_ Optimizer = (*AdamW)(nil)
	_ Optimizer = (*SGD)(nil)
)

// checkParams validates a parameter list for Step.
func checkParams(params []*Param) error {
	seen := make(map[string]struct{}, len(params))
	for i, p := range params {
		if p == nil {
			return fmt.Errorf("optim: param %d: nil: %w", i, ErrParam)
		}
		if p.Name == "" {
			return fmt.Errorf("optim: param %d: empty name: %w", i, ErrParam)
		}
		if _, dup := seen[p.Name]; dup {
			return fmt.Errorf("optim: param %q: duplicate name: %w", p.Name, ErrParam)
		}
		seen[p.Name] = struct{}{}
		if p.G != nil && len(p.G) != len(p.W) {
			return fmt.Errorf("optim: param %q: gradient has %d values, weight %d: %w",
				p.Name, len(p.G), len(p.W), ErrParam)
		}
	}
	return nil
}

func finite(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }

// checkLR validates a learning rate.
func checkLR(name string, lr float64) error {
	if !finite(lr) || lr < 0 {
		return fmt.Errorf("optim: %s: learning rate %v: must be finite and >= 0: %w", name, lr, ErrConfig)
	}
	return nil
}

// ZeroGrad sets every gradient to zero. Nil params and nil gradients are
// skipped.
func ZeroGrad(params []*Param) {
	for _, p := range params {
		if p != nil {
			clear(p.G)
		}
	}
}

// GradNorm returns the global L2 norm of all gradients, summed in float64 in
// parameter order.
func GradNorm(params []*Param) float64 {
	var ss float64
	for _, p := range params {
		if p == nil {
			continue
		}
		for _, g := range p.G {
			ss += float64(g) * float64(g)
		}
	}
	return math.Sqrt(ss)
}

// ClipGradNorm scales all gradients so that their global L2 norm is at most
// maxNorm, as torch.nn.utils.clip_grad_norm_: the factor is
// maxNorm/(norm+1e-6), applied when it is below 1. It returns the norm before
// clipping. maxNorm <= 0 (or NaN) disables clipping; a non-finite norm is
// returned with the gradients untouched, for the caller to skip the step.
func ClipGradNorm(params []*Param, maxNorm float64) (norm float64) {
	norm = GradNorm(params)
	if !(maxNorm > 0) || !finite(norm) {
		return norm
	}
	coef := maxNorm / (norm + 1e-6)
	if coef < 1 {
		ScaleGrads(params, coef)
	}
	return norm
}

// ScaleGrads multiplies every gradient by s (computed in float64, rounded
// once).
func ScaleGrads(params []*Param, s float64) {
	for _, p := range params {
		if p == nil {
			continue
		}
		for i, g := range p.G {
			p.G[i] = float32(float64(g) * s)
		}
	}
}
