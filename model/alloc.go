package model

import (
	"fmt"
	"unsafe"

	"github.com/qtune/qtune/budget"
)

// Alloc gives a method the memory of its long-lived tensors (parameters,
// gradients, their index arrays): n zeroed float32 values booked to cat,
// for instance a slab of the model's accountant that the caller returns
// when the run ends. A nil Alloc takes the Go heap.
type Alloc func(cat budget.Category, n int) ([]float32, error)

// Floats returns n zeroed values from a (the heap when a is nil).
func (a Alloc) Floats(cat budget.Category, n int) ([]float32, error) {
	if n < 0 {
		return nil, fmt.Errorf("model: %s: %d values", cat, n)
	}
	if a == nil {
		return make([]float32, n), nil
	}
	v, err := a(cat, n)
	if err != nil {
		return nil, err
	}
	if len(v) != n {
		return nil, fmt.Errorf("model: %s: asked %d values, given %d", cat, n, len(v))
	}
	return v, nil
}

// Parts carves one buffer from a into pieces of the given lengths (each
// 64-byte aligned), so that a tensor's values, gradient and index arrays are
// one allocation, not several.
func (a Alloc) Parts(cat budget.Category, ns ...int) ([][]float32, error) {
	total := 0
	for _, n := range ns {
		if n < 0 || total > 1<<40 {
			return nil, fmt.Errorf("model: %s: %d values", cat, n)
		}
		total += (n + 15) &^ 15
	}
	v, err := a.Floats(cat, total)
	if err != nil {
		return nil, err
	}
	out := make([][]float32, len(ns))
	off := 0
	for i, n := range ns {
		out[i] = v[off : off+n : off+n]
		off += (n + 15) &^ 15
	}
	return out, nil
}

// Int32s views float memory as int32 values (the same bytes): index arrays
// share the allocations of values.
func Int32s(v []float32) []int32 {
	if len(v) == 0 {
		return []int32{}
	}
	return unsafe.Slice((*int32)(unsafe.Pointer(unsafe.SliceData(v))), len(v))
}
