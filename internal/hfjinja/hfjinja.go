package hfjinja

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// ErrUnavailable marks a machine where the judge cannot run (no node, or
// tools/hfjinja not installed).
var ErrUnavailable = errors.New("Hugging Face jinja judge unavailable")

// Version is the @huggingface/jinja release package-lock.json pins.
const Version = "0.5.13"

// Rendering asks for one template rendered with one context.
type Rendering struct {
	Template string         `json:"template"` // a key of Request.Templates
	Context  map[string]any `json:"context"`  // the template's variables, as JSON
}

// Request is one call of the judge.
type Request struct {
	Templates map[string]string `json:"templates"` // name -> Jinja source
	Renders   []Rendering       `json:"renders"`
}

// Result is Hugging Face's answer for one Rendering: its output, or the
// message of the error it raised (parse or render) with Output empty.
type Result struct {
	Output string `json:"output"`
	Error  string `json:"error,omitempty"`
}

// Dir returns tools/hfjinja under the module root (the folder holding
// go.mod, found upwards from the working directory).
func Dir() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("hfjinja: %w", err)
	}
	for d := wd; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return filepath.Join(d, "tools", "hfjinja"), nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("hfjinja: no go.mod above %s", wd)
		}
	}
}

// Available returns nil when the judge can run: node 18 or newer on PATH
// and @huggingface/jinja Version installed under Dir(). Otherwise the error
// (wrapping ErrUnavailable) says what is missing and how to install it.
func Available() error { return available() }

const install = "run `npm install --prefix tools/hfjinja --ignore-scripts` (or .ci/run)"

var available = sync.OnceValue(func() error {
	dir, err := Dir()
	if err != nil {
		return fmt.Errorf("hfjinja: %w: no go.mod above the working directory", ErrUnavailable)
	}
	node, err := exec.LookPath("node")
	if err != nil {
		return fmt.Errorf("hfjinja: %w: node not on PATH (install Node.js 18 or newer)", ErrUnavailable)
	}
	out, err := exec.Command(node, "--version").Output()
	if err != nil {
		return fmt.Errorf("hfjinja: %w: node --version: %v", ErrUnavailable, err)
	}
	v := strings.TrimSpace(string(out))
	major, _, _ := strings.Cut(strings.TrimPrefix(v, "v"), ".")
	if n, err := strconv.Atoi(major); err != nil || n < 18 {
		return fmt.Errorf("hfjinja: %w: node %s is too old: @huggingface/jinja needs 18 or newer", ErrUnavailable, v)
	}
	b, err := os.ReadFile(filepath.Join(dir, "node_modules", "@huggingface", "jinja", "package.json"))
	if err != nil {
		return fmt.Errorf("hfjinja: %w: @huggingface/jinja not installed: %s (%v)", ErrUnavailable, install, err)
	}
	var pkg struct{ Version string }
	if err := json.Unmarshal(b, &pkg); err != nil || pkg.Version != Version {
		return fmt.Errorf("hfjinja: %w: @huggingface/jinja %q installed, want %s: %s", ErrUnavailable, pkg.Version, Version, install)
	}
	return nil
})

// Render asks @huggingface/jinja for every rendering in req, in one node
// process, and returns one Result per rendering in order.
func Render(ctx context.Context, req Request) ([]Result, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	dir, err := Dir()
	if err != nil {
		return nil, err
	}
	in, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("hfjinja: %w", err)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "node", "render.mjs")
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(in)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			return nil, fmt.Errorf("hfjinja: %s (%w)", strings.TrimPrefix(msg, "hfjinja: "), err)
		}
		return nil, fmt.Errorf("hfjinja: render.mjs: %w", err)
	}
	var resp struct {
		Results []Result `json:"results"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &resp); err != nil {
		return nil, fmt.Errorf("hfjinja: render.mjs answer: %w", err)
	}
	if len(resp.Results) != len(req.Renders) {
		return nil, fmt.Errorf("hfjinja: %d results for %d renderings", len(resp.Results), len(req.Renders))
	}
	return resp.Results, nil
}

// Require skips t when the judge is unavailable, giving the reason, except
// when the environment variable CI is "true": there it fails t, so that CI
// never passes by silently skipping the judge.
func Require(t testing.TB) {
	t.Helper()
	err := Available()
	if err == nil {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%v (CI=true: the Hugging Face jinja judge is required)", err)
	}
	t.Skip(err)
}
