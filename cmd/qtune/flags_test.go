package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/qtune/qtune/internal/shared"
)

// Every numeric flag is range-checked as a usage error (exit 2, one line
// naming the flag) before any work: NaN and infinities, negative counts,
// sizes that overflow. Several used to be accepted (--temp nan, negative
// --save-every), fail late (--dropout nan at iteration 1, --max-grad-norm
// nan after training), or exit 1.
func TestBadNumericFlags(t *testing.T) {
	data := shared.Path(t, "assets", "data", "tinyshakespeare")
	train := func(extra ...string) []string {
		return append([]string{"train", "--model", stories(t), "--data", data, "--iters", "1", "--adapter-path", t.TempDir()}, extra...)
	}
	gen := func(extra ...string) []string {
		return append([]string{"generate", "--model", stories(t), "--prompt", "Hi"}, extra...)
	}
	for _, c := range []struct {
		args []string
		flag string
	}{
		{train("--max-grad-norm", "nan"), "--max-grad-norm"},
		{train("--dropout", "nan"), "--dropout"},
		{train("--dropout", "1"), "--dropout"},
		{train("--learning-rate", "inf"), "--learning-rate"},
		{train("--iters", "0"), "--iters"},
		{train("--batch-size", "0"), "--batch-size"},
		{train("--max-seq-length", "1"), "--max-seq-length"},
		{train("--grad-accumulation-steps", "0"), "--grad-accumulation-steps"},
		{train("--method", "loho", "--fo-layers", "-3"), "--fo-layers"},
		{train("--method", "loho", "--fo-layers", "99999999999999999999"), "--fo-layers"},
		{train("--num-layers", "-2"), "--num-layers"},
		{train("--save-every", "-1"), "--save-every"},
		{train("--steps-per-report", "-5"), "--steps-per-report"},
		{train("--val-batches", "-3"), "--val-batches"},
		{train("--method", "loho", "--fo-every", "-1"), "--fo-every"},
		{train("--method", "loreml", "--stage1-iters", "-1"), "--stage1-iters"},
		{train("--rank", "0"), "--rank"},
		{train("--alpha", "nan"), "--alpha"},
		{train("--keep-ratio", "2"), "--keep-ratio"},
		{train("--fo-ratio", "-0.5"), "--fo-ratio"},
		{train("--zo-learning-rate", "nan"), "--zo-learning-rate"},
		{train("--epsilon", "0"), "--epsilon"},
		{train("--perturbations", "0"), "--perturbations"},
		{train("--momentum", "inf"), "--momentum"},
		{train("--weight-decay", "-1"), "--weight-decay"},
		{train("--min-lr", "nan"), "--min-lr"},
		{train("--warmup", "-1"), "--warmup"},
		{train("--lr-schedule", "wavy"), "--lr-schedule"},
		{train("--max-mem", "lots"), "--max-mem"},
		{gen("--temp", "nan"), "--temp"},
		{gen("--temp", "inf"), "--temp"},
		{gen("--top-p", "nan"), "--top-p"},
		{gen("-n", "9223372036854775807"), "-n"},
		{gen("-n", "-1"), "-n"},
		{gen("--max-mem", "-5MiB"), "--max-mem"},
		{gen("--max-vram", "lots", "--device", "cuda"), "--max-vram"},
		{gen("--max-vram", "1GiB"), "--max-vram"},
		{gen("--device", "tpu"), "--device"},
		{gen("--device", "cuda", "--gpu-precision", "f8"), "--gpu-precision"},
		{[]string{"chat", "--model", stories(t), "--temp", "nan"}, "--temp"},
		{[]string{"eval", "--model", stories(t), "--data", data, "--max-seq-length", "-1"}, "--max-seq-length -1"},
		{[]string{"eval", "--model", stories(t), "--data", data, "--limit", "-1"}, "--limit -1"},
		{[]string{"eval", "--model", stories(t), "--data", data, "--max-vram", "1GiB"}, "--max-vram"},
		{[]string{"chat", "--model", stories(t), "--device", "cuda:x"}, "--device"},
		{[]string{"chat", "--model", stories(t), "--ctx", "-1"}, "--ctx -1"},
	} {
		code, _, errs := runCLI(t, c.args...)
		if code != 2 || !strings.Contains(errs, c.flag) || strings.Count(strings.TrimSpace(errs), "\n") > 0 {
			t.Errorf("%v: exit %d, %q", c.args[len(c.args)-2:], code, errs)
		}
	}
}

