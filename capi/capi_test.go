//go:build cgo

package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/qtune/qtune/internal/shared"
)

// build runs a command, failing the test with its output.
func build(t *testing.T, env []string, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// libqtune builds the shared library (with cgocheck2: every pointer that
// crosses the boundary is checked at run time) and the CLI, once for the
// package's tests, and returns their folder.
func libqtune(t *testing.T) string {
	t.Helper()
	built.Do(func() {
		dir, err := os.MkdirTemp("", "libqtune")
		if err != nil {
			built.err = err
			return
		}
		root, _ := filepath.Abs("..")
		steps := [][]string{
			{"go", "build", "-buildmode=c-shared", "-ldflags=-extldflags=-Wl,--version-script=" + filepath.Join(root, "capi", "exports.map"),
				"-o", filepath.Join(dir, "libqtune.so"), "."},
			{"go", "build", "-o", filepath.Join(dir, "qtune"), "../cmd/qtune"},
		}
		for i, st := range steps {
			cmd := exec.Command(st[0], st[1:]...)
			if i == 0 {
				cmd.Env = append(os.Environ(), "GOEXPERIMENT=cgocheck2")
			} else {
				cmd.Env = append(os.Environ(), "CGO_ENABLED=0") // the qtune binary as make build makes it
			}
			if out, err := cmd.CombinedOutput(); err != nil {
				built.err = fmt.Errorf("%s: %v\n%s", strings.Join(st, " "), err, out)
				return
			}
		}
		built.dir = dir
	})
	if built.err != nil {
		t.Fatal(built.err)
	}
	return built.dir
}

var built struct {
	sync.Once
	dir string
	err error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if built.dir != "" {
		os.RemoveAll(built.dir)
	}
	os.Exit(code)
}

var (
	progressRe = regexp.MustCompile(`^progress (\d+) train ([0-9.]+)$`)
	cliIterRe  = regexp.MustCompile(`Iter (\d+): Train loss ([0-9.]+)`)
)

type generated struct {
	PromptTokens []int  `json:"prompt_tokens"`
	Tokens       []int  `json:"tokens"`
	Text         string `json:"text"`
}

// A C host written from qtune.h alone trains (cancelled at iteration 3 from
// its progress callback, then resumed), generates with the adapters, and
// gets the CLI's results: the same losses as an uninterrupted `qtune train`
// of the same configuration and the same tokens as `qtune generate`. The
// library exports exactly the header's functions.
func TestCHostMatchesCLI(t *testing.T) {
	cc := shared.Tool(t, "cc", "")
	dir := libqtune(t)
	host := filepath.Join(t.TempDir(), "train_generate")
	build(t, nil, cc, "-std=c11", "-Wall", "-Werror", "-I.", "../examples/c/train_generate.c", "-L"+dir, "-lqtune", "-o", host)

	modelPath := shared.Path(t, "assets", "models", "stories260K.gguf")
	dataPath := shared.Path(t, "assets", "data", "tinyshakespeare")
	work := t.TempDir()
	out, _ := runHost(t, host, dir, modelPath, dataPath, work, "3")
	losses := map[int]float64{}
	var gen generated
	cancelled := false
	for _, line := range strings.Split(string(out), "\n") {
		if m := progressRe.FindStringSubmatch(line); m != nil {
			it, _ := strconv.Atoi(m[1])
			losses[it], _ = strconv.ParseFloat(m[2], 64)
		}
		cancelled = cancelled || line == "cancelled"
		if j, ok := strings.CutPrefix(line, "generated "); ok {
			if err := json.Unmarshal([]byte(j), &gen); err != nil {
				t.Fatal(err)
			}
		}
	}
	if !cancelled {
		t.Error("the run was not cancelled from the progress callback")
	}
	// phases as they begin, and a report before every micro-batch (one per
	// iteration here: 3 before the cancel, 3 after)
	for _, ph := range []string{"phase tokenizing", "phase validating", "phase training", "phase saving", "micro-batches 6"} {
		if !slices.Contains(strings.Split(string(out), "\n"), ph) {
			t.Errorf("C host: no %q line:\n%s", ph, out)
		}
	}
	if len(losses) != 6 || len(gen.Tokens) == 0 {
		t.Fatalf("C host: %d losses, %d tokens:\n%s", len(losses), len(gen.Tokens), out)
	}

	// The CLI, uninterrupted, on the same configuration.
	cliWork := t.TempDir()
	cfg := map[string]any{"model": modelPath, "data": dataPath, "method": "lora", "iters": 6, "batch_size": 2,
		"max_seq_length": 48, "learning_rate": 0.005, "rank": 4, "alpha": 8, "seed": 7, "steps_per_report": 1,
		"steps_per_eval": 100, "save_every": 100, "max_mem": "64MiB",
		"adapter_path": filepath.Join(cliWork, "adapters"), "cache_dir": filepath.Join(cliWork, "cache")}
	b, _ := json.Marshal(cfg)
	cfgPath := filepath.Join(cliWork, "config.json")
	if err := os.WriteFile(cfgPath, b, 0o644); err != nil {
		t.Fatal(err)
	}
	qtune := filepath.Join(dir, "qtune")
	trainOut, err := exec.Command(qtune, "train", "--config", cfgPath).CombinedOutput()
	if err != nil {
		t.Fatalf("qtune train: %v\n%s", err, trainOut)
	}
	sc := bufio.NewScanner(strings.NewReader(string(trainOut)))
	n := 0
	for sc.Scan() {
		m := cliIterRe.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		it, _ := strconv.Atoi(m[1])
		cli, _ := strconv.ParseFloat(m[2], 64)
		n++
		if c, ok := losses[it]; !ok || math.Abs(c-cli) > 1e-3 { // the CLI prints 3 decimals
			t.Errorf("iteration %d: C host loss %v, CLI %v", it, c, cli)
		}
	}
	if n != 6 {
		t.Errorf("the CLI reported %d iterations:\n%s", n, trainOut)
	}
	genOut, err := exec.Command(qtune, "generate", "--model", modelPath, "--adapter", filepath.Join(work, "adapters"),
		"--prompt", "Once upon a time", "-n", "24", "--temp", "0", "--max-mem", "64MiB", "--json").Output()
	if err != nil {
		t.Fatalf("qtune generate: %v", err)
	}
	var want generated
	if err := json.Unmarshal(genOut, &want); err != nil {
		t.Fatalf("%v: %s", err, genOut)
	}
	if !slices.Equal(gen.Tokens, want.Tokens) || gen.Text != want.Text {
		t.Errorf("C host generated %v %q, the CLI %v %q", gen.Tokens, gen.Text, want.Tokens, want.Text)
	}
	if !strings.Contains(string(out), "missing model: status 3") {
		t.Errorf("a missing model did not give QTUNE_ERR_FILE:\n%s", out)
	}

	// Exported symbols: exactly the header's functions.
	nm := shared.Tool(t, "nm", "")
	syms, err := exec.Command(nm, "-D", "--defined-only", filepath.Join(dir, "libqtune.so")).Output()
	if err != nil {
		t.Fatal(err)
	}
	var exported []string
	for _, line := range strings.Split(string(syms), "\n") {
		if f := strings.Fields(line); len(f) == 3 {
			exported = append(exported, f[2])
		}
	}
	slices.Sort(exported)
	if h := headerFunctions(t); !slices.Equal(exported, h) {
		t.Errorf("libqtune exports %v; qtune.h declares %v", exported, h)
	}
}

// A C host plans a training (fitting and not), applies an adapter and
// evaluates with and without it, and exports it: the same plan, losses and
// files as the CLI's, and bad data is a status naming the file and line.
func TestCHostAdaptersMatchCLI(t *testing.T) {
	cc := shared.Tool(t, "cc", "")
	dir := libqtune(t)
	host := filepath.Join(t.TempDir(), "adapters")
	build(t, nil, cc, "-std=c11", "-Wall", "-Werror", "-I.", "../examples/c/adapters.c", "-L"+dir, "-lqtune", "-o", host)
	modelPath := shared.Path(t, "assets", "models", "stories260K.gguf")
	dataPath := shared.Path(t, "assets", "data", "tinyshakespeare")
	work := t.TempDir()
	qtune := filepath.Join(dir, "qtune")
	cli := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(qtune, args...).Output()
		if err != nil {
			t.Fatalf("qtune %v: %v", args, err)
		}
		return string(out)
	}
	adapters := filepath.Join(work, "adapters")
	cli("--quiet", "train", "--model", modelPath, "--data", dataPath, "--iters", "4", "--batch-size", "2", "--max-seq-length", "48",
		"--rank", "4", "--learning-rate", "5e-3", "--steps-per-eval", "0", "--adapter-path", adapters, "--cache-dir", filepath.Join(work, "cache"))
	bad := filepath.Join(work, "bad.jsonl")
	if err := os.WriteFile(bad, []byte("{\"text\": \"fine\"}\n{\"text\": 3}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	exported := filepath.Join(work, "exported")
	out, _ := runHost(t, host, dir, modelPath, dataPath, adapters, exported, bad)
	lines := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		k, v, _ := strings.Cut(line, " ")
		lines[k] = v
	}
	type planOut struct {
		Fits  bool   `json:"fits"`
		Error string `json:"error"`
		Text  string `json:"text"`
		Plan  struct {
			Job    string `json:"job"`
			Budget int64  `json:"budget"`
			Peak   int64  `json:"peak"`
			Items  []struct {
				Category string `json:"category"`
				Bytes    int64  `json:"bytes"`
			} `json:"items"`
		} `json:"plan"`
	}
	var plan, tight planOut
	if err := json.Unmarshal([]byte(lines["plan"]), &plan); err != nil {
		t.Fatalf("plan: %v: %s", err, out)
	}
	if err := json.Unmarshal([]byte(lines["tight-plan"]), &tight); err != nil {
		t.Fatalf("tight plan: %v: %s", err, out)
	}
	var sum int64
	for _, it := range plan.Plan.Items {
		sum += it.Bytes
	}
	if !plan.Fits || plan.Plan.Job != "train" || plan.Plan.Budget != 64<<20 || plan.Plan.Peak <= 0 || plan.Plan.Peak > plan.Plan.Budget || len(plan.Plan.Items) == 0 || sum < plan.Plan.Peak {
		t.Errorf("plan at 64 MiB: %+v (items sum to %d)", plan, sum)
	}
	cliPlan := cli("plan", "train", "--model", modelPath, "--data", dataPath, "--batch-size", "2", "--max-seq-length", "48", "--rank", "4", "--max-mem", "64MiB")
	if strings.TrimSpace(cliPlan) != strings.TrimSpace(plan.Text) {
		t.Errorf("the C host's plan\n%s\nthe CLI's\n%s", plan.Text, cliPlan)
	}
	if tight.Fits || !strings.Contains(tight.Error, "MiB") || tight.Plan.Budget != 3<<20 {
		t.Errorf("plan at 3 MiB: fits %v, error %q", tight.Fits, tight.Error)
	}

	type lm struct {
		Kind   string  `json:"kind"`
		Loss   float64 `json:"loss"`
		Tokens int     `json:"tokens"`
	}
	for _, c := range []struct {
		line string
		args []string
	}{{"eval-adapter", []string{"--adapter", adapters}}, {"eval-base", nil}} {
		var got, want lm
		if err := json.Unmarshal([]byte(lines[c.line]), &got); err != nil {
			t.Fatalf("%s: %v: %s", c.line, err, out)
		}
		args := append([]string{"--quiet", "eval", "--model", modelPath, "--data", filepath.Join(dataPath, "valid.jsonl"), "--limit", "5",
			"--max-mem", "64MiB", "--json"}, c.args...)
		if err := json.Unmarshal([]byte(cli(args...)), &want); err != nil {
			t.Fatal(err)
		}
		if got.Kind != "text" || got.Loss != want.Loss || got.Tokens != want.Tokens || got.Tokens == 0 {
			t.Errorf("%s: C host %+v, CLI %+v", c.line, got, want)
		}
	}
	var a, b lm
	json.Unmarshal([]byte(lines["eval-adapter"]), &a)
	json.Unmarshal([]byte(lines["eval-base"]), &b)
	if a.Loss == b.Loss {
		t.Error("removing the adapter did not change the loss")
	}

	cliExported := filepath.Join(work, "cli-exported")
	cli("--quiet", "export", "--model", modelPath, "--adapter", adapters, "--out", cliExported)
	for _, f := range []string{"adapter_model.safetensors", "adapter_config.json", "adapter.gguf"} {
		got, err1 := os.ReadFile(filepath.Join(exported, f))
		want, err2 := os.ReadFile(filepath.Join(cliExported, f))
		if err1 != nil || err2 != nil || len(got) == 0 || string(got) != string(want) {
			t.Errorf("exported %s: %d bytes (%v), the CLI's %d (%v), or they differ", f, len(got), err1, len(want), err2)
		}
	}
	if !strings.HasPrefix(lines["bad-device"], "2 ") || !strings.Contains(lines["bad-device"], `"tpu"`) {
		t.Errorf("bad device: %q, want status 2 (QTUNE_ERR_ARGS) naming it", lines["bad-device"])
	}
	if !strings.HasPrefix(lines["bad-data"], "3 ") || !strings.Contains(lines["bad-data"], bad+": line 2: ") {
		t.Errorf("bad data: %q, want status 3 naming %s line 2", lines["bad-data"], bad)
	}
}

// headerFunctions lists the functions qtune.h declares.
func headerFunctions(t *testing.T) []string {
	b, err := os.ReadFile("qtune.h")
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`(?m)^(?:const )?[a-z_]+ \*?(qtune_[a-z_]+)\(`)
	var fs []string
	for _, m := range re.FindAllStringSubmatch(string(b), -1) {
		fs = append(fs, m[1])
	}
	slices.Sort(fs)
	return fs
}

