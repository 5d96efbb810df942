package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qtune/qtune/internal/shared"
)

// An adapter whose file is larger than --max-mem allows is refused in one
// line naming the file, its size and the budget, before it is read: the
// files here are 24 MiB of holes, which read would be a parse error (and
// were: the whole file was read first).
func TestAdapterLargerThanBudgetRefused(t *testing.T) {
	big := func(t *testing.T, path string) string {
		t.Helper()
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Truncate(24 << 20); err != nil {
			t.Fatal(err)
		}
		f.Close()
		return path
	}
	peft := t.TempDir()
	big(t, filepath.Join(peft, "adapter_model.safetensors"))
	os.WriteFile(filepath.Join(peft, "adapter_config.json"), []byte(`{"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}`), 0o644)
	gguf := big(t, filepath.Join(t.TempDir(), "a.gguf"))
	valid := shared.Path(t, "assets", "data", "tinyshakespeare", "valid.jsonl")
	for _, c := range []struct{ name, file string }{
		{peft, filepath.Join(peft, "adapter_model.safetensors")},
		{gguf, gguf},
	} {
		for _, args := range [][]string{
			{"generate", "--model", stories(t), "--prompt", "Hi", "--adapter", c.name, "--max-mem", "16MiB"},
			{"eval", "--model", stories(t), "--data", valid, "--adapter", c.name, "--max-mem", "16MiB"},
		} {
			code, _, errs := runCLI(t, args...)
			msg := strings.TrimSpace(errs)
			if code == 0 || !strings.Contains(msg, "adapter file "+c.file+" is 24.0 MiB") || !strings.Contains(msg, "--max-mem 16.0 MiB") || strings.Count(msg, "\n") > 0 {
				t.Errorf("%s: exit %d: %q", strings.Join(args, " "), code, errs)
			}
		}
	}
}
