package memtest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/qtune/qtune/budget"
	"github.com/qtune/qtune/internal/shared"
	"github.com/qtune/qtune/internal/synth"
	"github.com/qtune/qtune/quant"
)

var (
	bin    string // the qtune binary under test
	tmpDir string
)

func TestMain(m *testing.M) {
	var err error
	tmpDir, err = os.MkdirTemp("", "qtune-memtest")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = filepath.Join(tmpDir, "qtune")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/qtune/qtune/cmd/qtune")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0") // as make build: the binary users run
	out, err := cmd.CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(tmpDir)
	os.Exit(code)
}

// model writes (once) a synthetic model of the preset and type.
func model(t *testing.T, preset string, typ quant.Type) string {
	t.Helper()
	p := filepath.Join(tmpDir, preset+"-"+typ.String()+".gguf")
	if _, err := os.Stat(p); err == nil {
		return p
	}
	if err := synth.Write(p, synth.Presets[preset], typ, 1); err != nil {
		t.Fatal(err)
	}
	return p
}

// run executes qtune and returns stdout, stderr and the peak RSS in bytes.
func run(t *testing.T, args ...string) (string, string, int64, error) {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"--quiet"}, args...)...)
	pf := filepath.Join(t.TempDir(), "peak")
	cmd.Env = append(os.Environ(), "QTUNE_PEAK_FILE="+pf)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	// The child's own VmHWM: rusage from wait4 would include this test
	// process's high-water mark, inherited across fork and exec.
	b, rerr := os.ReadFile(pf)
	peak, perr := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if rerr != nil || perr != nil || peak <= 0 {
		t.Fatalf("no peak RSS from qtune %v: %v %v", args, rerr, perr)
	}
	if strings.Contains(e.String(), "kernels' scratch went") {
		t.Errorf("qtune %v: %s", args, strings.TrimSpace(e.String()))
	}
	return o.String(), e.String(), peak, err
}

var planPeak = regexp.MustCompile(`memory plan: peak ([0-9.]+) (KiB|MiB|GiB)`)

