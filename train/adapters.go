package train

import (
	"encoding/json"
	"os"
	"path/filepath"

	"github.com/qtune/qtune/methods/lora"
	"github.com/qtune/qtune/methods/loreml"
	"github.com/qtune/qtune/model"
)

// WriteAdapters saves the trained adapters in the formats other tools load
// (PEFT and llama.cpp GGUF) plus qtune's own record of the run.
func WriteAdapters(dir string, m *model.Model, set *lora.Set, cfg Config) error {
	if err := set.Save(dir, m, cfg.Model); err != nil {
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
func ApplyAdapter(m *model.Model, path string) error {
	if loreml.Has(path) {
		_, err := loreml.Load(m, path)
		return err
	}
	if HasZOState(path) {
		_, err := ApplyZOState(m, path)
		return err
	}
	set, err := lora.Load(m, path)
	if err != nil {
		return err
	}
	m.Adapters = set.ByPos
	return nil
}