// A Python host (ctypes, from the header alone) gets the same greedy tokens
// as the CLI, a training's progress through a callback, and errors as
// statuses with messages.
func TestPythonHostMatchesCLI(t *testing.T) {
	py := shared.Tool(t, "python3", "")
	dir := libqtune(t)
	modelPath := shared.Path(t, "assets", "models", "stories260K.gguf")
	dataPath := shared.Path(t, "assets", "data", "tinyshakespeare")
	work := t.TempDir()
	out, err := exec.Command(py, "../examples/python/qtune_ctypes.py", filepath.Join(dir, "libqtune.so"), modelPath, dataPath, work).CombinedOutput()
	if err != nil {
		t.Fatalf("python host: %v\n%s", err, out)
	}
	var res struct {
		Losses    map[string]float64 `json:"losses"`
		Cancelled bool               `json:"cancelled"`
		Phases    []string           `json:"phases"`
		Gen       generated          `json:"generated"`
		Streamed  []int              `json:"streamed"`
		Missing   int                `json:"missing_status"`
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &res); err != nil {
		t.Fatalf("%v:\n%s", err, out)
	}
	if !res.Cancelled || len(res.Losses) != 4 || !slices.Contains(res.Phases, "saving") {
		t.Errorf("cancelled %v, losses %v, phases %v: want a cancel, 4 iterations, a save", res.Cancelled, res.Losses, res.Phases)
	}
	// the CLI, uninterrupted, on the same configuration
	cliWork := t.TempDir()
	trainOut, err := exec.Command(filepath.Join(dir, "qtune"), "train", "--model", modelPath, "--data", dataPath, "--method", "lora", "--iters", "4",
		"--batch-size", "2", "--max-seq-length", "32", "--rank", "4", "--alpha", "8", "--seed", "3", "--steps-per-report", "1",
		"--steps-per-eval", "100", "--save-every", "100", "--max-mem", "64MiB", "--adapter-path", filepath.Join(cliWork, "adapters"),
		"--cache-dir", filepath.Join(cliWork, "cache")).CombinedOutput()
	if err != nil {
		t.Fatalf("qtune train: %v\n%s", err, trainOut)
	}
	n := 0
	for _, m := range cliIterRe.FindAllStringSubmatch(string(trainOut), -1) {
		cli, _ := strconv.ParseFloat(m[2], 64)
		n++
		if py, ok := res.Losses[m[1]]; !ok || math.Abs(py-cli) > 1e-3 { // the CLI prints 3 decimals
			t.Errorf("iteration %s: python host loss %v, CLI %v", m[1], py, cli)
		}
	}
	if n != 4 {
		t.Errorf("the CLI reported %d iterations:\n%s", n, trainOut)
	}
	if !slices.Equal(res.Streamed, res.Gen.Tokens) {
		t.Errorf("streamed %v, returned %v", res.Streamed, res.Gen.Tokens)
	}
	if res.Missing != 3 {
		t.Errorf("a missing model gave status %d, want 3 (QTUNE_ERR_FILE)", res.Missing)
	}
	genOut, err := exec.Command(filepath.Join(dir, "qtune"), "generate", "--model", modelPath, "--adapter", filepath.Join(work, "adapters"),
		"--prompt", "One day", "-n", "16", "--temp", "0", "--json").Output()
	if err != nil {
		t.Fatalf("qtune generate: %v", err)
	}
	var want generated
	if err := json.Unmarshal(genOut, &want); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.Gen.Tokens, want.Tokens) {
		t.Errorf("python host generated %v, the CLI %v", res.Gen.Tokens, want.Tokens)
	}
}

