package model

import (
	"errors"
	"fmt"
	"unsafe"

	"github.com/qtune/qtune/kernels/cuda"
)

// GPUSparse is a sparse delta S (Out, In) on the device (methods/loho's
// and methods/loreml's Sparse): it adds x·Sᵀ to its layer's output; its
// backward accumulates the sampled gradient into Grad (only the stored
// entries; nil: it does not train) and adds dy·S to dx, reading S by
// columns so that no two threads add into one element.
type GPUSparse struct {
	cuda.CSR
	Grad *cuda.Buffer // (Nnz) or nil
	bufs []*cuda.Buffer
}

// NewGPUSparse copies a CSR delta (rowPtr: Out+1 offsets, cols ascending
// within a row) to d with its column-order index, and a zeroed gradient
// when grad.
func NewGPUSparse(d *cuda.Device, out, in int, rowPtr, cols []int32, val []float32, grad bool) (*GPUSparse, error) {
	nnz := len(val)
	if len(rowPtr) != out+1 || len(cols) != nnz || rowPtr[0] != 0 || int(rowPtr[out]) != nnz {
		return nil, fmt.Errorf("model: a sparse delta of %d values with %d row offsets and %d columns for %d×%d", nnz, len(rowPtr), len(cols), out, in)
	}
	// The column-order index: entries of column c in ascending rows.
	colPtr := make([]int32, in+1)
	for _, c := range cols {
		if c < 0 || int(c) >= in {
			return nil, fmt.Errorf("model: a sparse delta's column %d outside %d", c, in)
		}
		colPtr[c+1]++
	}
	for c := 0; c < in; c++ {
		colPtr[c+1] += colPtr[c]
	}
	next := append([]int32(nil), colPtr[:in]...)
	rowIdx, perm := make([]int32, nnz), make([]int32, nnz)
	for o := 0; o < out; o++ {
		for k := rowPtr[o]; k < rowPtr[o+1]; k++ {
			j := next[cols[k]]
			next[cols[k]]++
			rowIdx[j], perm[j] = int32(o), k
		}
	}
	s := &GPUSparse{CSR: cuda.CSR{Out: out, In: in, Nnz: nnz}}
	up := func(b []byte, n int) (*cuda.Buffer, error) {
		buf, err := d.Alloc(int64(max(n, 4)))
		if err != nil {
			return nil, err
		}
		s.bufs = append(s.bufs, buf)
		if len(b) > 0 {
			err = buf.Write(0, b)
		} else {
			err = buf.Zero()
		}
		return buf, err
	}
	var err error
	for _, p := range []struct {
		dst **cuda.Buffer
		b   []byte
		n   int
	}{{&s.RowPtr, i32b(rowPtr), 4 * (out + 1)}, {&s.Cols, i32b(cols), 4 * nnz}, {&s.Val, f32b(val), 4 * nnz},
		{&s.ColPtr, i32b(colPtr), 4 * (in + 1)}, {&s.RowIdx, i32b(rowIdx), 4 * nnz}, {&s.Perm, i32b(perm), 4 * nnz}} {
		if *p.dst, err = up(p.b, p.n); err != nil {
			s.Free()
			return nil, err
		}
	}
	if grad {
		if s.Grad, err = up(nil, 4*nnz); err != nil {
			s.Free()
			return nil, err
		}
	}
	return s, nil
}

func i32b(v []int32) []byte {
	if len(v) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), 4*len(v))
}

func f32b(v []float32) []byte {
	if len(v) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), 4*len(v))
}

// Free releases the delta's device memory.
func (s *GPUSparse) Free() error {
	var errs []error
	for _, b := range s.bufs {
		errs = append(errs, b.Free())
	}
	s.bufs = nil
	return errors.Join(errs...)
}

func (s *GPUSparse) gpuForward(g *GPU, y, x *cuda.Buffer, M int, _ *gpuStep) error {
	return g.d.SparseForward(y, x, M, &s.CSR)
}

func (s *GPUSparse) gpuBackward(g *GPU, dx, dy, x *cuda.Buffer, M int, _ *gpuStep) error {
	if s.Grad != nil {
		if err := g.d.SparseGrad(s.Grad, dy, x, M, &s.CSR); err != nil {
			return err
		}
	}
	return g.d.SparseBackward(dx, dy, M, &s.CSR)
}

// GPUDense is a dense float32 delta D (Out, In) on the device (methods/loho's
// Dense, the zeroth-order part of intra-layer LoHO): it adds x·Dᵀ to its
// layer's output and dy·D to the input gradient; it has no gradient (MeZO
// trains it in place, kernels/cuda's MezoApply).
type GPUDense struct {
	Out, In int
	Val     *cuda.Buffer
}

// NewGPUDense copies val (Out·In, row-major) to d.
func NewGPUDense(d *cuda.Device, out, in int, val []float32) (*GPUDense, error) {
	if out <= 0 || in <= 0 || int64(out)*int64(in) != int64(len(val)) {
		return nil, fmt.Errorf("model: a dense delta of %d values for %d×%d", len(val), out, in)
	}
	b, err := d.Alloc(4 * int64(len(val)))
	if err != nil {
		return nil, err
	}
	if err := b.WriteF32(0, val); err != nil {
		b.Free()
		return nil, err
	}
	return &GPUDense{Out: out, In: in, Val: b}, nil
}

// Free releases the delta's device memory.
func (s *GPUDense) Free() error {
	if s.Val == nil {
		return nil
	}
	err := s.Val.Free()
	s.Val = nil
	return err
}

// In float32 (no reduced-precision products): a perturbation of ε·z is
// far below bf16's resolution of the delta's values.
func (s *GPUDense) gpuForward(g *GPU, y, x *cuda.Buffer, M int, _ *gpuStep) error {
	return g.d.GemmNT(y, x, s.Val, M, s.Out, s.In, true, cuda.F32)
}

func (s *GPUDense) gpuBackward(g *GPU, dx, dy, x *cuda.Buffer, M int, _ *gpuStep) error {
	if dx == nil {
		return nil
	}
	return g.d.GemmNN(dx, dy, s.Val, M, s.In, s.Out, cuda.F32)
}
