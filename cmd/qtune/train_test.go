package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/qtune/qtune/internal/shared"
)

// TestTrainConfigAndReport: --config (YAML) sets the run, a flag overrides
// it, progress lines follow MLX-LM's format, and the adapter folder holds
// what other tools load plus the loss curve.
func TestTrainConfigAndReport(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "run.yaml")
	os.WriteFile(cfg, []byte(`model: `+stories(t)+`
data: `+shared.Path(t, "assets", "data", "tinyshakespeare")+`
iters: 50
batch_size: 2
max_seq_length: 48
learning_rate: 0.003
steps_per_report: 2
steps_per_eval: 4
val_batches: 2
rank: 4
adapter_path: `+filepath.Join(dir, "ad")+`
cache_dir: `+filepath.Join(dir, "cache")+`
`), 0o644)
	code, out, errs := runCLI(t, "train", "--config", cfg, "--iters", "4")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	line := regexp.MustCompile(`(?m)^Iter 4: Train loss [0-9.]+, Learning Rate 3\.000e-03, It/sec [0-9.]+, Tokens/sec [0-9.]+, Trained Tokens \d+, Peak mem [0-9.]+ GB$`)
	if !line.MatchString(errs) || !regexp.MustCompile(`(?m)^Iter 4: Val loss [0-9.]+, Val took [0-9.]+s$`).MatchString(errs) {
		t.Fatalf("report lines not in MLX-LM's format:\n%s", errs)
	}
	if strings.Contains(errs, "Iter 6:") || !strings.Contains(out, "trained 4 iterations") {
		t.Fatalf("--iters 4 did not override the config's 50: %s", out)
	}
	for _, f := range []string{"adapter_model.safetensors", "adapter_config.json", "adapter.gguf", "loss.svg"} {
		if _, err := os.Stat(filepath.Join(dir, "ad", f)); err != nil {
			t.Errorf("missing %s", f)
		}
	}
	os.WriteFile(cfg, []byte("iters: 3\nbogus_key: 1\n"), 0o644)
	if code, _, errs := runCLI(t, "train", "--config", cfg, "--model", stories(t), "--data", "x"); code == 0 || !strings.Contains(errs, "bogus_key") {
		t.Fatalf("unknown config key accepted: %d %s", code, errs)
	}
}
