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
	b, err := uploadF32(d, val)
	if err != nil {
		return nil, err
	}
	return &GPUDense{Out: out, In: in, Val: b}, nil
}

// uploadF32 copies v to a new device buffer.
func uploadF32(d *cuda.Device, v []float32) (*cuda.Buffer, error) {
	b, err := d.Alloc(4 * int64(len(v)))
	if err != nil {
		return nil, err
	}
	if err := b.WriteF32(0, v); err != nil {
		b.Free()
		return nil, err
	}
	return b, nil
}

// freeBuf releases *b once.
func freeBuf(b **cuda.Buffer) error {
	if *b == nil {
		return nil
	}
	err := (*b).Free()
	*b = nil
	return err
}

// Free releases the delta's device memory.
func (s *GPUDense) Free() error { return freeBuf(&s.Val) }

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

// GPUScales is methods/mezo's Scales on the device: each quantization
// block b of the layer's frozen weight W gets a multiplier (1 + R[b]), and
// the adapter adds x·ΔWᵀ, ΔW = R[b(o, j)]·W[o, j] with b the flat index
// over Block, decoding W (the block's weight where it is now, resident or
// streamed) into WS in float32 and scaling it there: the CPU's ΔW, value
// for value. Its backward adds dy·ΔW to dx; R gets no gradient (MeZO
// perturbs it in place). WS is shared by every GPUScales of a model (the
// layers run one at a time): 4·Out·In bytes of the largest.
type GPUScales struct {
	Out, In, Block int
	R              *cuda.Buffer
	WS             *cuda.Buffer
}

// NewGPUScales copies r (the ⌈Out·In/Block⌉ relative changes R) to d; ws
// is the shared workspace.
func NewGPUScales(d *cuda.Device, out, in, block int, r []float32, ws *cuda.Buffer) (*GPUScales, error) {
	n := int64(out) * int64(in)
	if out <= 0 || in <= 0 || block <= 0 || int64(len(r)) != (n+int64(block)-1)/int64(block) {
		return nil, fmt.Errorf("model: %d block scales for %d×%d in blocks of %d", len(r), out, in, block)
	}
	if ws == nil || ws.Bytes < 4*n {
		return nil, fmt.Errorf("model: no workspace for the block scales of %d×%d", out, in)
	}
	b, err := uploadF32(d, r)
	if err != nil {
		return nil, err
	}
	return &GPUScales{Out: out, In: in, Block: block, R: b, WS: ws}, nil
}

// Free releases the multipliers (not the shared workspace).
func (s *GPUScales) Free() error { return freeBuf(&s.R) }

// delta decodes the layer's weight into WS and scales its blocks: ΔW.
func (s *GPUScales) delta(g *GPU, st *gpuStep) error {
	w := st.w
	if w == nil || w.Rows != s.Out || w.Cols != s.In {
		return fmt.Errorf("model: block scales of %d×%d beside another weight", s.Out, s.In)
	}
	n := int64(s.Out) * int64(s.In)
	if err := g.d.Dequantize(s.WS, w, 0, n, cuda.F32); err != nil {
		return err
	}
	return g.d.ScaleBlocks(s.WS, s.R, n, s.Block)
}

func (s *GPUScales) gpuForward(g *GPU, y, x *cuda.Buffer, M int, st *gpuStep) error {
	if err := s.delta(g, st); err != nil {
		return err
	}
	return g.d.GemmNT(y, x, s.WS, M, s.Out, s.In, true, cuda.F32)
}

func (s *GPUScales) gpuBackward(g *GPU, dx, dy, x *cuda.Buffer, M int, st *gpuStep) error {
	if dx == nil {
		return nil
	}
	if err := s.delta(g, st); err != nil {
		return err
	}
	return g.d.GemmNN(dx, dy, s.WS, M, s.In, s.Out, cuda.F32)
}
