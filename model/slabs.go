package model

import (
	"unsafe"

	"github.com/qtune/qtune/budget"
)

// part is one buffer carved out of a slab: where to put it and its length.
type part struct {
	p *[]float32
	n int
}

// slabs holds the buffers a call takes from the accountant, so that they all
// go back when it returns (budget.Accountant.Floats: memory outside the Go
// heap, booked while held).
type slabs struct {
	acct *budget.Accountant
	held [][]float32
}

// carve takes one slab for the parts, booked to cat and layer, and points
// each part at its piece (64-byte aligned, zeroed).
func (s *slabs) carve(cat budget.Category, layer int, parts ...part) error {
	n := 0
	for _, p := range parts {
		n += (p.n + 15) &^ 15
	}
	v, err := s.acct.Floats(cat, layer, n)
	if err != nil {
		return err
	}
	s.held = append(s.held, v)
	off := 0
	for _, p := range parts {
		*p.p = v[off : off+p.n : off+p.n]
		off += (p.n + 15) &^ 15
	}
	return nil
}

// put returns the slab that starts with v before the call ends.
func (s *slabs) put(v []float32) {
	if len(v) == 0 {
		return
	}
	for i, h := range s.held {
		if len(h) > 0 && unsafe.SliceData(h) == unsafe.SliceData(v) {
			s.acct.Free(h)
			s.held = append(s.held[:i], s.held[i+1:]...)
			return
		}
	}
	panic("model: put of a buffer not held")
}

// free returns every slab still held.
func (s *slabs) free() {
	for _, h := range s.held {
		s.acct.Free(h)
	}
	s.held = nil
}
