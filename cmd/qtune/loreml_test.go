package main

import (
	"encoding/json"
	"math"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qtune/qtune/internal/shared"
)

// TestLoReMLAdapterCLI: a LoReML delta trained by `qtune train --method
// loreml` is applied by eval and generate with --adapter, is refused by a
// plain export (it has no LoRA form), and `export --merge` gives a model
// whose evaluation matches the applied delta.
func TestLoReMLAdapterCLI(t *testing.T) {
	dir := t.TempDir()
	ad := filepath.Join(dir, "ad")
	data := shared.Path(t, "assets", "data", "tinyshakespeare")
	code, _, errs := runCLI(t, "--quiet", "train", "--model", stories(t), "--data", data, "--method", "loreml", "--iters", "6",
		"--stage1-iters", "2", "--batch-size", "2", "--max-seq-length", "48", "--learning-rate", "5e-3", "--rank", "4",
		"--steps-per-eval", "0", "--keep-ratio", "0.02", "--adapter-path", ad, "--cache-dir", filepath.Join(dir, "cache"))
	if code != 0 {
		t.Fatalf("train: exit %d: %s", code, errs)
	}
	loss := func(args ...string) float64 { t.Helper(); return evalLoss(t, data, args...) }
	base := loss("--model", stories(t))
	applied := loss("--model", stories(t), "--adapter", ad)
	if base == applied {
		t.Fatal("the delta does not change the evaluation")
	}
	if code, _, errs := runCLI(t, "--quiet", "generate", "--model", stories(t), "--adapter", ad, "--prompt", "Once", "-n", "5", "--temp", "0"); code != 0 {
		t.Fatalf("generate: exit %d: %s", code, errs)
	}
	if code, _, errs := runCLI(t, "--quiet", "export", "--model", stories(t), "--adapter", ad, "--out", filepath.Join(dir, "x")); code == 0 || !strings.Contains(errs, "--merge") {
		t.Fatalf("plain export of a LoReML delta: exit %d: %s", code, errs)
	}
	merged := filepath.Join(dir, "merged.gguf")
	if code, _, errs := runCLI(t, "--quiet", "export", "--model", stories(t), "--adapter", ad, "--merge", "--type", "f32", "--out", merged); code != 0 {
		t.Fatalf("export --merge: exit %d: %s", code, errs)
	}
	if m := loss("--model", merged); math.Abs(m-applied) > 1e-4 {
		t.Fatalf("merged model loss %v, applied delta %v (base %v)", m, applied, base)
	}
}

// TestZOMergeCLI: the outputs of the zeroth-order and hybrid methods that
// have no LoRA form (LoHO-intra's sparse and dense deltas, MeZO's float
// tensors and block scales) are refused by a plain export and merged by
// `export --merge` into a model that evaluates like the applied output.
func TestZOMergeCLI(t *testing.T) {
	data := shared.Path(t, "assets", "data", "tinyshakespeare")
	dir := t.TempDir()
	q8 := filepath.Join(dir, "q8.gguf")
	if code, _, errs := runCLI(t, "--quiet", "quantize", stories(t), q8, "--type", "q8_0"); code != 0 {
		t.Fatalf("quantize: exit %d: %s", code, errs)
	}
	for _, tc := range []struct {
		name, model string
		args        []string
	}{
		{"loho-intra-complement", stories(t), []string{"--method", "loho-intra", "--fo-ratio", "0.3"}},
		{"loho-intra-lora", q8, []string{"--method", "loho-intra", "--zo-target", "lora", "--fo-ratio", "0.3"}},
		{"mezo-float", stories(t), []string{"--method", "mezo", "--zo-target", "float"}},
		{"mezo-scales", q8, []string{"--method", "mezo", "--zo-target", "scales"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			ad := filepath.Join(dir, "ad")
			args := append([]string{"--quiet", "train", "--model", tc.model, "--data", data, "--iters", "4", "--batch-size", "2",
				"--max-seq-length", "48", "--learning-rate", "5e-3", "--zo-learning-rate", "1e-3", "--epsilon", "1e-2", "--rank", "4",
				"--steps-per-eval", "0", "--adapter-path", ad, "--cache-dir", filepath.Join(dir, "cache")}, tc.args...)
			if code, _, errs := runCLI(t, args...); code != 0 {
				t.Fatalf("train: exit %d: %s", code, errs)
			}
			loss := func(args ...string) float64 { t.Helper(); return evalLoss(t, data, args...) }
			base := loss("--model", tc.model)
			applied := loss("--model", tc.model, "--adapter", ad)
			if base == applied {
				t.Fatal("the output does not change the evaluation")
			}
			if code, _, errs := runCLI(t, "--quiet", "export", "--model", tc.model, "--adapter", ad, "--out", filepath.Join(dir, "x")); code == 0 || !strings.Contains(errs, "--merge") {
				t.Fatalf("plain export: exit %d: %s", code, errs)
			}
			merged := filepath.Join(dir, "merged.gguf")
			if code, _, errs := runCLI(t, "--quiet", "export", "--model", tc.model, "--adapter", ad, "--merge", "--type", "f32", "--out", merged); code != 0 {
				t.Fatalf("export --merge: exit %d: %s", code, errs)
			}
			m := loss("--model", merged)
			t.Logf("base %.6f, applied %.6f, merged %.6f", base, applied, m)
			if math.Abs(m-applied) > 1e-4 {
				t.Fatalf("merged model loss %v, applied output %v (base %v)", m, applied, base)
			}
		})
	}
}

// evalLoss is `qtune eval --json`'s loss on three validation records.
func evalLoss(t *testing.T, data string, args ...string) float64 {
	t.Helper()
	a := append([]string{"--quiet", "eval", "--data", filepath.Join(data, "valid.jsonl"), "--limit", "3", "--max-seq-length", "64", "--json"}, args...)
	code, out, errs := runCLI(t, a...)
	if code != 0 {
		t.Fatalf("eval %v: exit %d: %s", args, code, errs)
	}
	var r struct{ Loss float64 }
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("eval output %q: %v", out, err)
	}
	return r.Loss
}
