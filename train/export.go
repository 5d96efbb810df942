package train

import (
	"fmt"
	"io"

	"github.com/qtune/qtune/internal/fsx"
	"github.com/qtune/qtune/methods/lora"
	"github.com/qtune/qtune/methods/loreml"
	"github.com/qtune/qtune/model"
	"github.com/qtune/qtune/quant"
)

// ExportOptions is one export as a library call (what `qtune export`
// does): an adapter written for other tools, or folded into the weights.
type ExportOptions struct {
	// Adapter is what to export: a PEFT folder or GGUF adapter (either
	// form), or a LoReML, MeZO float/scales or LoHO-intra output (Merge
	// only: they have no LoRA form).
	Adapter string
	// Out is a folder (PEFT + GGUF adapters) or, with Merge, a GGUF file.
	Out   string
	Merge bool
	// Type is the merged matrices' type (Merge only; quant.F16 is what
	// `qtune export` defaults to; the zero value is quant.F32).
	Type quant.Type
	// ModelPath is where m was opened from: adapters record it as their
	// base model.
	ModelPath string
}

// Exported says what Export wrote.
type Exported struct {
	Out      string
	Matrices int    // adapted matrices
	Merged   bool   // a whole model (else adapters)
	Loaded   string // with Merge: what was merged, in words
	Report   model.QuantizeReport
}

// Export writes o.Adapter for m as PEFT and llama.cpp GGUF adapters in the
// folder o.Out, or with o.Merge folds it into m's weights and writes a GGUF
// model to o.Out. Each output appears whole or not at all. A request the
// adapter cannot satisfy (a plain export of a delta without a LoRA form)
// wraps ErrBadOptions.
func Export(m *model.Model, o ExportOptions) (*Exported, error) {
	if o.Adapter == "" || o.Out == "" {
		return nil, fmt.Errorf("export: an adapter and an output are required: %w", ErrBadOptions)
	}
	if !quant.CanQuantize(o.Type) {
		return nil, fmt.Errorf("export: cannot write matrices as %s: %w", o.Type, ErrBadOptions)
	}
	ex := &Exported{Out: o.Out, Merged: o.Merge}
	var delta model.Delta
	var set *lora.Set
	switch {
	case HasZOState(o.Adapter) && !loreml.Has(o.Adapter):
		if !o.Merge {
			return nil, fmt.Errorf("%s holds zeroth-order or hybrid state (float tensors, block scales or deltas) with no PEFT/GGUF LoRA form; export it with --merge: %w", o.Adapter, ErrBadOptions)
		}
		d, line, err := MergeZOState(m, o.Adapter)
		if err != nil {
			return nil, err
		}
		delta, ex.Loaded = d, line
		for l := range m.Adapters {
			for _, ad := range m.Adapters[l] {
				if ad != nil {
					ex.Matrices++
				}
			}
		}
	case loreml.Has(o.Adapter):
		if !o.Merge {
			return nil, fmt.Errorf("a LoReML delta (%s) has no PEFT/GGUF LoRA form; export it with --merge: %w", loreml.FileName, ErrBadOptions)
		}
		ls, err := loreml.Load(m, o.Adapter)
		if err != nil {
			return nil, err
		}
		delta, ex.Matrices = ls.Merge(), len(ls.Matrices)
		ex.Loaded = fmt.Sprintf("loreml delta: %d matrices", ex.Matrices)
	default:
		var err error
		if set, err = lora.Load(m, o.Adapter); err != nil {
			return nil, err
		}
		delta, ex.Matrices = set.Merge(), len(set.Layers)
		ex.Loaded = fmt.Sprintf("lora: %d matrices", ex.Matrices)
	}
	if !o.Merge {
		// The folder's files are one unit: a crash leaves the old set or the new.
		err := fsx.SaveDir(o.Out, func(stage string) error { return set.Save(stage, m, BaseModelName(o.ModelPath)) })
		return ex, err
	}
	err := fsx.WriteFile(o.Out, func(w io.Writer) (err error) {
		ex.Report, err = model.QuantizeWith(m, w, o.Type, delta)
		return err
	})
	return ex, err
}
