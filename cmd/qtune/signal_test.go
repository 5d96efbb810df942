package main

import (
	"bufio"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qtune/qtune/internal/shared"
	"github.com/qtune/qtune/internal/synth"
	"github.com/qtune/qtune/quant"
)

// TestSignalChild is the qtune process TestSignalSavesState signals (the
// test binary run again with the arguments in QTUNE_CHILD_ARGS).
func TestSignalChild(t *testing.T) {
	js := os.Getenv("QTUNE_CHILD_ARGS")
	if js == "" {
		t.Skip("run by TestSignalSavesState")
	}
	var args []string
	if err := json.Unmarshal([]byte(js), &args); err != nil {
		t.Fatal(err)
	}
	os.Exit(run(args, os.Stdout, os.Stderr))
}

// SIGTERM and SIGINT stop a training run with its state saved and a word on
// how to resume; resuming continues from the iteration it stopped at.
func TestSignalSavesState(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		dir := t.TempDir()
		args := []string{"train", "--model", stories(t), "--data", shared.Path(t, "assets", "data", "tinyshakespeare"),
			"--iters", "100000", "--batch-size", "1", "--max-seq-length", "16", "--steps-per-eval", "0",
			"--steps-per-report", "1", "--save-every", "0", "--adapter-path", dir, "--cache-dir", filepath.Join(dir, "cache")}
		js, _ := json.Marshal(args)
		cmd := exec.Command(os.Args[0], "-test.run=^TestSignalChild$")
		cmd.Env = append(os.Environ(), "QTUNE_CHILD_ARGS="+string(js))
		pr, pw := io.Pipe()
		cmd.Stdout, cmd.Stderr = pw, pw
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		var out strings.Builder
		sent := false
		done := make(chan error, 1)
		go func() { done <- cmd.Wait(); pw.Close() }()
		timer := time.AfterFunc(2*time.Minute, func() { cmd.Process.Kill() })
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			out.WriteString(sc.Text() + "\n")
			if !sent && strings.HasPrefix(sc.Text(), "Iter 3:") {
				cmd.Process.Signal(sig)
				sent = true
			}
		}
		err := <-done
		timer.Stop()
		if !sent || err == nil || !strings.Contains(out.String(), "--resume") {
			t.Fatalf("%v: sent %v, exit %v, output:\n%s", sig, sent, err, out.String())
		}
		if _, err := os.Stat(filepath.Join(dir, "training_state.qtck")); err != nil {
			t.Fatalf("%v: no state saved: %v", sig, err)
		}
		// Resume for a few more iterations than were saved.
		var saved int
		for _, l := range strings.Split(out.String(), "\n") {
			if i := strings.Index(l, "interrupted after iteration "); i >= 0 {
				saved = atoiPrefix(l[i+len("interrupted after iteration "):])
			}
		}
		if saved < 3 {
			t.Fatalf("%v: saved at iteration %d:\n%s", sig, saved, out.String())
		}
		args[6] = itoa(saved + 2)
		code, _, errs := runCLI(t, append(args, "--resume")...)
		if code != 0 || !strings.Contains(errs, "resumed from") {
			t.Fatalf("%v: resume: exit %d\n%s", sig, code, errs)
		}
	}
}

func atoiPrefix(s string) int {
	n := 0
	for _, c := range s {
		if c < '0' || c > '9' {
			break
		}
		n = 10*n + int(c-'0')
	}
	return n
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

// Without --max-mem, a run that would need more than the machine has (a
// 2^24-token context's KV cache: generate -n 1e9 grew until killed) is
// refused before it starts, with a message saying what to do.
func TestHugeContextRefusedWithoutBudget(t *testing.T) {
	p := filepath.Join(t.TempDir(), "long.gguf")
	c := synth.Config{Name: "long", Dim: 256, Hidden: 512, Layers: 8, Heads: 4, KVHeads: 4, Vocab: 512, Context: 1 << 24}
	if err := synth.Write(p, c, quant.Q8_0, 1); err != nil {
		t.Fatal(err)
	}
	// 8 layers · 2^24 positions · 256 · 2 (K, V) · 4 bytes = 256 GiB.
	code, _, errs := runCLI(t, "generate", "--model", p, "--prompt", "a", "-n", "1000000000", "--temp", "0")
	if code == 0 || !strings.Contains(errs, "available") || !strings.Contains(errs, "--max-mem") {
		t.Errorf("exit %d:\n%s", code, errs)
	}
	t.Log(lastLine(errs))
}
