package main

import (
	"encoding/json"
	"fmt"
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
		// An index that cannot be read must not be taken for an absent one
		// (the folder loaded as if unsharded).
		"model.safetensors.index.json": func(t *testing.T) []string {
			return []string{"generate", "--model", hf(t, "model.safetensors.index.json"), "--prompt", "Hi"}
		},
		"tokenizer.bin": func(t *testing.T) []string {
			dir := t.TempDir()
			copyFile(t, shared.Path(t, "assets", "models", "llama2c", "stories260K.bin"), filepath.Join(dir, "stories260K.bin"))
			fifo(t, filepath.Join(dir, "tokenizer.bin"))
			return []string{"generate", "--model", filepath.Join(dir, "stories260K.bin"), "--prompt", "Hi"}
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

// JSON and text inputs may start with a UTF-8 byte order mark (Windows
// editors write one): each used to be rejected as invalid JSON.
func TestByteOrderMarkAccepted(t *testing.T) {
	bom := func(t *testing.T, path string) {
		t.Helper()
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, append([]byte("\ufeff"), b...), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	fam, _ := synth.FamilyByName("llama3")
	dir := t.TempDir()
	if err := fam.WriteHF(dir, 1); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(dir)
	n := 0
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".json") {
			bom(t, filepath.Join(dir, e.Name()))
			n++
		}
	}
	if n < 2 {
		t.Fatalf("%d JSON files in the HF folder", n)
	}
	if code, _, errs := runCLI(t, "generate", "--model", dir, "--prompt", "Hi", "-n", "2", "--temp", "0"); code != 0 {
		t.Errorf("HF folder with BOMs: exit %d %s", code, errs)
	}
	data := t.TempDir()
	os.WriteFile(filepath.Join(data, "train.jsonl"), []byte("\ufeff"+`{"text": "Once upon a time there was a cat who liked the sun."}`+"\n"), 0o644)
	cfg := filepath.Join(t.TempDir(), "c.json")
	os.WriteFile(cfg, []byte("\ufeff"+`{"iters": 1, "batch_size": 1, "max_seq_length": 16, "steps_per_eval": 0}`), 0o644)
	if code, _, errs := runCLI(t, "train", "--config", cfg, "--model", stories(t), "--data", data, "--adapter-path", t.TempDir()); code != 0 {
		t.Errorf("JSONL and --config with BOMs: exit %d %s", code, errs)
	}
	msgs := filepath.Join(t.TempDir(), "m.json")
	os.WriteFile(msgs, []byte("\ufeff"+`[{"role": "user", "content": "Hi"}]`), 0o644)
	if code, _, errs := runCLI(t, "generate", "--model", stories(t), "--chat", "--messages", msgs, "-n", "2", "--temp", "0"); code != 0 {
		t.Errorf("--messages with a BOM: exit %d %s", code, errs)
	}
}

// An HF folder whose config.json has fewer layers than its weights is an
// error naming a tensor it does not explain (it loaded the first layers and
// ignored the rest).
func TestHFConfigLayerMismatch(t *testing.T) {
	fam, _ := synth.FamilyByName("llama")
	dir := t.TempDir()
	if err := fam.WriteHF(dir, 1); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "config.json")
	b, _ := os.ReadFile(p)
	var cfg map[string]any
	if err := json.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	layers := int(cfg["num_hidden_layers"].(float64))
	cfg["num_hidden_layers"] = layers - 1
	b, _ = json.Marshal(cfg)
	os.WriteFile(p, b, 0o644)
	code, _, errs := runCLI(t, "generate", "--model", dir, "--prompt", "Hi", "-n", "1")
	if code == 0 || !strings.Contains(errs, fmt.Sprintf("layers.%d.", layers-1)) || !strings.Contains(errs, "num_hidden_layers") {
		t.Errorf("exit %d: %s", code, errs)
	}
}
