package optim

import (
	"fmt"
	"math"
	"slices"
)

// Schedule kinds.
const (
	Constant = "constant"
	Linear   = "linear"
	Cosine   = "cosine"
)

// scheduleKinds is the table of accepted Schedule.Kind values.
var scheduleKinds = []string{Constant, Linear, Cosine}

// ScheduleKinds returns the accepted Schedule.Kind values, for flag help.
func ScheduleKinds() []string { return slices.Clone(scheduleKinds) }

// Schedule is a learning rate as a function of the 0-based optimizer step,
// as Hugging Face transformers' get_*_schedule_with_warmup:
//
//	step < Warmup:           Peak * step / Warmup   (0 at step 0)
//	constant:                Peak
//	linear, Warmup <= step:  Min + (Peak-Min) * (1 - p)
//	cosine, Warmup <= step:  Min + (Peak-Min) * (1 + cos(pi*p)) / 2
//	linear, cosine, step >= Total: Min
//
// where p = (step-Warmup) / max(1, Total-Warmup). With Min 0 this is exactly
// get_linear_schedule_with_warmup and get_cosine_schedule_with_warmup; Min
// plays the role of min_lr in get_cosine_with_min_lr_schedule_with_warmup.
// Unlike transformers, the cosine stays at Min after Total instead of rising
// again.
type Schedule struct {
	Kind          string  // Constant, Linear or Cosine
	Peak, Min     float64 // learning rate after warmup, and the floor decay ends at
	Warmup, Total int     // warmup steps; total steps (linear and cosine)
}

// Validate reports whether the schedule is usable.
func (s Schedule) Validate() error {
	switch {
	case !slices.Contains(scheduleKinds, s.Kind):
		return fmt.Errorf("optim: schedule kind %q: want one of %v: %w", s.Kind, scheduleKinds, ErrConfig)
	case !finite(s.Peak) || s.Peak < 0:
		return fmt.Errorf("optim: schedule peak %v: must be finite and >= 0: %w", s.Peak, ErrConfig)
	case !finite(s.Min) || s.Min < 0 || s.Min > s.Peak:
		return fmt.Errorf("optim: schedule min %v: must be in [0, peak %v]: %w", s.Min, s.Peak, ErrConfig)
	case s.Warmup < 0:
		return fmt.Errorf("optim: schedule warmup %d: must be >= 0: %w", s.Warmup, ErrConfig)
	case s.Kind != Constant && (s.Total < 1 || s.Total < s.Warmup):
		return fmt.Errorf("optim: %s schedule total %d: must be >= 1 and >= warmup %d: %w",
			s.Kind, s.Total, s.Warmup, ErrConfig)
	}
	return nil
}

// LR returns the learning rate of the 0-based step (a negative step counts
// as 0). It returns NaN for a Kind that Validate refuses, which every
// optimizer's Step rejects.
func (s Schedule) LR(step int) float64 {
	if !slices.Contains(scheduleKinds, s.Kind) {
		return math.NaN()
	}
	step = max(step, 0)
	if step < s.Warmup {
		return s.Peak * float64(step) / float64(s.Warmup)
	}
	if s.Kind == Constant {
		return s.Peak
	}
	if step >= s.Total {
		return s.Min
	}
	p := float64(step-s.Warmup) / float64(max(1, s.Total-s.Warmup))
	var f float64
	if s.Kind == Linear {
		f = 1 - p
	} else {
		f = 0.5 * (1 + math.Cos(math.Pi*p))
	}
	return s.Min + (s.Peak-s.Min)*f
}
