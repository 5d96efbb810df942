package train

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"

	"github.com/qtune/qtune/kernels"
	"github.com/qtune/qtune/methods/loho"
	"github.com/qtune/qtune/methods/lora"
	"github.com/qtune/qtune/methods/mezo"
	"github.com/qtune/qtune/model"
)

// HasZOState reports whether dir holds the output of a zeroth-order or
// hybrid run that is more than a LoRA adapter: float tensors (mezo
// --zo-target float), block scales (--zo-target scales) or sparse deltas
// (loho-intra).
func HasZOState(dir string) bool {
	for _, f := range []string{FloatTensorsFile, ScalesFile, loho.SparseFile, loho.DenseFile} {
		if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
			return true
		}
	}
	return false
}

// ApplyZOState makes m's Forward use everything a mezo or loho run saved
// in dir: its LoRA adapter when there is one, trained float tensors, block
// scales and sparse deltas (stacked with the LoRA adapter on the same
// matrix). It returns a line for the log.
func ApplyZOState(m *model.Model, dir string) (string, error) {
	var parts []string
	ad := make(model.Adapters, m.Config.Layers)
	if _, err := os.Stat(filepath.Join(dir, lora.PEFTFile)); err == nil {
		set, err := lora.Load(m, dir)
		if err != nil {
			return "", err
		}
		copy(ad, set.ByPos)
		parts = append(parts, fmt.Sprintf("LoRA on %d matrices", len(set.Layers)))
	}
	add := func(target string, a model.Adapter) error {
		l, mod, err := modulePos(m, target)
		if err != nil {
			return fmt.Errorf("train: %s: %w", dir, err)
		}
		if prev := ad[l][mod]; prev != nil {
			ad[l][mod] = loho.Stack{prev, a}
		} else {
			ad[l][mod] = a
		}
		return nil
	}
	if p := filepath.Join(dir, FloatTensorsFile); zoFileExists(p) {
		ts, _, err := mezo.ReadTensors(p)
		if err != nil {
			return "", err
		}
		if err := mezo.SetFloat(m, ts); err != nil {
			return "", fmt.Errorf("train: %s: %w", p, err)
		}
		parts = append(parts, fmt.Sprintf("%d float tensors", len(ts)))
	}
	if p := filepath.Join(dir, ScalesFile); zoFileExists(p) {
		ts, _, err := mezo.ReadTensors(p)
		if err != nil {
			return "", err
		}
		for _, t := range ts {
			target, ok := strings.CutSuffix(t.Name, ".block_scale")
			if !ok {
				return "", fmt.Errorf("train: %s: unexpected tensor %q", p, t.Name)
			}
			w, err := matrixOf(m, target)
			if err != nil {
				return "", err
			}
			s, err := mezo.NewScales(target, *w, m.Pool(), nil)
			if err != nil {
				return "", err
			}
			if len(t.Data) != len(s.R) {
				return "", fmt.Errorf("train: %s: %s has %d block scales, the model's matrix %d blocks", p, target, len(t.Data), len(s.R))
			}
			copy(s.R, t.Data)
			if err := s.CheckRange(); err != nil {
				return "", fmt.Errorf("train: %s: %w", p, err)
			}
			if err := add(target, s); err != nil {
				return "", err
			}
		}
		parts = append(parts, fmt.Sprintf("block scales of %d matrices", len(ts)))
	}
	if p := filepath.Join(dir, loho.SparseFile); zoFileExists(p) {
		ds, _, err := loho.ReadSparse(p, m.Pool(), func(target string) (int, int, error) {
			w, err := matrixOf(m, target)
			if err != nil {
				return 0, 0, err
			}
			return w.Rows, w.Cols, nil
		})
		if err != nil {
			return "", err
		}
		var nnz int
		for _, d := range ds {
			w, err := matrixOf(m, d.Target)
			if err != nil {
				return "", err
			}
			if w.Rows != d.Out || w.Cols != d.In {
				return "", fmt.Errorf("train: %s: %s is %dx%d, the model's matrix %dx%d", p, d.Target, d.Out, d.In, w.Rows, w.Cols)
			}
			if err := checkSparse(d); err != nil {
				return "", fmt.Errorf("train: %s: %w", p, err)
			}
			if err := add(d.Target, d); err != nil {
				return "", err
			}
			nnz += d.Nnz()
		}
		parts = append(parts, fmt.Sprintf("sparse deltas on %d matrices (%d values)", len(ds), nnz))
	}
	if p := filepath.Join(dir, loho.DenseFile); zoFileExists(p) {
		ts, _, err := mezo.ReadTensors(p)
		if err != nil {
			return "", err
		}
		var n int
		for _, t := range ts {
			target, ok := strings.CutSuffix(t.Name, ".zo_delta")
			if !ok || len(t.Shape) != 2 {
				return "", fmt.Errorf("train: %s: unexpected tensor %q", p, t.Name)
			}
			w, err := matrixOf(m, target)
			if err != nil {
				return "", err
			}
			if w.Rows != t.Shape[0] || w.Cols != t.Shape[1] {
				return "", fmt.Errorf("train: %s: %s is %dx%d, the model's matrix %dx%d", p, target, t.Shape[0], t.Shape[1], w.Rows, w.Cols)
			}
			if err := mezo.CheckTensor(t); err != nil {
				return "", fmt.Errorf("train: %s: %w", p, err)
			}
			d, err := loho.DenseFrom(target, w.Rows, w.Cols, t.Data, m.Pool())
			if err != nil {
				return "", err
			}
			if err := add(target, d); err != nil {
				return "", err
			}
			n += len(t.Data)
		}
		parts = append(parts, fmt.Sprintf("dense zeroth-order deltas on %d matrices (%d values)", len(ts), n))
	}
	if len(parts) == 0 {
		return "", fmt.Errorf("train: %s holds no adapter, float tensors, block scales or sparse delta", dir)
	}
	m.Adapters = ad
	return strings.Join(parts, ", "), nil
}

