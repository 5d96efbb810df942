package train

import (
	"fmt"
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
	for _, f := range []string{FloatTensorsFile, ScalesFile, loho.SparseFile} {
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
		for l := range m.Layers {
			for mod := model.Module(0); mod < model.NumModules; mod++ {
				if model.TensorName(l, mod) != target {
					continue
				}
				if prev := ad[l][mod]; prev != nil {
					ad[l][mod] = loho.Stack{prev, a}
				} else {
					ad[l][mod] = a
				}
				return nil
			}
		}
		return fmt.Errorf("train: %s: the model has no matrix %q", dir, target)
	}
	if p := filepath.Join(dir, FloatTensorsFile); zoFileExists(p) {
		ts, _, err := mezo.ReadTensors(p)
		if err != nil {
			return "", err
		}
		if err := mezo.SetFloat(m, ts); err != nil {
			return "", err
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
			s, err := mezo.NewScales(target, *w, m.Pool())
			if err != nil {
				return "", err
			}
			if len(t.Data) != len(s.R) {
				return "", fmt.Errorf("train: %s: %s has %d block scales, the model's matrix %d blocks", p, target, len(t.Data), len(s.R))
			}
			copy(s.R, t.Data)
			if err := add(target, s); err != nil {
				return "", err
			}
		}
		parts = append(parts, fmt.Sprintf("block scales of %d matrices", len(ts)))
	}
	if p := filepath.Join(dir, loho.SparseFile); zoFileExists(p) {
		ds, _, err := loho.ReadSparse(p, m.Pool())
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
			if err := add(d.Target, d); err != nil {
				return "", err
			}
			nnz += d.Nnz()
		}
		parts = append(parts, fmt.Sprintf("sparse deltas on %d matrices (%d values)", len(ds), nnz))
	}
	if len(parts) == 0 {
		return "", fmt.Errorf("train: %s holds no adapter, float tensors, block scales or sparse delta", dir)
	}
	m.Adapters = ad
	return strings.Join(parts, ", "), nil
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
