package train

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/qtune/qtune/budget"
	"github.com/qtune/qtune/format/adapter"
	"github.com/qtune/qtune/methods/loho"
	"github.com/qtune/qtune/methods/lora"
	"github.com/qtune/qtune/methods/loreml"
	"github.com/qtune/qtune/model"
)

// WriteAdapters saves the trained adapters in the formats other tools load
// (PEFT and llama.cpp GGUF) plus qtune's own record of the run.
func WriteAdapters(dir string, m *model.Model, set *lora.Set, cfg Config) error {
	if err := set.Save(dir, m, BaseModelName(cfg.Model)); err != nil {
		return err
	}
	return writeConfig(dir, cfg)
}

// BaseModelName is what an adapter records as its base model (PEFT's
// base_model_name_or_path): the model's absolute path, which PEFT and
// llama.cpp's converter resolve from any working folder; a name that is not
// a local path (a hub id) stays as given.
func BaseModelName(model string) string {
	if _, err := os.Stat(model); err != nil {
		return model
	}
	if abs, err := filepath.Abs(model); err == nil {
		return abs
	}
	return model
}

// writeConfig saves qtune's record of the run (qtune_config.json).
func writeConfig(dir string, cfg Config) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "qtune_config.json"), b, 0o644)
}

// ApplyAdapterLimit is ApplyAdapter under a memory budget (0: none). An
// adapter's files are read whole and their values decoded to float32, so a
// file needs about twice its size: one whose double is more than limit
// leaves beside the runtime is refused by name before it is read (a 2 GB
// adapter under --max-mem 512MiB used to be read whole first).
func ApplyAdapterLimit(m *model.Model, path string, limit int64) (applied string, err error) {
	if limit > 0 {
		avail := max(limit-runtimeBytes(m), 0)
		for _, f := range adapterFiles(path) {
			st, err := os.Stat(f)
			if err != nil || !st.Mode().IsRegular() {
				continue // the reader names what is wrong
			}
			if need := 2 * st.Size(); need > avail {
				return "", fmt.Errorf("train: adapter file %s is %s: reading it takes about %s (its bytes, then its values), more than --max-mem %s leaves beside the runtime (%s)",
					f, budget.FormatSize(st.Size()), budget.FormatSize(need), budget.FormatSize(limit), budget.FormatSize(avail))
			}
		}
	}
	return ApplyAdapter(m, path)
}

// adapterFiles lists the files ApplyAdapter reads whole for path, chosen as
// it and lora.Load choose them.
func adapterFiles(path string) []string {
	if st, err := os.Stat(path); err != nil || !st.IsDir() {
		return []string{path}
	}
	in := func(names ...string) []string {
		var fs []string
		for _, n := range names {
			if p := filepath.Join(path, n); zoFileExists(p) {
				fs = append(fs, p)
			}
		}
		return fs
	}
	switch {
	case loreml.Has(path):
		return in(loreml.FileName)
	case HasZOState(path):
		return in(lora.PEFTFile, FloatTensorsFile, ScalesFile, loho.SparseFile, loho.DenseFile)
	}
	for _, n := range []string{lora.PEFTFile, adapter.MLXWeights, lora.GGUFFile} { // lora.Load's order
		if fs := in(n); len(fs) > 0 {
			return fs
		}
	}
	return nil
}

// ApplyAdapter loads an adapter (PEFT folder, or GGUF adapter file or
// folder, or a LoReML delta: a folder holding loreml_delta.safetensors, or
// a mezo/loho output folder, see HasZOState) and makes m's Forward use it.
func ApplyAdapter(m *model.Model, path string) (applied string, err error) {
	switch {
	case loreml.Has(path):
		set, err := loreml.Load(m, path)
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("loreml delta: %d matrices, %d kept entries, %d norm values", len(set.Matrices), set.Kept(), set.NormValues()), nil
	case HasZOState(path):
		return ApplyZOState(m, path)
	}
	set, err := lora.Load(m, path)
	if err != nil {
		return "", err
	}
	m.Adapters = set.ByPos
	return fmt.Sprintf("lora: %d matrices, rank %d", len(set.Layers), set.Config.Rank), nil
}
