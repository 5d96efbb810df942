package mezo

import (
	"errors"
	"fmt"
	"math"
)

// MaxRowSum bounds, for every row o of what a zeroth-order state puts into
// a matrix (a block-scale or dense delta ΔW, a trained float matrix W), the
// sum Σ_j |ΔW[o, j]|: the largest output the row gives for inputs of
// magnitude ≤ 1. Below it that output still has a finite square in float32
// (attention multiplies two projections' outputs); trained values are
// orders of magnitude under it. A state past it is finite yet turns the
// forward's outputs infinite, then NaN: 1e38 in a file passes a NaN check.
var MaxRowSum = math.Sqrt(math.MaxFloat32)

// ErrRange marks a state whose values, applied, would overflow float32.
var ErrRange = errors.New("values too large to apply")

// CheckRows refuses the (rows, cols) values v of name (row-major) when a
// value is not finite or a row's magnitudes sum past MaxRowSum. A vector
// (a norm's weights, which scale a row of unit RMS) is checked as rows of
// one value.
func CheckRows(name string, v []float32, rows, cols int) error {
	if rows*cols != len(v) {
		return fmt.Errorf("mezo: %s: %d values for %dx%d", name, len(v), rows, cols)
	}
	for o := 0; o < rows; o++ {
		var s float64
		for j, x := range v[o*cols : (o+1)*cols] {
			f := math.Abs(float64(x))
			if math.IsNaN(f) || math.IsInf(f, 0) {
				return fmt.Errorf("mezo: %s: value %d is %v: %w", name, o*cols+j, x, ErrRange)
			}
			s += f
		}
		if s > MaxRowSum {
			if cols == 1 {
				return rangeErr(name, fmt.Sprintf("value %d is %.3g", o, v[o]))
			}
			return rangeErr(name, fmt.Sprintf("row %d sums to %.3g in magnitude", o, s))
		}
	}
	return nil
}

func rangeErr(name, what string) error {
	return fmt.Errorf("mezo: %s: %s, past %.3g: applied, the forward would overflow float32: %w", name, what, MaxRowSum, ErrRange)
}

// CheckTensor is CheckRows over t's shape: (rows, cols) when it has two
// dimensions, its values one by one otherwise.
func CheckTensor(t Tensor) error {
	if len(t.Shape) == 2 {
		return CheckRows(t.Name, t.Data, t.Shape[0], t.Shape[1])
	}
	return CheckRows(t.Name, t.Data, len(t.Data), 1)
}

// CheckRange refuses scales whose ΔW = R·W (each block of W times its
// R[b]) has a row whose magnitudes sum past MaxRowSum, or a multiplier that
// is not finite. It decodes W once, a row at a time (as one forward does).
func (s *Scales) CheckRange() error {
	name := s.Target + ".block_scale"
	for b, r := range s.R {
		if f := float64(r); math.IsNaN(f) || math.IsInf(f, 0) {
			return fmt.Errorf("mezo: %s: value %d is %v: %w", name, b, r, ErrRange)
		}
	}
	In := s.W.Cols
	w := make([]float32, In)
	for o := 0; o < s.W.Rows; o++ {
		s.W.Row(w, o)
		var sum float64
		base := o * In
		for j, x := range w {
			sum += math.Abs(float64(s.R[(base+j)/s.Block]) * float64(x))
		}
		if sum > MaxRowSum {
			return rangeErr(name, fmt.Sprintf("row %d of R·W sums to %.3g in magnitude", o, sum))
		}
	}
	return nil
}