// Global flags are read before the command or as its flags, never out of a
// flag's value: tokenize --text "-q" --json tokenized "--json".
func TestGlobalFlagsPosition(t *testing.T) {
	code, out, errs := runCLI(t, "tokenize", "--model", stories(t), "--text", "-q", "--json")
	if code != 0 || !strings.HasPrefix(strings.TrimSpace(out), "[") {
		t.Fatalf("exit %d, %q %q", code, out, errs)
	}
	_, plain, _ := runCLI(t, "tokenize", "--model", stories(t), "--text", "-q")
	if strings.Count(out, ",")+1 != len(strings.Fields(plain)) {
		t.Errorf("--text -q: JSON %s, plain %s", out, plain)
	}
	for _, args := range [][]string{
		{"--quiet", "generate", "--model", stories(t), "--prompt", "Hi", "-n", "2", "--temp", "0"},
		{"generate", "--model", stories(t), "--prompt", "Hi", "-n", "2", "--temp", "0", "--quiet"},
		{"-q", "generate", "--model", stories(t), "--prompt", "Hi", "-n", "2", "--temp", "0"},
		// as the flag package reads them after the command: with =value too
		{"--quiet=true", "generate", "--model", stories(t), "--prompt", "Hi", "-n", "2", "--temp", "0"},
		{"-q=1", "--log-json=false", "generate", "--model", stories(t), "--prompt", "Hi", "-n", "2", "--temp", "0"},
	} {
		code, _, errs := runCLI(t, args...)
		if code != 0 || strings.Contains(errs, "INF") {
			t.Errorf("%v: exit %d, info lines on stderr: %q", args, code, errs)
		}
	}
	for _, args := range [][]string{
		{"generate", "--model", stories(t), "--prompt", "Hi", "-n", "2", "--temp", "0", "--log-json"},
		{"--log-json=true", "generate", "--model", stories(t), "--prompt", "Hi", "-n", "2", "--temp", "0"},
	} {
		code, _, errs = runCLI(t, args...)
		for _, l := range strings.Split(strings.TrimSpace(errs), "\n") {
			if code != 0 || !strings.HasPrefix(l, "{") {
				t.Errorf("%v: exit %d, line %q", args, code, l)
			}
		}
	}
	// A global flag misspelt before the command is a usage error naming it.
	if code, _, errs := runCLI(t, "--quite", "inspect", stories(t)); code != 2 || !strings.Contains(errs, "quite") {
		t.Errorf("--quite: exit %d, %q", code, errs)
	}
}

// --log-json covers the progress lines too (every stderr line a JSON
// object, progress with its fields); --quiet leaves them out.
func TestTrainProgressFollowsLogFlags(t *testing.T) {
	args := []string{"train", "--model", stories(t), "--data", shared.Path(t, "assets", "data", "tinyshakespeare"),
		"--iters", "2", "--batch-size", "1", "--max-seq-length", "16", "--steps-per-report", "1", "--steps-per-eval", "2", "--val-batches", "1"}
	code, _, errs := runCLI(t, append([]string{"--log-json"}, append(args, "--adapter-path", t.TempDir())...)...)
	progress := 0
	for _, l := range strings.Split(strings.TrimSpace(errs), "\n") {
		var ev map[string]any
		if err := json.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatalf("exit %d: a stderr line is not JSON: %q", code, l)
		}
		if ev["event"] == "progress" {
			if _, ok := ev["loss"].(float64); !ok {
				t.Errorf("progress without a loss: %q", l)
			}
			progress++
		}
	}
	if code != 0 || progress < 3 { // 2 train reports, at least one validation
		t.Errorf("exit %d, %d progress events", code, progress)
	}
	code, _, errs = runCLI(t, append([]string{"--quiet"}, append(args, "--adapter-path", t.TempDir())...)...)
	if code != 0 || strings.Contains(errs, "Iter ") {
		t.Errorf("--quiet: exit %d, %q", code, errs)
	}
}