func plannedPeak(t *testing.T, args []string) int64 {
	t.Helper()
	out, errs, _, err := run(t, append([]string{"plan"}, args...)...)
	if err != nil {
		t.Fatalf("qtune plan %v: %v\n%s", args, err, errs)
	}
	mm := planPeak.FindStringSubmatch(out)
	if mm == nil {
		t.Fatalf("no plan in %q", out)
	}
	v, _ := strconv.ParseFloat(mm[1], 64)
	return int64(v * map[string]float64{"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}[mm[2]])
}

type job struct {
	name string
	args []string
}

func jobs(t *testing.T, modelPath string) []job {
	small := filepath.Join(tmpDir, "small.txt")
	os.WriteFile(small, []byte("Once upon a time, there was a little girl named Lily. She loved to play outside."), 0o644)
	data := filepath.Join(tmpDir, "data")
	os.MkdirAll(data, 0o755)
	// Records longer than --max-seq-length, so batches are full (the plan
	// bounds the longest batch; short data would sit well under it).
	os.WriteFile(filepath.Join(data, "train.jsonl"), []byte(`{"text":"Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her dog Max, and every day they ran to the big tree by the pond."}
{"text":"One day, she saw a big, red ball in the grass. She wanted to play with it, but it was too high. Lily's mom said, let's go to the park and find a stick to reach it."}
`), 0o644)
	return []job{
		{"generate", []string{"generate", "--model", modelPath, "--prompt", "Once upon a time", "-n", "4", "--temp", "0"}},
		{"eval", []string{"eval", "--model", modelPath, "--data", small, "--max-seq-length", "64"}},
		{"train-lora", trainArgs(modelPath, data, "lora", "--iters", "1")},
		{"train-loreml", trainArgs(modelPath, data, "loreml", "--iters", "2", "--stage1-iters", "1")},
		{"train-mezo", trainArgs(modelPath, data, "mezo", "--iters", "2")},
		{"train-loho", trainArgs(modelPath, data, "loho", "--iters", "1")},
		// 1% of each matrix first-order: a sparse delta costs ~20 bytes per
		// entry (value, gradient, moments, index) against 0.56 for a Q4_0 weight.
		{"train-loho-intra", trainArgs(modelPath, data, "loho-intra", "--iters", "1", "--fo-ratio", "0.01", "--zo-target", "lora")},
		// The paper's split: MeZO on the other entries, held in dense float32
		// deltas (4 bytes per entry of each adapted matrix), so fewer matrices.
		{"train-loho-intra-dense", trainArgs(modelPath, data, "loho-intra", "--iters", "1", "--fo-ratio", "0.01",
			"--targets", "q,v", "--num-layers", "1")},
	}
}

// trainArgs is a short training run of a method: every method that exists
// must keep to the budget.
func trainArgs(modelPath, data, method string, extra ...string) []string {
	return append([]string{"train", "--model", modelPath, "--data", data, "--method", method, "--batch-size", "2",
		"--max-seq-length", "32", "--rank", "2", "--steps-per-eval", "0", "--adapter-path", filepath.Join(tmpDir, "adapter-"+method)}, extra...)
}

// check runs every job under the budget: the run must succeed, stay at or
// under the budget, and land within 15% above or 20% below its plan. only, when given,
// restricts the jobs by name.
func check(t *testing.T, modelPath string, limit int64, only ...string) {
	for _, j := range jobs(t, modelPath) {
		if len(only) > 0 && !slices.Contains(only, j.name) {
			continue
		}
		args := append(append([]string{}, j.args...), "--max-mem", strconv.FormatInt(limit, 10))
		want := plannedPeak(t, args)
		_, errs, peak, err := run(t, args...)
		if err != nil {
			t.Errorf("%s %s under %s: %v\n%s", filepath.Base(modelPath), j.name, budget.FormatSize(limit), err, errs)
			continue
		}
		off := float64(peak-want) / float64(want)
		// A plan may overestimate more than it underestimates: a run below
		// its plan is safe. LoHO-inter on 110M NF4 under 63.8 MiB measured
		// 9-16% below its plan across runs.
		// Or within 3 MiB above the plan, 5 MiB below it: in an 8-12 MiB
		// process (stories260K, the binary built without cgo, so no libc
		// mapped) the runtime item's fixed parts (the Go runtime of a training
		// run, the kernels' scratch pool, the collector's headroom) are bounds
		// a short run does not reach: a four-token generation planned 11.3 MiB
		// measured 7.8, loho-intra's dense step planned 14.3 measured 10.3.
		close := off <= 0.15 && off >= -0.20 || peak-want <= 3<<20 && want-peak <= 5<<20
		t.Logf("%-22s %-10s budget %-9s planned %-9s measured %-9s (%+.0f%%)", filepath.Base(modelPath), j.name,
			budget.FormatSize(limit), budget.FormatSize(want), budget.FormatSize(peak), 100*off)
		if peak > limit {
			t.Errorf("%s %s: peak RSS %s exceeds the budget %s", filepath.Base(modelPath), j.name, budget.FormatSize(peak), budget.FormatSize(limit))
		}
		if !close {
			t.Errorf("%s %s: plan %s is %.0f%% off the measured %s", filepath.Base(modelPath), j.name, budget.FormatSize(want), 100*off, budget.FormatSize(peak))
		}
	}
}

func fileSize(t *testing.T, p string) int64 {
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

func TestBudgetStories260K(t *testing.T) {
	m := shared.Path(t, "golden", "gguf", "stories260K-q4_0.gguf")
	check(t, m, 32<<20)
}

// The 110M models' quantized weights are about 70 MiB: one budget above,
// one 8 MiB above them, where every job streams them layer by layer (the
// runtime alone is about 23 MiB).
func TestBudget110M(t *testing.T) {
	for _, typ := range []quant.Type{quant.Q4_0, quant.NF4} {
		m := model(t, "110M", typ)
		w := fileSize(t, m)
		check(t, m, w+96<<20)
		check(t, m, w+8<<20)
	}
}

// The 1B models' weights are 550–600 MiB; 320 MiB is about half of that.
// Every method already runs under budgets on the 110M models; at 1B the
// first-order and zeroth-order extremes (LoRA, MeZO) keep make test short.
var oneB = []string{"generate", "eval", "train-lora", "train-mezo"}

func TestBudget1B(t *testing.T) {
	if testing.Short() {
		t.Skip("writes two 1B-parameter models")
	}
	for _, typ := range []quant.Type{quant.Q4_0, quant.NF4} {
		m := model(t, "1B", typ)
		w := fileSize(t, m)
		check(t, m, w+160<<20, oneB...)
		check(t, m, 320<<20, oneB...)
	}
}

// TestImpossibleBudgetFailsFast: a budget nothing fits stops before any
// work, with the smallest feasible budget in the message; that budget works.
func TestImpossibleBudgetFailsFast(t *testing.T) {
	m := model(t, "110M", quant.Q4_0)
	args := jobs(t, m)[0].args
	_, errs, _, err := run(t, append(args, "--max-mem", "16MiB")...)
	if err == nil || !strings.Contains(errs, "smallest budget that fits") {
		t.Fatalf("16MiB accepted or unclear: %v %q", err, errs)
	}
	mm := regexp.MustCompile(`--max-mem (\d+)MiB`).FindStringSubmatch(errs)
	if mm == nil || strings.Count(strings.TrimSpace(errs), "\n") != 0 {
		t.Fatalf("message %q", errs)
	}
	_, errs, peak, err := run(t, append(args, "--max-mem", mm[1]+"MiB")...)
	if err != nil {
		t.Fatalf("the named budget %sMiB fails: %v %s", mm[1], err, errs)
	}
	n, _ := strconv.Atoi(mm[1])
	if peak > int64(n)<<20 {
		t.Fatalf("peak %d over the named budget %sMiB", peak, mm[1])
	}
}

// TestOptimizerOnDisk: rank-64 adapters on the 110M model need 85 MiB of
// AdamW moments; under 150 MiB the plan moves them to a file-backed scratch
// and streams the weights, and the run keeps to the budget.
func TestOptimizerOnDisk(t *testing.T) {
	m := model(t, "110M", quant.Q4_0)
	data := filepath.Join(tmpDir, "data")
	jobs(t, m) // writes the data folder
	args := append(trainArgs(m, data, "lora", "--iters", "2"), "--rank", "64", "--max-mem", "150MiB")
	plan, errs, _, err := run(t, append([]string{"plan"}, args...)...)
	if err != nil || !strings.Contains(plan, "optimizer state on disk") {
		t.Fatalf("plan: %v %s\n%s", err, errs, plan)
	}
	want := plannedPeak(t, args)
	_, errs, peak, err := run(t, args...)
	if err != nil {
		t.Fatalf("%v\n%s", err, errs)
	}
	t.Logf("planned %s, measured %s", budget.FormatSize(want), budget.FormatSize(peak))
	if peak > 150<<20 {
		t.Fatalf("peak %s over the 150 MiB budget", budget.FormatSize(peak))
	}
	if off := float64(peak-want) / float64(want); off > 0.15 || off < -0.15 {
		t.Errorf("plan %s is %.0f%% off the measured %s", budget.FormatSize(want), 100*off, budget.FormatSize(peak))
	}
}

// TestSpillActivations: with long sequences the checkpointed block inputs
// (about 18 MiB per micro-batch) spill to a file-backed scratch under a
// 104 MiB budget on the 110M model, whose weights alone are 73 MiB (at
// 100 MiB the plan, keeping its margin free, takes micro-batches of one
// instead).
func TestSpillActivations(t *testing.T) {
	m := model(t, "110M", quant.Q4_0)
	data := shakespeare(t, "long", 40)
	args := []string{"train", "--model", m, "--data", data, "--iters", "1", "--batch-size", "8", "--max-seq-length", "256",
		"--rank", "4", "--steps-per-eval", "0", "--adapter-path", filepath.Join(tmpDir, "adapter-spill"), "--max-mem", "104MiB"}
	plan, errs, _, err := run(t, append([]string{"plan"}, args...)...)
	if err != nil || !strings.Contains(plan, "spilled to disk") {
		t.Fatalf("plan: %v %s\n%s", err, errs, plan)
	}
	want := plannedPeak(t, args)
	_, errs, peak, err := run(t, args...)
	if err != nil {
		t.Fatalf("%v\n%s", err, errs)
	}
	t.Logf("planned %s, measured %s", budget.FormatSize(want), budget.FormatSize(peak))
	if peak > 104<<20 {
		t.Fatalf("peak %s over the 104 MiB budget", budget.FormatSize(peak))
	}
	if off := float64(peak-want) / float64(want); off > 0.15 || off < -0.15 {
		t.Errorf("plan %s is %.0f%% off the measured %s", budget.FormatSize(want), 100*off, budget.FormatSize(peak))
	}
}

// TestMeZOAtEvalMemory: MeZO's peak RSS is within 10% of qtune eval's on
// the same model, data and sequence length (issue 6: "MeZO trains with
// inference memory"), on the synthetic 110M Q4_0 model with 256-token rows
// of Shakespeare, and, with batches of 4, no higher than at batch 1 plus a
// tenth (its forward passes hold the residual stream and one block's keys
// and values per position, not a block's activations).
func TestMeZOAtEvalMemory(t *testing.T) {
	m := model(t, "110M", quant.Q4_0)
	data := shakespeare(t, "mezo-eval", 8)
	_, errs, eval, err := run(t, "eval", "--model", m, "--data", filepath.Join(data, "train.jsonl"), "--max-seq-length", "256")
	if err != nil {
		t.Fatalf("eval: %v\n%s", err, errs)
	}
	mezo := func(batch string) int64 {
		_, errs, peak, err := run(t, "train", "--model", m, "--data", data, "--method", "mezo", "--iters", "2",
			"--batch-size", batch, "--max-seq-length", "256", "--steps-per-eval", "0",
			"--adapter-path", filepath.Join(tmpDir, "adapter-mezo-eval"))
		if err != nil {
			t.Fatalf("mezo: %v\n%s", err, errs)
		}
		return peak
	}
	one, four := mezo("1"), mezo("4")
	t.Logf("eval %s, mezo batch 1 %s (%+.1f%%), batch 4 %s", budget.FormatSize(eval), budget.FormatSize(one),
		100*float64(one-eval)/float64(eval), budget.FormatSize(four))
	if float64(one) > 1.10*float64(eval) {
		t.Errorf("mezo at batch 1 peaks at %s, more than 10%% over eval's %s", budget.FormatSize(one), budget.FormatSize(eval))
	}
	if float64(four) > 1.10*float64(one) {
		t.Errorf("mezo at batch 4 peaks at %s against %s at batch 1", budget.FormatSize(four), budget.FormatSize(one))
	}
}

// shakespeare writes a data folder named name holding the first n records
// of tinyshakespeare's train.jsonl (long records: full 256-token rows).
func shakespeare(t *testing.T, name string, n int) string {
	t.Helper()
	data := filepath.Join(tmpDir, name)
	os.MkdirAll(data, 0o755)
	src, err := os.ReadFile(shared.Path(t, "assets", "data", "tinyshakespeare", "train.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitN(string(src), "\n", n+1)
	os.WriteFile(filepath.Join(data, "train.jsonl"), []byte(strings.Join(lines[:n], "\n")+"\n"), 0o644)
	return data
}

// QLoRA on a float base converts it to NF4 first. The conversion holds one
// tensor's NF4 bytes and a MiB of float32 at a time (it held the mapped
// float model and a float32 copy of its largest tensor: 534 MB under
// --max-mem 68MiB), so it stays within the budget the training then runs
// in, and a budget it cannot fit is refused before it starts. The same for
// `qtune quantize`, which has no budget: its peak is a small part of the
// 512 MiB float file.
func TestQLoRAConversionWithinBudget(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	src := model(t, "110M", quant.F32)
	data := shakespeare(t, "qlora-data", 20)
	for _, b := range []string{"4MiB", "64MiB"} {
		limit, _ := budget.ParseSize(b)
		// qtune plan converts the base (the plan needs its NF4 sizes) and
		// stops: its peak is the conversion's.
		_, errs, peak, err := run(t, "plan", "train", "--model", src, "--data", data, "--method", "qlora", "--iters", "1",
			"--batch-size", "2", "--max-seq-length", "32", "--steps-per-eval", "0", "--max-mem", b,
			"--cache-dir", t.TempDir(), "--adapter-path", t.TempDir())
		t.Logf("--max-mem %s: peak %s, %v: %s", b, budget.FormatSize(peak), err, lastLine(errs))
		if b == "4MiB" { // below the runtime itself: refused before converting
			if err == nil || !strings.Contains(errs, "converting") || peak > 32<<20 {
				t.Errorf("--max-mem %s: peak %s, exit %v", b, budget.FormatSize(peak), err)
			}
		} else if peak > limit || err != nil {
			t.Errorf("--max-mem %s: peak %s, exit %v", b, budget.FormatSize(peak), err)
		}
	}
	_, errs, peak, err := run(t, "quantize", src, filepath.Join(t.TempDir(), "o.gguf"), "--type", "nf4")
	if err != nil || peak > 64<<20 {
		t.Errorf("quantize to NF4: peak %s, %v %s", budget.FormatSize(peak), err, errs)
	}
	t.Logf("quantize 110M F32 → NF4: peak %s", budget.FormatSize(peak))
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// A record longer than the budget allows is refused by name before it is
// read whole (a 50 MB JSONL line peaked at 4.8 GB under --max-mem 64MiB and
// trained, exit 0; a 200 MB plain-text file at 2.2 GB under 256 MiB); the
// tokenizer itself encodes long texts in bounded pieces.
func TestOversizedRecordRefused(t *testing.T) {
	dir := t.TempDir()
	line := strings.Repeat("the cat sat on the mat and then ran away. ", 500_000) // 21 MB
	os.WriteFile(filepath.Join(dir, "train.jsonl"), []byte(`{"text": "`+line+`"}`+"\n"), 0o644)
	text := filepath.Join(t.TempDir(), "notes.txt")
	os.WriteFile(text, []byte(strings.Repeat(line, 2)), 0o644)
	stories := shared.Path(t, "assets", "models", "stories260K.gguf")
	for _, c := range []struct{ data, budget string }{{dir, "64MiB"}, {text, "256MiB"}} {
		limit, _ := budget.ParseSize(c.budget)
		_, errs, peak, err := run(t, "train", "--model", stories, "--data", c.data, "--iters", "1", "--batch-size", "1",
			"--max-seq-length", "32", "--steps-per-eval", "0", "--max-mem", c.budget,
			"--cache-dir", t.TempDir(), "--adapter-path", t.TempDir())
		t.Logf("%s under %s: peak %s, %s", filepath.Base(c.data), c.budget, budget.FormatSize(peak), lastLine(errs))
		if err == nil || !strings.Contains(errs, "memory budget") || peak > limit {
			t.Errorf("%s under %s: exit %v, peak %s: %s", c.data, c.budget, err, budget.FormatSize(peak), errs)
		}
	}
}
