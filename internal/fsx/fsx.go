package fsx

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// WriteFile writes path through write, atomically and durably.
func WriteFile(path string, write func(w io.Writer) error) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			os.Remove(tmp)
		}
	}()
	bw := bufio.NewWriterSize(f, 256<<10)
	err = write(bw)
	if err == nil {
		err = bw.Flush()
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, 0o644)
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err == nil {
		err = SyncDir(dir)
	}
	return err
}

// stageSuffix names the sibling folder a save is staged in.
const stageSuffix = ".qtune-saving"

// SaveDir writes the files of one save into dir as a unit: write gets a
// fresh, empty folder to write them into; dir's other entries are kept.
func SaveDir(dir string, write func(stage string) error) error {
	dir = filepath.Clean(dir)
	stage := dir + stageSuffix
	if err := os.RemoveAll(stage); err != nil { // what a crash left
		return err
	}
	if err := os.MkdirAll(stage, 0o755); err != nil {
		return err
	}
	fail := func(err error) error {
		os.RemoveAll(stage)
		return err
	}
	if err := write(stage); err != nil {
		return fail(err)
	}
	if err := syncTree(stage); err != nil {
		return fail(err)
	}
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		if err := os.Rename(stage, dir); err != nil {
			return fail(err)
		}
		return SyncDir(filepath.Dir(dir))
	}
	// Everything of dir that this save does not replace comes along.
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fail(err)
	}
	for _, e := range ents {
		dst := filepath.Join(stage, e.Name())
		if _, err := os.Lstat(dst); err == nil {
			continue // replaced by this save
		}
		if err := linkTree(filepath.Join(dir, e.Name()), dst); err != nil {
			return fail(fmt.Errorf("keeping %s: %w", e.Name(), err))
		}
	}
	if err := SyncDir(stage); err != nil {
		return fail(err)
	}
	if err := exchange(stage, dir); err == nil {
		os.RemoveAll(stage) // the old folder, under the stage's name now
		return SyncDir(filepath.Dir(dir))
	} else if !errors.Is(err, errNoExchange) {
		return fail(err)
	}
	// No atomic exchange here: move the new files in one by one.
	for _, e := range mustReadDir(stage) {
		src, dst := filepath.Join(stage, e.Name()), filepath.Join(dir, e.Name())
		if same(src, dst) {
			continue
		}
		if err := os.RemoveAll(dst); err != nil {
			return fail(err)
		}
		if err := os.Rename(src, dst); err != nil {
			return fail(err)
		}
	}
	os.RemoveAll(stage)
	return SyncDir(dir)
}

var errNoExchange = errors.New("fsx: no atomic folder exchange on this system")

func mustReadDir(dir string) []os.DirEntry {
	ents, _ := os.ReadDir(dir)
	return ents
}

// same tells whether two paths name one file (a hard link kept).
func same(a, b string) bool {
	sa, err1 := os.Lstat(a)
	sb, err2 := os.Lstat(b)
	return err1 == nil && err2 == nil && os.SameFile(sa, sb)
}

// linkTree hard-links src (a file, or a folder recursively) at dst;
// symbolic links are copied as links.
func linkTree(src, dst string) error {
	st, err := os.Lstat(src)
	if err != nil {
		return err
	}
	switch {
	case st.Mode()&fs.ModeSymlink != 0:
		target, err := os.Readlink(src)
		if err != nil {
			return err
		}
		return os.Symlink(target, dst)
	case st.IsDir():
		if err := os.Mkdir(dst, st.Mode().Perm()); err != nil {
			return err
		}
		ents, err := os.ReadDir(src)
		if err != nil {
			return err
		}
		for _, e := range ents {
			if err := linkTree(filepath.Join(src, e.Name()), filepath.Join(dst, e.Name())); err != nil {
				return err
			}
		}
		return nil
	default:
		return os.Link(src, dst)
	}
}

// syncTree fsyncs every regular file and folder under dir.
func syncTree(dir string) error {
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type()&fs.ModeSymlink != 0 {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		err = f.Sync()
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		return err
	})
}

// SyncDir makes renames in dir durable.
func SyncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil && !dirSyncWorks { // Windows cannot fsync a folder
		return nil
	}
	return err
}

// ErrNotRegular marks an input that is not a regular file: reading a named
// pipe would wait for a writer forever, a device could be endless.
var ErrNotRegular = errors.New("not a regular file")

// CheckRegular refuses path unless it is a regular file (symbolic links
// followed), naming what it is instead. It checks the path, not a file that
// is then opened: to read a file, use Open or ReadFile, which check the
// file they opened.
func CheckRegular(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	return checkMode(path, st.Mode())
}

// checkMode refuses a mode that is not a regular file's.
func checkMode(path string, m fs.FileMode) error {
	if m.IsRegular() {
		return nil
	}
	kind := "a special file"
	switch {
	case m.IsDir():
		kind = "a folder"
	case m&fs.ModeNamedPipe != 0:
		kind = "a named pipe"
	case m&fs.ModeSocket != 0:
		kind = "a socket"
	case m&fs.ModeDevice != 0:
		kind = "a device"
	}
	return &fs.PathError{Op: "open", Path: path, Err: fmt.Errorf("%w: it is %s", ErrNotRegular, kind)}
}

// Open opens a regular file for reading, refusing anything else (see
// ErrNotRegular) without blocking: the file is opened non-blocking (a named
// pipe opens at once, where a plain open waits for a writer), the opened
// file is checked (fstat: a path swapped after a check cannot slip through),
// and only a regular file is kept, made blocking again.
func Open(path string) (*os.File, error) {
	return openRegular(path)
}

// ReadFile reads a regular file whole (Open, then its size from the opened
// file). It reads no more than that size: a file that grows while it is
// read is refused (ErrChanged), so a size checked before (against a memory
// budget) bounds what is read.
func ReadFile(path string) ([]byte, error) {
	f, err := Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	size := st.Size()
	if size < 0 || size >= 1<<62 {
		return nil, &fs.PathError{Op: "read", Path: path, Err: fmt.Errorf("%w: size %d", ErrChanged, size)}
	}
	b := make([]byte, size+1) // one byte more: room to see EOF, or growth
	n, err := io.ReadFull(f, b)
	switch {
	case err == io.ErrUnexpectedEOF || err == io.EOF:
		return b[:n], nil // the size, or less if it shrank
	case err != nil:
		return nil, err
	}
	return nil, &fs.PathError{Op: "read", Path: path, Err: fmt.Errorf("%w: it grew past its %d bytes while it was read", ErrChanged, size)}
}

// ErrChanged marks a file that changed size while it was being read.
var ErrChanged = errors.New("file changed while it was read")

// TrimBOM drops a leading UTF-8 byte order mark (editors on Windows write
// one at the start of JSON and text files; JSON parsers refuse it).
func TrimBOM(b []byte) []byte {
	return bytes.TrimPrefix(b, []byte("\ufeff"))
}
