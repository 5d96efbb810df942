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
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/qtune/qtune/internal/shared"
)

// needTool finds a program the test drives; missing, the test skips (CI,
// which installs them, fails instead).
func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is not installed: %v", name, err)
		}
		t.Skipf("%s is not installed", name)
	}
	return p
}

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
	cc := needTool(t, "cc")
	dir := libqtune(t)
	host := filepath.Join(t.TempDir(), "train_generate")
	build(t, nil, cc, "-std=c11", "-Wall", "-Werror", "-I.", "../examples/c/train_generate.c", "-L"+dir, "-lqtune", "-o", host)

	modelPath := shared.Path(t, "assets", "models", "stories260K.gguf")
	dataPath := shared.Path(t, "assets", "data", "tinyshakespeare")
	work := t.TempDir()
	cmd := exec.Command(host, modelPath, dataPath, work, "3")
	cmd.Env = append(os.Environ(), "LD_LIBRARY_PATH="+dir)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("C host: %v\n%s\n%s", err, out, stderr.String())
	}
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
	nm := needTool(t, "nm")
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
	py := needTool(t, "python3")
	dir := libqtune(t)
	modelPath := shared.Path(t, "assets", "models", "stories260K.gguf")
	dataPath := shared.Path(t, "assets", "data", "tinyshakespeare")
	work := t.TempDir()
	out, err := exec.Command(py, "../examples/python/qtune_ctypes.py", filepath.Join(dir, "libqtune.so"), modelPath, dataPath, work).CombinedOutput()
	if err != nil {
		t.Fatalf("python host: %v\n%s", err, out)
	}
	var res struct {
		Progress []int     `json:"progress"`
		Gen      generated `json:"generated"`
		Streamed []int     `json:"streamed"`
		Missing  int       `json:"missing_status"`
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &res); err != nil {
		t.Fatalf("%v:\n%s", err, out)
	}
	if !slices.Equal(res.Progress, []int{1, 2}) {
		t.Errorf("progress callbacks for iterations %v, want [1 2]", res.Progress)
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