// runHost runs a C host with libqtune.so from libDir; it must exit 0.
func runHost(t *testing.T, exe, libDir string, args ...string) (stdout, stderr string) {
	t.Helper()
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), "LD_LIBRARY_PATH="+libDir)
	var errb strings.Builder
	cmd.Stderr = &errb
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v\n%s\n%s", filepath.Base(exe), err, out, errb.String())
	}
	return string(out), errb.String()
}

// results keeps a host's lines that carry results (losses, tokens, plans),
// not the ones that vary from run to run (the result's peak memory).
func results(out string) []string {
	var keep []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "progress ") || strings.HasPrefix(l, "generated ") || strings.HasPrefix(l, "phase ") || l == "cancelled" {
			keep = append(keep, l)
		}
	}
	return keep
}

// The static library (libqtune.a, -buildmode=c-archive) links into a C
// host that runs as the shared library's does: the same losses, phases and
// tokens.
func TestStaticLibrary(t *testing.T) {
	cc := shared.Tool(t, "cc", "")
	dir := libqtune(t)
	tmp := t.TempDir()
	archive := filepath.Join(tmp, "libqtune.a")
	build(t, nil, "go", "build", "-buildmode=c-archive", "-o", archive, ".")
	static, shared_ := filepath.Join(tmp, "static"), filepath.Join(tmp, "shared")
	build(t, nil, cc, "-std=c11", "-Wall", "-Werror", "-I.", "../examples/c/train_generate.c", archive, "-lpthread", "-lm", "-o", static)
	build(t, nil, cc, "-std=c11", "-Wall", "-Werror", "-I.", "../examples/c/train_generate.c", "-L"+dir, "-lqtune", "-o", shared_)
	if out, err := exec.Command("ldd", static).Output(); err == nil && strings.Contains(string(out), "libqtune") {
		t.Fatalf("the static host loads libqtune.so:\n%s", out)
	}
	modelPath := shared.Path(t, "assets", "models", "stories260K.gguf")
	dataPath := shared.Path(t, "assets", "data", "tinyshakespeare")
	a, _ := runHost(t, static, "", modelPath, dataPath, t.TempDir(), "3")
	b, _ := runHost(t, shared_, dir, modelPath, dataPath, t.TempDir(), "3")
	if ra, rb := results(a), results(b); len(ra) < 10 || !slices.Equal(ra, rb) {
		t.Errorf("static host\n%s\nshared host\n%s", strings.Join(ra, "\n"), strings.Join(rb, "\n"))
	}
}

