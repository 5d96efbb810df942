//go:build unix

package fsx

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// fifo makes a named pipe at path, or skips where there are none.
func fifo(t *testing.T, path string) {
	t.Helper()
	if err := syscall.Mkfifo(path, 0o644); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
}

// promptly runs open and fails the test if it has not returned within a
// few seconds; a reader blocked in open(2) on path (a FIFO) is then let go
// by opening the pipe's other end.
func promptly(t *testing.T, fifoPath string, open func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- open() }()
	select {
	case err := <-done:
		return err
	case <-time.After(5 * time.Second):
		if w, err := os.OpenFile(fifoPath, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			w.Close()
		}
		<-done
		t.Fatal("open blocked on a named pipe")
		return nil
	}
}

// Open and ReadFile refuse a named pipe at once, naming it.
func TestOpenRefusesFIFO(t *testing.T) {
	p := filepath.Join(t.TempDir(), "pipe")
	fifo(t, p)
	for name, open := range map[string]func() error{
		"Open":     func() error { f, err := Open(p); f.Close(); return err },
		"ReadFile": func() error { _, err := ReadFile(p); return err },
	} {
		err := promptly(t, p, open)
		if !errors.Is(err, ErrNotRegular) || err.Error() != "open "+p+": not a regular file: it is a named pipe" {
			t.Errorf("%s of a named pipe: %v", name, err)
		}
	}
}

// The file Open checks is the file it opens: a path swapped to a named
// pipe between a check and an open (a symbolic link retargeted, here two
// thousand times while Open runs) never blocks it. Checking the path with
// stat before opening it, the open blocked once the swap fell between the two.
func TestOpenCannotBeSwappedToFIFO(t *testing.T) {
	dir := t.TempDir()
	pipe, reg, link := filepath.Join(dir, "pipe"), filepath.Join(dir, "reg"), filepath.Join(dir, "link")
	fifo(t, pipe)
	write(t, reg, "data")
	if err := os.Symlink(reg, link); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	swapped := make(chan struct{})
	go func() {
		defer close(swapped)
		tmp := filepath.Join(dir, "link.new")
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			target := reg
			if i%2 == 0 {
				target = pipe
			}
			os.Remove(tmp)
			if os.Symlink(target, tmp) == nil {
				os.Rename(tmp, link)
			}
		}
	}()
	defer func() { close(stop); <-swapped }()
	var ok, refused int
	for range 2000 {
		err := promptly(t, pipe, func() error {
			f, err := Open(link)
			if err != nil {
				return err
			}
			defer f.Close()
			if b, err := io.ReadAll(f); err != nil || string(b) != "data" {
				t.Errorf("reading the regular file: %q, %v", b, err)
			}
			return nil
		})
		switch {
		case err == nil:
			ok++
		case errors.Is(err, ErrNotRegular):
			refused++
		default:
			t.Fatalf("open: %v", err)
		}
	}
	t.Logf("%d opens of the regular file, %d refusals of the pipe", ok, refused)
}

// ReadFile reads a file whole, and no more than the size it had when
// opened: a file that grows while it is read is refused, not read whole.
func TestReadFileBoundedBySize(t *testing.T) {
	p := filepath.Join(t.TempDir(), "adapter.gguf")
	if err := os.WriteFile(p, []byte("0123456789"), 0o644); err != nil {
		t.Fatal(err)
	}
	b, err := ReadFile(p)
	if err != nil || string(b) != "0123456789" {
		t.Fatalf("got %q, %v", b, err)
	}
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := ReadFile(p); err != nil || len(b) != 0 {
		t.Fatalf("empty file: %q, %v", b, err)
	}
	// A file that grows between the size read and the data: a /proc file
	// reports size 0 and holds more.
	if _, err := os.Stat("/proc/self/status"); err == nil {
		if _, err := ReadFile("/proc/self/status"); !errors.Is(err, ErrChanged) {
			t.Fatalf("a file bigger than its size at open: %v, want ErrChanged", err)
		}
	}
}