// checkSparse refuses a sparse delta with a row past mezo.MaxRowSum (the
// bound every delta a zeroth-order or hybrid run saves is held to).
func checkSparse(s *loho.Sparse) error {
	for o := 0; o < s.Out; o++ {
		v := s.Val[s.RowPtr[o]:s.RowPtr[o+1]]
		if err := mezo.CheckRows(s.Target+".values", v, 1, len(v)); err != nil {
			return fmt.Errorf("row %d: %w", o, err)
		}
	}
	return nil
}

// checkLoRARange refuses LoRA factors whose ΔW = s·B·A could have a row
// past mezo.MaxRowSum: row o's magnitudes sum to at most
// s·Σ_r |B[o, r]|·Σ_j |A[r, j]|.
func checkLoRARange(ls []*lora.Layer) error {
	for _, l := range ls {
		a := make([]float64, l.R) // Σ_j |A[r, j]|
		for r := range a {
			for _, x := range l.A[r*l.In : (r+1)*l.In] {
				a[r] += math.Abs(float64(x))
			}
		}
		for o := 0; o < l.Out; o++ {
			var sum float64
			for r, x := range l.B[o*l.R : (o+1)*l.R] {
				sum += math.Abs(float64(x)) * a[r]
			}
			if sum *= math.Abs(float64(l.Scale)); sum > mezo.MaxRowSum || math.IsNaN(sum) {
				return fmt.Errorf("%s: row %d of scale·B·A may sum to %.3g in magnitude, past %.3g: applied, the forward would overflow float32: %w",
					l.Target, o, sum, mezo.MaxRowSum, mezo.ErrRange)
			}
		}
	}
	return nil
}

func matrixOf(m *model.Model, target string) (*kernels.Matrix, error) {
	for l := range m.Layers {
		for mod := model.Module(0); mod < model.NumModules; mod++ {
			if model.TensorName(l, mod) == target {
				return m.Layers[l].Matrix(mod), nil
			}
		}
	}
	return nil, fmt.Errorf("train: the model has no matrix %q", target)
}

func zoFileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// MergeZOState applies what a mezo or loho run saved in dir to m (as
// ApplyZOState) and returns the delta that folds it into the weights for
// export --merge: trained float tensors replace the file's values, and
// every adapter on a matrix (LoRA, block scales, sparse and dense deltas)
// adds its ΔW, read off the adapter itself by passing identity rows
// through its Forward (an adapter is linear: y += x·ΔWᵀ).
func MergeZOState(m *model.Model, dir string) (model.Delta, string, error) {
	line, err := ApplyZOState(m, dir)
	if err != nil {
		return nil, "", err
	}
	floats := map[string][]float32{}
	if p := filepath.Join(dir, FloatTensorsFile); zoFileExists(p) {
		ts, _, err := mezo.ReadTensors(p)
		if err != nil {
			return nil, "", err
		}
		for _, t := range ts {
			floats[t.Name] = t.Data
		}
	}
	type pos struct {
		a       model.Adapter
		out, in int
	}
	ads := map[string]pos{}
	for l := range m.Layers {
		for mod := model.Module(0); mod < model.NumModules; mod++ {
			if a := m.Adapters[l][mod]; a != nil {
				w := m.Layers[l].Matrix(mod)
				ads[model.TensorName(l, mod)] = pos{a, w.Rows, w.Cols}
			}
		}
	}
	delta := func(name string, f []float32) bool {
		changed := false
		if v, ok := floats[name]; ok && len(v) == len(f) {
			copy(f, v)
			changed = true
		}
		if p, ok := ads[name]; ok && len(f) == p.out*p.in {
			AdapterDelta(f, p.a, p.out, p.in)
			changed = true
		}
		return changed
	}
	return delta, line, nil
}

// AdapterDelta adds an adapter's ΔW to w (out, in): y = e_k·ΔWᵀ is column k
// of ΔW, so identity rows through Forward, 64 columns at a time, read it
// off exactly as the forward pass would apply it.
func AdapterDelta(w []float32, a model.Adapter, out, in int) {
	const chunk = 64
	x := make([]float32, chunk*in)
	y := make([]float32, chunk*out)
	for c0 := 0; c0 < in; c0 += chunk {
		n := min(chunk, in-c0)
		clear(x)
		clear(y)
		for k := 0; k < n; k++ {
			x[k*in+c0+k] = 1
		}
		a.Forward(y[:n*out], x[:n*in], n)
		for k := 0; k < n; k++ {
			yk := y[k*out : (k+1)*out]
			for o, v := range yk {
				w[o*in+c0+k] += v
			}
		}
	}
}