// Under AddressSanitizer (the library built with go build -asan, the hosts
// with -fsanitize=address) both C examples run clean: no invalid access,
// and LeakSanitizer finds nothing left allocated at exit. A host that
// forgets one qtune_free_string is caught, so the check is live.
func TestCHostsUnderAddressSanitizer(t *testing.T) {
	cc := shared.Tool(t, "cc", "")
	tmp := t.TempDir()
	root, _ := filepath.Abs("..")
	build(t, nil, "go", "build", "-asan", "-buildmode=c-shared", "-ldflags=-extldflags=-Wl,--version-script="+filepath.Join(root, "capi", "exports.map"),
		"-o", filepath.Join(tmp, "libqtune.so"), ".")
	asan := []string{"-std=c11", "-g", "-fsanitize=address", "-fno-omit-frame-pointer", "-I.", "-L" + tmp, "-lqtune"}
	hosts := map[string]string{}
	for _, name := range []string{"train_generate", "adapters"} {
		hosts[name] = filepath.Join(tmp, name)
		build(t, nil, cc, append([]string{"../examples/c/" + name + ".c", "-o", hosts[name]}, asan...)...)
	}
	leaky := filepath.Join(tmp, "leaky.c")
	if err := os.WriteFile(leaky, []byte(`#include <stddef.h>
#include "qtune.h"
int main(int argc, char **argv) {
    qtune_model *m;
    char *out;
    if (qtune_model_open(argv[1], NULL, &m) != QTUNE_OK) return 1;
    for (int i = 0; i < 3; i++) /* the first two results are never released */
        if (qtune_generate(m, "{\"prompt\": \"Once\", \"max_tokens\": 4, \"temp\": 0}", NULL, NULL, &out) != QTUNE_OK) return 1;
    qtune_free_string(out);
    qtune_model_free(m);
    return 0;
}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	build(t, nil, cc, append([]string{leaky, "-o", filepath.Join(tmp, "leaky")}, asan...)...)

	modelPath := shared.Path(t, "assets", "models", "stories260K.gguf")
	dataPath := shared.Path(t, "assets", "data", "tinyshakespeare")
	work := t.TempDir()
	clean := func(name, stderr string) {
		for _, bad := range []string{"ERROR: AddressSanitizer", "ERROR: LeakSanitizer"} { // (the test folder's name holds the words)
			if strings.Contains(stderr, bad) {
				t.Errorf("%s under ASan:\n%s", name, stderr)
			}
		}
	}
	out, errs := runHost(t, hosts["train_generate"], tmp, modelPath, dataPath, work, "3")
	if !strings.Contains(out, "cancelled") || !strings.Contains(out, "generated ") {
		t.Errorf("train_generate under ASan:\n%s", out)
	}
	clean("train_generate", errs)
	bad := filepath.Join(work, "bad.jsonl")
	if err := os.WriteFile(bad, []byte("{\"text\": 1}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, errs = runHost(t, hosts["adapters"], tmp, modelPath, dataPath, filepath.Join(work, "adapters"), filepath.Join(work, "exported"), bad)
	if !strings.Contains(out, "export ") || !strings.Contains(out, "bad-data 3 ") {
		t.Errorf("adapters under ASan:\n%s", out)
	}
	clean("adapters", errs)

	cmd := exec.Command(filepath.Join(tmp, "leaky"), modelPath)
	cmd.Env = append(os.Environ(), "LD_LIBRARY_PATH="+tmp)
	lout, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(lout), "LeakSanitizer: detected memory leaks") {
		t.Errorf("a leaked result string went unnoticed (%v):\n%s", err, lout)
	}
}

// libqtune cross-built for linux/arm64 with Debian's cross compiler: the C
// host, cross-compiled too, runs under qemu-user (the NEON kernels) and
// gets the same losses, phases and tokens as on this machine.
func TestLinuxArm64Library(t *testing.T) {
	xcc := shared.Tool(t, "aarch64-linux-gnu-gcc", "")
	qemu := shared.Tool(t, "qemu-aarch64", "")
	cc := shared.Tool(t, "cc", "")
	const sysroot = "/usr/aarch64-linux-gnu"
	if _, err := os.Stat(sysroot); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("no arm64 C library: %v", err)
		}
		t.Skipf("no arm64 C library: %v", err)
	}
	dir := libqtune(t)
	tmp := t.TempDir()
	root, _ := filepath.Abs("..")
	build(t, []string{"CGO_ENABLED=1", "GOOS=linux", "GOARCH=arm64", "CC=" + xcc}, "go", "build", "-buildmode=c-shared",
		"-ldflags=-extldflags=-Wl,--version-script="+filepath.Join(root, "capi", "exports.map"), "-o", filepath.Join(tmp, "libqtune.so"), ".")
	arm := filepath.Join(tmp, "train_generate")
	build(t, nil, xcc, "-std=c11", "-Wall", "-Werror", "-I.", "../examples/c/train_generate.c", "-L"+tmp, "-lqtune", "-o", arm)
	native := filepath.Join(t.TempDir(), "train_generate")
	build(t, nil, cc, "-std=c11", "-Wall", "-Werror", "-I.", "../examples/c/train_generate.c", "-L"+dir, "-lqtune", "-o", native)
	if out, err := exec.Command("file", filepath.Join(tmp, "libqtune.so")).Output(); err == nil && !strings.Contains(string(out), "aarch64") {
		t.Fatalf("not an arm64 library: %s", out)
	}
	modelPath := shared.Path(t, "assets", "models", "stories260K.gguf")
	dataPath := shared.Path(t, "assets", "data", "tinyshakespeare")
	a, _ := runHost(t, qemu, tmp, "-L", sysroot, arm, modelPath, dataPath, t.TempDir(), "3")
	b, _ := runHost(t, native, dir, modelPath, dataPath, t.TempDir(), "3")
	ra, rb := results(a), results(b)
	if len(ra) < 10 || len(ra) != len(rb) {
		t.Fatalf("arm64 host\n%s\nthis machine's\n%s", strings.Join(ra, "\n"), strings.Join(rb, "\n"))
	}
	for i := range ra {
		if ra[i] == rb[i] {
			continue
		}
		// losses: the NEON and AVX2 kernels sum in other orders
		fa, fb := strings.Fields(ra[i]), strings.Fields(rb[i])
		if len(fa) == 4 && len(fb) == 4 && fa[0] == "progress" && fa[1] == fb[1] && fa[2] == fb[2] {
			x, _ := strconv.ParseFloat(fa[3], 64)
			y, _ := strconv.ParseFloat(fb[3], 64)
			if math.Abs(x-y) <= 1e-4*math.Abs(y) {
				continue
			}
		}
		t.Errorf("arm64: %q, this machine: %q", ra[i], rb[i])
	}
}

// The Kotlin binding (examples/kotlin: JNI glue in C, Qtune.kt) compiles
// with Debian's kotlinc and its host, run by the JVM with JNI checks on,
// gets the C host's losses, phases and tokens. libjsig chains the JVM's
// signal handlers with the Go runtime's (Android's runtime does that
// itself); with it the JVM reports nothing.
func TestKotlinHost(t *testing.T) {
	kotlinc := shared.Tool(t, "kotlinc", "")
	java := shared.Tool(t, "java", "")
	cc := shared.Tool(t, "cc", "")
	dir := libqtune(t)
	javaBin, err := filepath.EvalSymlinks(java)
	if err != nil {
		t.Fatal(err)
	}
	jhome := filepath.Dir(filepath.Dir(javaBin))
	tmp := t.TempDir()
	build(t, nil, cc, "-std=c11", "-Wall", "-Werror", "-shared", "-fPIC", "-I.", "-I"+filepath.Join(jhome, "include"), "-I"+filepath.Join(jhome, "include", "linux"),
		"../examples/kotlin/qtune_jni.c", "-L"+dir, "-lqtune", "-o", filepath.Join(tmp, "libqtune_jni.so"))
	jar := filepath.Join(tmp, "qtune-kotlin.jar")
	build(t, nil, kotlinc, "../examples/kotlin/Qtune.kt", "-include-runtime", "-d", jar)
	host := filepath.Join(t.TempDir(), "train_generate")
	build(t, nil, cc, "-std=c11", "-I.", "../examples/c/train_generate.c", "-L"+dir, "-lqtune", "-o", host)

	modelPath := shared.Path(t, "assets", "models", "stories260K.gguf")
	dataPath := shared.Path(t, "assets", "data", "tinyshakespeare")
	cmd := exec.Command(java, "-Xcheck:jni", "-Djava.library.path="+tmp, "-cp", jar, "dev.qtune.QtuneKt", modelPath, dataPath, t.TempDir(), "3")
	cmd.Env = append(os.Environ(), "LD_LIBRARY_PATH="+dir, "LD_PRELOAD="+filepath.Join(jhome, "lib", "libjsig.so"))
	var errb strings.Builder
	cmd.Stderr = &errb
	kout, err := cmd.Output()
	if err != nil {
		t.Fatalf("kotlin host: %v\n%s\n%s", err, kout, errb.String())
	}
	for _, bad := range []string{"WARNING", "FATAL", "Exception"} {
		if strings.Contains(errb.String(), bad) {
			t.Errorf("the JVM reports:\n%s", errb.String())
		}
	}
	cout, _ := runHost(t, host, dir, modelPath, dataPath, t.TempDir(), "3")
	if rk, rc := results(string(kout)), results(cout); len(rk) < 10 || !slices.Equal(rk, rc) {
		t.Errorf("kotlin host\n%s\nC host\n%s", strings.Join(rk, "\n"), strings.Join(rc, "\n"))
	}
	if !strings.Contains(string(kout), "missing model: status 3: ") {
		t.Errorf("a missing model was not a QtuneException of status 3:\n%s", kout)
	}
}

// --max-mem holds inside a host process: a C app that holds 256 MiB of its
// own trains under budgets from the smallest that fits, on a quiet and on
// a busy machine, and what the process's peak adds to a plain C program's
// holding the same (qtune's mapped library, runtime, heap, slabs and model
// pages) stays under each budget. The library is built as apps get it
// (not with cgocheck2).
func TestBudgetHoldsInHostProcess(t *testing.T) {
	cc := shared.Tool(t, "cc", "")
	cli := libqtune(t)
	dir := t.TempDir()
	build(t, nil, "go", "build", "-buildmode=c-shared", "-o", filepath.Join(dir, "libqtune.so"), ".")
	tmp := t.TempDir()
	src := map[string]string{"bare": hostMemBare, "host": hostMemTrain}
	for name, code := range src {
		p := filepath.Join(tmp, name+".c")
		if err := os.WriteFile(p, []byte(code), 0o644); err != nil {
			t.Fatal(err)
		}
		build(t, nil, cc, "-std=c11", "-I.", p, "-L"+dir, "-lqtune", "-o", filepath.Join(tmp, name))
	}
	modelPath := shared.Path(t, "assets", "models", "stories260K.gguf")
	dataPath := shared.Path(t, "assets", "data", "tinyshakespeare")
	const ballast = "256"
	hwm := func(out string) int64 {
		f := strings.Fields(out)
		if len(f) < 2 || f[0] != "hwm_kib" {
			t.Fatalf("host printed %q", out)
		}
		v, _ := strconv.ParseInt(f[1], 10, 64)
		return v << 10
	}
	bareOut, _ := runHost(t, filepath.Join(tmp, "bare"), dir, ballast)
	bare := hwm(bareOut)
	// the smallest budget, as the plan names it
	plan, _ := exec.Command(filepath.Join(cli, "qtune"), "plan", "train", "--model", modelPath, "--data", dataPath, "--batch-size", "4",
		"--max-seq-length", "128", "--rank", "8", "--max-mem", "4MiB").CombinedOutput()
	m := regexp.MustCompile(`--max-mem (\d+)MiB\)`).FindSubmatch(plan)
	if m == nil {
		t.Fatalf("no smallest budget in:\n%s", plan)
	}
	smallest, _ := strconv.Atoi(string(m[1]))
	for _, busy := range []bool{false, true} {
		stop := make(chan struct{})
		if busy { // a busy loop on every core
			for range runtime.NumCPU() {
				go func() {
					for {
						select {
						case <-stop:
							return
						default:
						}
					}
				}()
			}
		}
		for _, mib := range []int{smallest, smallest + 4, smallest + 16} {
			budget := fmt.Sprintf("%dMiB", mib)
			out, _ := runHost(t, filepath.Join(tmp, "host"), dir, modelPath, dataPath, t.TempDir(), budget, ballast)
			used := hwm(out) - bare
			t.Logf("busy %v, budget %s: qtune's part of the host's peak %.2f MiB (%.1f%%)", busy, budget, float64(used)/(1<<20), 100*float64(used)/float64(int64(mib)<<20))
			if used > int64(mib)<<20 {
				t.Errorf("busy %v, budget %s: the host's peak is %.2f MiB over a plain C program's: over budget", busy, budget, float64(used)/(1<<20))
			}
		}
		close(stop)
	}
}

const hostMemBare = `#include <stdio.h>
#include <stdlib.h>
#include <string.h>
/* a plain C program: BALLAST_MIB of its own, resident; prints its peak */
int main(int argc, char **argv) {
    long n = atol(argv[1]) << 20;
    char *b = malloc(n);
    memset(b, 1, n);
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmHWM:", 6) == 0) printf("hwm_kib %ld\n", atol(line + 6));
    return b[n - 1] != 1;
}
`

const hostMemTrain = `#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "qtune.h"
/* MODEL DATA WORK BUDGET BALLAST_MIB: the app holds BALLAST_MIB of its own,
   then trains under BUDGET; prints the process's peak */
int main(int argc, char **argv) {
    long n = atol(argv[5]) << 20;
    char *b = malloc(n);
    memset(b, 1, n);
    char cfg[4096];
    snprintf(cfg, sizeof cfg, "{\"model\": \"%s\", \"data\": \"%s\", \"method\": \"lora\", \"iters\": 4, \"batch_size\": 4,"
             " \"max_seq_length\": 128, \"rank\": 8, \"steps_per_eval\": 2, \"val_batches\": 4, \"max_mem\": \"%s\","
             " \"adapter_path\": \"%s/adapters\", \"cache_dir\": \"%s/cache\"}", argv[1], argv[2], argv[4], argv[3], argv[3]);
    qtune_session *s = qtune_session_new();
    char *out = NULL;
    qtune_status st = qtune_train(s, cfg, NULL, NULL, NULL, &out);
    if (st != QTUNE_OK) {
        fprintf(stderr, "qtune_train: status %d: %s\n", st, qtune_last_error());
        return 1;
    }
    qtune_free_string(out);
    qtune_session_free(s);
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmHWM:", 6) == 0) printf("hwm_kib %ld\n", atol(line + 6));
    return b[n - 1] != 1;
}
`
