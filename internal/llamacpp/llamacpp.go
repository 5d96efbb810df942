package llamacpp

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
// tools/llamacpp not installed).
var ErrUnavailable = errors.New("llama.cpp judge unavailable")

// Version is the node-llama-cpp release package-lock.json pins.
const Version = "3.22.1"

// Request is one call of the judge. V is the model's vocabulary size, T a
// prompt's length.
type Request struct {
	Model     string  `json:"model"`               // GGUF model path
	LoRA      string  `json:"lora,omitempty"`      // llama.cpp GGUF LoRA adapter path; empty: none
	LoRAScale float64 `json:"loraScale,omitempty"` // llama.cpp's user scale on top of alpha/R; 0 means 1
	Ctx       int     `json:"ctx,omitempty"`       // n_ctx; 0 means 256. Longest prompt + Generate must fit
	Prompts   [][]int `json:"prompts"`             // token ids, evaluated exactly as given (no BOS added)
	Logits    bool    `json:"logits"`              // return every position's raw logits
	Generate  int     `json:"generate"`            // greedy tokens to generate after each prompt
}

// Result is the judge's answer for one prompt.
type Result struct {
	Logits [][]float32 `json:"logits"` // (T, V): row i is the next-token logits after prompt[:i+1]; nil unless asked
	Greedy []int       `json:"greedy"` // (Generate) argmax continuation of the prompt
}

// Response is the judge's answer, one Result per prompt in order.
type Response struct {
	Results []Result `json:"results"`
	Vocab   int      `json:"vocab"` // V
}

// Dir returns tools/llamacpp under the module root (the folder holding
// go.mod, found upwards from the working directory).
func Dir() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("llamacpp: %w", err)
	}
	for d := wd; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return filepath.Join(d, "tools", "llamacpp"), nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("llamacpp: no go.mod above %s", wd)
		}
	}
}

// Available returns nil when the judge can run: node 20 or newer on PATH and
// node-llama-cpp Version installed under Dir(). Otherwise the error (wrapping
// ErrUnavailable) says what is missing and how to install it.
func Available() error { return available() }

var available = sync.OnceValue(func() error {
	dir, err := Dir()
	if err != nil {
		return fmt.Errorf("llamacpp: %w: no go.mod above the working directory", ErrUnavailable)
	}
	node, err := exec.LookPath("node")
	if err != nil {
		return fmt.Errorf("llamacpp: %w: node not on PATH (install Node.js 20 or newer)", ErrUnavailable)
	}
	out, err := exec.Command(node, "--version").Output()
	if err != nil {
		return fmt.Errorf("llamacpp: %w: node --version: %v", ErrUnavailable, err)
	}
	v := strings.TrimSpace(string(out))
	major, _, _ := strings.Cut(strings.TrimPrefix(v, "v"), ".")
	if n, err := strconv.Atoi(major); err != nil || n < 20 {
		return fmt.Errorf("llamacpp: %w: node %s is too old: node-llama-cpp needs 20 or newer", ErrUnavailable, v)
	}
	b, err := os.ReadFile(filepath.Join(dir, "node_modules", "node-llama-cpp", "package.json"))
	if err != nil {
		return fmt.Errorf("llamacpp: %w: node-llama-cpp not installed: run `npm install --prefix tools/llamacpp --ignore-scripts` (or .ci/run) (%v)", ErrUnavailable, err)
	}
	var pkg struct{ Version string }
	if err := json.Unmarshal(b, &pkg); err != nil || pkg.Version != Version {
		return fmt.Errorf("llamacpp: %w: node-llama-cpp %q installed, want %s: run `npm install --prefix tools/llamacpp --ignore-scripts` (or .ci/run)", ErrUnavailable, pkg.Version, Version)
	}
	return nil
})

// Run asks llama.cpp for req. Relative paths in req are taken from the
// working directory.
func Run(ctx context.Context, req Request) (*Response, error) {
	var resp Response
	if err := call(ctx, "judge.mjs", req, &resp, &req.Model, &req.LoRA); err != nil {
		return nil, err
	}
	if len(resp.Results) != len(req.Prompts) {
		return nil, fmt.Errorf("llamacpp: %d results for %d prompts", len(resp.Results), len(req.Prompts))
	}
	return &resp, nil
}

