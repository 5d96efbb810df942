package mezo

import (
	"fmt"
	"unsafe"

	"github.com/qtune/qtune/budget"
	"github.com/qtune/qtune/kernels"
	"github.com/qtune/qtune/model"
	"github.com/qtune/qtune/quant"
)

// F32Matrix views v (rows·cols floats) as an F32 kernels.Matrix; the matrix
// reads v live, so changes to v change the model.
func F32Matrix(v []float32, rows, cols int) kernels.Matrix {
	var b []byte
	if len(v) > 0 {
		b = unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), 4*len(v))
	}
	return kernels.Matrix{Type: quant.F32, Rows: rows, Cols: cols, Data: b}
}

// isFloat reports whether a matrix is stored unquantized.
func isFloat(w kernels.Matrix) bool {
	return w.Type == quant.F32 || w.Type == quant.F16 || w.Type == quant.BF16
}

// writable replaces *w, a float matrix (a read-only view of the file), by
// an F32 copy from alloc and returns the copy's values.
func writable(w *kernels.Matrix, alloc model.Alloc, name string) ([]float32, error) {
	v, err := alloc.Floats(budget.Trainable, w.Rows*w.Cols)
	if err != nil {
		return nil, fmt.Errorf("mezo: writable copy of %s: %w", name, err)
	}
	for r := 0; r < w.Rows; r++ {
		w.Row(v[r*w.Cols:(r+1)*w.Cols], r)
	}
	*w = F32Matrix(v, w.Rows, w.Cols)
	return v, nil
}

// FloatOptions choose MeZO's "float" trainable set.
type FloatOptions struct {
	// Matrices adds every matrix stored as F32/F16/BF16 (block matrices,
	// token embedding, output) through a writable F32 copy on the heap: the
	// copy is the trainable parameter and costs 4 bytes per value.
	// Quantized matrices are never included (their codes cannot move).
	Matrices bool
	// Layers limits block tensors to the last Layers blocks (≤ 0: all).
	Layers int
	// Alloc gives the copies' memory (nil: the Go heap).
	Alloc model.Alloc
}

// FloatTensors returns the float trainables of m in a fixed order: per
// block attn_norm, ffn_norm (then its float matrices, q k v o gate up down),
// then output_norm, then token_embd and output when float. Norms are
// updated in place (they are heap slices already); float matrices are
// replaced by writable copies when o.Matrices is set. A tied output shares
// the embedding's copy.
//
// restore puts the model back as it was: its own matrices (the file's
// views) and its norms' values. Call it before the copies' memory goes
// back to alloc's owner. On an error the model is already restored.
func FloatTensors(m *model.Model, o FloatOptions) (ts []Tensor, restore func(), err error) {
	c := m.Config
	type savedMat struct {
		p *kernels.Matrix
		w kernels.Matrix
	}
	var mats []savedMat
	var norms [][2][]float32 // the model's slice and its values before
	keep := func(v []float32) { norms = append(norms, [2][]float32{v, append([]float32(nil), v...)}) }
	restore = func() {
		for i := len(mats) - 1; i >= 0; i-- {
			*mats[i].p = mats[i].w
		}
		for _, n := range norms {
			copy(n[0], n[1])
		}
		mats, norms = nil, nil
	}
	mat := func(p *kernels.Matrix, name string) ([]float32, error) {
		mats = append(mats, savedMat{p, *p})
		return writable(p, o.Alloc, name)
	}
	defer func() {
		if err != nil {
			restore()
			ts, restore = nil, nil
		}
	}()
	first := 0
	if o.Layers > 0 && o.Layers < c.Layers {
		first = c.Layers - o.Layers
	}
	for l := first; l < c.Layers; l++ {
		L := &m.Layers[l]
		keep(L.AttnNorm)
		keep(L.FFNNorm)
		ts = append(ts,
			Tensor{Name: fmt.Sprintf("blk.%d.attn_norm.weight", l), Data: L.AttnNorm, Shape: []int{c.Dim}},
			Tensor{Name: fmt.Sprintf("blk.%d.ffn_norm.weight", l), Data: L.FFNNorm, Shape: []int{c.Dim}})
		if !o.Matrices {
			continue
		}
		for mod := model.Module(0); mod < model.NumModules; mod++ {
			w := L.Matrix(mod)
			if isFloat(*w) {
				rows, cols := w.Rows, w.Cols
				v, err := mat(w, model.TensorName(l, mod))
				if err != nil {
					return nil, nil, err
				}
				ts = append(ts, Tensor{Name: model.TensorName(l, mod), Data: v, Decay: true, Shape: []int{rows, cols}})
			}
		}
	}
	keep(m.OutNorm)
	ts = append(ts, Tensor{Name: "output_norm.weight", Data: m.OutNorm, Shape: []int{c.Dim}})
	if o.Matrices && isFloat(m.Embed) {
		if c.Tied {
			mats = append(mats, savedMat{&m.Output, m.Output})
		}
		v, err := mat(&m.Embed, "token_embd.weight")
		if err != nil {
			return nil, nil, err
		}
		ts = append(ts, Tensor{Name: "token_embd.weight", Data: v, Decay: true, Shape: []int{c.Vocab, c.Dim}})
		if c.Tied {
			m.Output = m.Embed
		}
	}
	if o.Matrices && !c.Tied && isFloat(m.Output) {
		v, err := mat(&m.Output, "output.weight")
		if err != nil {
			return nil, nil, err
		}
		ts = append(ts, Tensor{Name: "output.weight", Data: v, Decay: true, Shape: []int{c.Vocab, c.Dim}})
	}
	return ts, restore, nil
}

