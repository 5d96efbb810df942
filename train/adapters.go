package train

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

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
