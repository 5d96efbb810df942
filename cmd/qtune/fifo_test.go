package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qtune/qtune/internal/shared"
	"github.com/qtune/qtune/internal/synth"
)

// An input that is a named pipe (or any non-regular file) is refused with
// a line naming it, at once: opening one for reading waits for a writer, so
// each of these used to hang with no message.
func TestNamedPipeInputsRefused(t *testing.T) {
	fifo := func(t *testing.T, path string) {
		t.Helper()
		os.Remove(path)
		if err := syscall.Mkfifo(path, 0o644); err != nil {
			t.Skipf("mkfifo: %v", err)
		}
	}
	copyFile := func(t *testing.T, from, to string) {
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(to, b, 0o644)
	}
	fam, _ := synth.FamilyByName("llama")
	hf := func(t *testing.T, replace string) string {
		dir := t.TempDir()
		if err := fam.WriteHF(dir, 1); err != nil {
			t.Fatal(err)
		}
		fifo(t, filepath.Join(dir, replace))
		return dir
	}
	data := func(t *testing.T) string {
		dir := t.TempDir()
		copyFile(t, shared.Path(t, "assets", "data", "tinyshakespeare", "train.jsonl"), filepath.Join(dir, "train.jsonl"))
		return dir
	}
	cases := map[string]func(t *testing.T) []string{
		"model file": func(t *testing.T) []string {
			p := filepath.Join(t.TempDir(), "m.gguf")
			fifo(t, p)
			return []string{"generate", "--model", p, "--prompt", "Hi"}
		},
		"config.json": func(t *testing.T) []string {
			return []string{"generate", "--model", hf(t, "config.json"), "--prompt", "Hi"}
		},
		"model.safetensors": func(t *testing.T) []string {
			return []string{"generate", "--model", hf(t, "model.safetensors"), "--prompt", "Hi"}
		},
		"tokenizer.json": func(t *testing.T) []string {
			return []string{"generate", "--model", hf(t, "tokenizer.json"), "--prompt", "Hi"}
		},
		"train.jsonl": func(t *testing.T) []string {
			dir := t.TempDir()
			fifo(t, filepath.Join(dir, "train.jsonl"))
			return []string{"train", "--model", stories(t), "--data", dir, "--iters", "1", "--adapter-path", t.TempDir()}
		},
		"training_state.qtck": func(t *testing.T) []string {
			ad := t.TempDir()
			fifo(t, filepath.Join(ad, "training_state.qtck"))
			return []string{"train", "--model", stories(t), "--data", data(t), "--iters", "1", "--resume", "--adapter-path", ad}
		},
		"--config": func(t *testing.T) []string {
			p := filepath.Join(t.TempDir(), "c.yaml")
			fifo(t, p)
			return []string{"train", "--config", p}
		},
		"--messages": func(t *testing.T) []string {
			p := filepath.Join(t.TempDir(), "m.json")
			fifo(t, p)
			return []string{"generate", "--model", stories(t), "--chat", "--messages", p}
		},
		"--chat-template": func(t *testing.T) []string {
			p := filepath.Join(t.TempDir(), "t.jinja")
			fifo(t, p)
			return []string{"generate", "--model", stories(t), "--chat", "--chat-template", p, "--prompt", "Hi"}
		},
		"--adapter": func(t *testing.T) []string {
			p := filepath.Join(t.TempDir(), "a.gguf")
			fifo(t, p)
			return []string{"generate", "--model", stories(t), "--adapter", p, "--prompt", "Hi"}
		},
	}
	for name, mk := range cases {
		t.Run(name, func(t *testing.T) {
			args := mk(t)
			type res struct {
				code int
				errs string
			}
			done := make(chan res, 1)
			go func() {
				code, _, errs := runCLI(t, args...)
				done <- res{code, errs}
			}()
			select {
			case r := <-done:
				if r.code == 0 || !strings.Contains(r.errs, "named pipe") {
					t.Errorf("exit %d: %q", r.code, r.errs)
				}
			case <-time.After(20 * time.Second):
				t.Fatalf("hangs on a named pipe: %v", args)
			}
		})
	}
}