// SetFloat writes trained float tensors (as FloatTensors names them) into
// m: norms by copy, matrices as writable F32 copies. Tensors that would
// overflow the forward (CheckTensor) are refused before any is set.
func SetFloat(m *model.Model, ts []Tensor) error {
	c := m.Config
	for _, t := range ts { // all checked before any is set
		if err := CheckTensor(t); err != nil {
			return err
		}
	}
	for _, t := range ts {
		dst, err := floatTarget(m, t.Name)
		if err != nil {
			return err
		}
		if dst.vec != nil {
			if len(t.Data) != len(dst.vec) {
				return fmt.Errorf("mezo: %s has %d values, the model %d", t.Name, len(t.Data), len(dst.vec))
			}
			copy(dst.vec, t.Data)
			continue
		}
		if len(t.Data) != dst.mat.Rows*dst.mat.Cols {
			return fmt.Errorf("mezo: %s has %d values, the model %dx%d", t.Name, len(t.Data), dst.mat.Rows, dst.mat.Cols)
		}
		*dst.mat = F32Matrix(append([]float32(nil), t.Data...), dst.mat.Rows, dst.mat.Cols)
		if t.Name == "token_embd.weight" && c.Tied {
			m.Output = m.Embed
		}
	}
	return nil
}

type floatDst struct {
	vec []float32
	mat *kernels.Matrix
}

func floatTarget(m *model.Model, name string) (floatDst, error) {
	switch name {
	case "output_norm.weight":
		return floatDst{vec: m.OutNorm}, nil
	case "token_embd.weight":
		return floatDst{mat: &m.Embed}, nil
	case "output.weight":
		if !m.Config.Tied {
			return floatDst{mat: &m.Output}, nil
		}
	}
	for l := range m.Layers {
		L := &m.Layers[l]
		switch name {
		case fmt.Sprintf("blk.%d.attn_norm.weight", l):
			return floatDst{vec: L.AttnNorm}, nil
		case fmt.Sprintf("blk.%d.ffn_norm.weight", l):
			return floatDst{vec: L.FFNNorm}, nil
		}
		for mod := model.Module(0); mod < model.NumModules; mod++ {
			if name == model.TensorName(l, mod) {
				return floatDst{mat: L.Matrix(mod)}, nil
			}
		}
	}
	return floatDst{}, fmt.Errorf("mezo: the model has no float tensor %q", name)
}
