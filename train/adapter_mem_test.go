package train

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qtune/qtune/methods/lora"
	"github.com/qtune/qtune/model"
)

// ApplyAdapterLimit checks the file the reader would read, before reading
// it: a run's small adapter is applied under a 32 MiB budget even beside a
// large file the reader does not take (adapter.gguf, when the PEFT file is
// there); the PEFT file grown past the budget is refused by name.
func TestApplyAdapterLimitChecksTheFileRead(t *testing.T) {
	dir := t.TempDir()
	cfg := smallRun(t, dir)
	cfg.Iters, cfg.StepsPerEval, cfg.SaveEvery = 2, 0, 0
	if _, err := Run(context.Background(), cfg, nil, nil); err != nil {
		t.Fatal(err)
	}
	m, err := model.Open(cfg.Model, model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := os.Truncate(filepath.Join(dir, lora.GGUFFile), 64<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := ApplyAdapterLimit(m, dir, 32<<20); err != nil {
		t.Fatalf("a small adapter under 32 MiB: %v", err)
	}
	peft := filepath.Join(dir, lora.PEFTFile)
	if err := os.Truncate(peft, 20<<20); err != nil {
		t.Fatal(err)
	}
	_, err = ApplyAdapterLimit(m, dir, 32<<20)
	if err == nil || !strings.Contains(err.Error(), "adapter file "+peft+" is 20.0 MiB") || !strings.Contains(err.Error(), "--max-mem 32.0 MiB") {
		t.Fatalf("a 20 MiB adapter under 32 MiB: %v", err)
	}
	if _, err := ApplyAdapterLimit(m, filepath.Join(dir, lora.GGUFFile), 32<<20); err == nil || !strings.Contains(err.Error(), "is 64.0 MiB") {
		t.Fatalf("a 64 MiB GGUF adapter under 32 MiB: %v", err)
	}
}
