package fsx

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func write(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestSaveDirKeepsTheRest(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "out")
	// A first save creates the folder.
	if err := SaveDir(dir, func(s string) error { write(t, filepath.Join(s, "a"), "a1"); return nil }); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(dir, "keep.txt"), "mine")
	os.MkdirAll(filepath.Join(dir, "cache", "tokens"), 0o755)
	write(t, filepath.Join(dir, "cache", "tokens", "x"), "cached")
	os.Symlink("keep.txt", filepath.Join(dir, "link"))
	before, _ := os.Stat(filepath.Join(dir, "cache", "tokens", "x"))
	open, err := os.Open(filepath.Join(dir, "cache", "tokens", "x")) // a run's open token file
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	if err := SaveDir(dir, func(s string) error {
		write(t, filepath.Join(s, "a"), "a2")
		write(t, filepath.Join(s, "b"), "b2")
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if read(t, filepath.Join(dir, "a")) != "a2" || read(t, filepath.Join(dir, "b")) != "b2" || read(t, filepath.Join(dir, "keep.txt")) != "mine" ||
		read(t, filepath.Join(dir, "link")) != "mine" || read(t, filepath.Join(dir, "cache", "tokens", "x")) != "cached" {
		t.Fatal("contents after the save")
	}
	after, _ := os.Stat(filepath.Join(dir, "cache", "tokens", "x"))
	if !os.SameFile(before, after) {
		t.Error("a kept file was copied, not linked")
	}
	if _, err := os.Stat(dir + stageSuffix); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stage left behind: %v", err)
	}
	// A failing save changes nothing.
	boom := errors.New("boom")
	if err := SaveDir(dir, func(s string) error { write(t, filepath.Join(s, "a"), "a3"); return boom }); !errors.Is(err, boom) {
		t.Fatal(err)
	}
	if read(t, filepath.Join(dir, "a")) != "a2" {
		t.Error("a failed save replaced a file")
	}
}

func TestWriteFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := WriteFile(p, func(w io.Writer) error { _, err := io.WriteString(w, "one"); return err }); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	if err := WriteFile(p, func(w io.Writer) error { io.WriteString(w, "tw"); return boom }); !errors.Is(err, boom) {
		t.Fatal(err)
	}
	if read(t, p) != "one" {
		t.Error("a failed write changed the file")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("temporary files left: %v", ents)
	}
}

func TestLock(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ad")
	unlock, err := Lock(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Lock(dir); err == nil || !strings.Contains(err.Error(), "in use by another qtune run (process "+strconv.Itoa(os.Getpid())) {
		t.Fatalf("second lock: %v", err)
	}
	unlock()
	unlock2, err := Lock(dir)
	if err != nil {
		t.Fatalf("after unlock: %v", err)
	}
	unlock2()
}

// TestSaveChild saves (a, b) = (i, i) for i = 1, 2, ... until killed.
func TestSaveChild(t *testing.T) {
	dir := os.Getenv("FSX_CHILD_DIR")
	if dir == "" {
		t.Skip("run by TestSaveDirSurvivesKill")
	}
	for i := 1; ; i++ {
		v := strconv.Itoa(i)
		big := strings.Repeat(v+"\n", 20000)
		if err := SaveDir(dir, func(s string) error {
			if err := os.WriteFile(filepath.Join(s, "a"), []byte(big), 0o644); err != nil {
				return err
			}
			return os.WriteFile(filepath.Join(s, "b"), []byte(v), 0o644)
		}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(3)
		}
	}
}

// kill -9 at any moment of a save leaves the two files of one save, never
// one from each (and a folder a later save can use).
func TestSaveDirSurvivesKill(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	dir := filepath.Join(t.TempDir(), "ad")
	for k := 0; k < 12; k++ {
		cmd := exec.Command(os.Args[0], "-test.run=^TestSaveChild$")
		cmd.Env = append(os.Environ(), "FSX_CHILD_DIR="+dir)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(20+k*13) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		a, errA := os.ReadFile(filepath.Join(dir, "a"))
		b, errB := os.ReadFile(filepath.Join(dir, "b"))
		if errors.Is(errA, os.ErrNotExist) && errors.Is(errB, os.ErrNotExist) {
			continue // killed before the first save
		}
		if errA != nil || errB != nil {
			t.Fatalf("kill %d: %v %v", k, errA, errB)
		}
		first, _, _ := strings.Cut(string(a), "\n")
		if first != string(b) || len(a) != 20000*(len(b)+1) {
			t.Fatalf("kill %d: a from save %s (%d bytes), b from save %s", k, first, len(a), b)
		}
	}
}
