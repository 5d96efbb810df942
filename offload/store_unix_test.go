//go:build unix

package offload

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// A file replaced by a named pipe between Map's open and its mapping is
// still the file mapped (the open file, not the path, is what is mapped),
// and Map does not block on the pipe.
func TestMapMapsTheOpenedFile(t *testing.T) {
	dir := t.TempDir()
	p, fifo := filepath.Join(dir, "model.gguf"), filepath.Join(dir, "fifo")
	want := []byte("the weights that were opened")
	if err := os.WriteFile(p, want, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Skipf("no named pipes here: %v", err)
	}
	afterOpen = func() {
		if err := os.Rename(fifo, p); err != nil {
			t.Error(err)
		}
	}
	defer func() { afterOpen = nil }()
	done := make(chan struct{})
	var m *Mapped
	var err error
	go func() { m, err = Map(p); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Map blocked on the named pipe that replaced the file")
	}
	if _, serr := os.Stat("/proc/self/fd"); serr != nil {
		if err == nil {
			t.Fatal("without /proc, a file replaced by a pipe was mapped")
		}
		return // refused by name: as good, where /proc is not there
	}
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if string(m.Bytes()) != string(want) {
		t.Fatalf("mapped %q, want the opened file's %q", m.Bytes(), want)
	}
}