// call makes paths absolute (they are taken from the working directory),
// then runs script with req and decodes its answer into resp.
func call(ctx context.Context, script string, req, resp any, paths ...*string) error {
	if err := Available(); err != nil {
		return err
	}
	dir, err := Dir()
	if err != nil {
		return err
	}
	for _, p := range paths {
		if *p != "" {
			if *p, err = filepath.Abs(*p); err != nil {
				return fmt.Errorf("llamacpp: %w", err)
			}
		}
	}
	in, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("llamacpp: %w", err)
	}
	return runScript(ctx, dir, script, in, resp)
}

// runScript runs one of tools/llamacpp's scripts with the request in and
// decodes its JSON answer into out.
func runScript(ctx context.Context, dir, script string, in []byte, out any) error {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "node", script)
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(in)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			return fmt.Errorf("llamacpp: %s (%w)", msg, err)
		}
		return fmt.Errorf("llamacpp: %s: %w", script, err)
	}
	if err := json.Unmarshal(stdout.Bytes(), out); err != nil {
		return fmt.Errorf("llamacpp: %s answer: %w", script, err)
	}
	return nil
}

// VocabRequest asks llama.cpp's tokenizer (tools/llamacpp/vocab.mjs; the
// model is loaded vocabulary-only).
type VocabRequest struct {
	Model   string   `json:"model"`   // GGUF path; a vocab-only GGUF is enough
	Texts   []string `json:"texts"`   // tokenized without BOS
	Special bool     `json:"special"` // parse special-token text (llama.cpp's parse_special)
	EOG     bool     `json:"eog"`     // list the end-of-generation ids
}

// VocabResponse is the tokenizer judge's answer.
type VocabResponse struct {
	Tokens [][]int `json:"tokens"` // one per text
	EOG    []int   `json:"eog"`    // ascending; nil unless asked
	Vocab  int     `json:"vocab"`
}

// Vocab asks llama.cpp to tokenize req.Texts and, when asked, for its
// end-of-generation set.
func Vocab(ctx context.Context, req VocabRequest) (*VocabResponse, error) {
	if req.Texts == nil {
		req.Texts = []string{}
	}
	var resp VocabResponse
	if err := call(ctx, "vocab.mjs", req, &resp, &req.Model); err != nil {
		return nil, err
	}
	if len(resp.Tokens) != len(req.Texts) {
		return nil, fmt.Errorf("llamacpp: %d tokenizations for %d texts", len(resp.Tokens), len(req.Texts))
	}
	return &resp, nil
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
		t.Fatalf("%v (CI=true: the llama.cpp judge is required)", err)
	}
	t.Skip(err)
}

// ChatMessage is one turn of a conversation for the chat-prompt judge.
type ChatMessage struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// ChatPromptRequest asks for llama.cpp's chat prompt for each conversation,
// built as llama.cpp's server builds it (tools/llamacpp/chatprompt.mjs).
type ChatPromptRequest struct {
	Model         string          `json:"model"`
	Conversations [][]ChatMessage `json:"conversations"`
	Thinking      *bool           `json:"thinking,omitempty"` // enable_thinking; nil leaves it undefined (llama.cpp's server passes true by default)
}

// ChatPromptResponse is the chat-prompt judge's answer.
type ChatPromptResponse struct {
	Tokens [][]int  `json:"tokens"` // the prompt before the next reply as llama.cpp's server tokenizes it
	Texts  []string `json:"texts"`  // the rendered prompt (a leading BOS text dropped when BOS is added)
}

// ChatPrompt asks for the prompt llama.cpp's server evaluates before the
// model's next reply in each conversation.
func ChatPrompt(ctx context.Context, req ChatPromptRequest) (*ChatPromptResponse, error) {
	var resp ChatPromptResponse
	if err := call(ctx, "chatprompt.mjs", req, &resp, &req.Model); err != nil {
		return nil, err
	}
	if len(resp.Tokens) != len(req.Conversations) {
		return nil, fmt.Errorf("llamacpp: %d prompts for %d conversations", len(resp.Tokens), len(req.Conversations))
	}
	return &resp, nil
}
