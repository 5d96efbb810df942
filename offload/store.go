package offload

import (
	"fmt"
	"github.com/qtune/qtune/internal/fsx"
	"os"
	"unsafe"

	"golang.org/x/exp/mmap"
)

// Mapped is one memory-mapped, read-only file.
type Mapped struct {
	Path string
	r    *mmap.ReaderAt
	data []byte
}

// Bytes returns the whole mapped file. It must not be written: the mapping is
// read-only and a write faults.
func (m *Mapped) Bytes() []byte { return m.data }

// Close unmaps the file; views taken from Bytes become invalid.
func (m *Mapped) Close() error {
	if m.r == nil {
		return nil
	}
	err := m.r.Close()
	m.r, m.data = nil, nil
	return err
}

// Map memory-maps path read-only. The file is opened first (fsx.Open: a
// regular file, checked on the opened file, never blocking on a named
// pipe), and the mapping is made of that open file: golang.org/x/exp/mmap
// opens by name, so it is given /proc/self/fd/N, which names the file
// already opened, not whatever the path names by then. Where /proc is not
// there the path is checked to still be the same file just before it is
// opened again (a window remains there).
func Map(path string) (*Mapped, error) {
	f, err := fsx.Open(path)
	if err != nil {
		return nil, fmt.Errorf("offload: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("offload: %w", err)
	}
	if afterOpen != nil {
		afterOpen()
	}
	name := path
	if p := fmt.Sprintf("/proc/self/fd/%d", f.Fd()); sameFile(p, st) {
		name = p
	} else if !sameFile(path, st) { // before the open below can block on what replaced it
		return nil, fmt.Errorf("offload: %s: replaced while it was being opened", path)
	}
	r, err := mmap.Open(name)
	if err != nil {
		return nil, fmt.Errorf("offload: %w", err)
	}
	if int64(r.Len()) != st.Size() {
		r.Close()
		return nil, fmt.Errorf("offload: %s: changed size while it was being mapped (%d bytes, then %d)", path, st.Size(), r.Len())
	}
	data := *(*[]byte)(unsafe.Pointer(r))
	if len(data) != r.Len() || (len(data) > 0 && (data[0] != r.At(0) || data[len(data)-1] != r.At(len(data)-1))) {
		r.Close()
		return nil, fmt.Errorf("offload: %s: unexpected golang.org/x/exp/mmap layout; cannot view mapped bytes", path)
	}
	return &Mapped{Path: path, r: r, data: data}, nil
}

// afterOpen, in tests, runs between Map's open and its mapping.
var afterOpen func()

// sameFile reports whether name is now the file st describes.
func sameFile(name string, st os.FileInfo) bool {
	s, err := os.Stat(name)
	return err == nil && os.SameFile(s, st)
}

// Store owns every file mapped for one model and unmaps them together.
type Store struct {
	files []*Mapped
}

// Map maps path and keeps it until Close.
func (s *Store) Map(path string) (*Mapped, error) {
	m, err := Map(path)
	if err != nil {
		return nil, err
	}
	s.files = append(s.files, m)
	return m, nil
}

// find returns the mapping holding b and b's offset in it (false for
// memory no mapping of the store holds, which a release must not touch).
func (s *Store) find(b []byte) (data []byte, off int, ok bool) {
	if s == nil || len(b) == 0 {
		return nil, 0, false
	}
	p := uintptr(unsafe.Pointer(&b[0]))
	for _, f := range s.files {
		if len(f.data) == 0 {
			continue
		}
		lo := uintptr(unsafe.Pointer(&f.data[0]))
		if p >= lo && p-lo <= uintptr(len(f.data)) && uintptr(len(b)) <= uintptr(len(f.data))-(p-lo) {
			return f.data, int(p - lo), true
		}
	}
	return nil, 0, false
}

// ReleaseAround is Release of b and of up to margin bytes either side of it
// in the mapping that holds it: the kernel maps pages around each fault
// (behind it too, and across tensors), which a release of b alone would
// leave resident. Memory no mapping of the store holds is left.
func (s *Store) ReleaseAround(b []byte, margin int) {
	data, off, ok := s.find(b)
	if !ok {
		return
	}
	Release(data[max(0, off-margin):min(len(data), off+len(b)+margin)])
}

// Close unmaps every file.
func (s *Store) Close() error {
	var first error
	for _, f := range s.files {
		if err := f.Close(); err != nil && first == nil {
			first = err
		}
	}
	s.files = nil
	return first
}

// pageSize is the granularity of residency control.
var pageSize = uintptr(os.Getpagesize())

// pages widens b to the whole pages it lies on.
func pages(b []byte) []byte {
	p := unsafe.Pointer(&b[0])
	off := uintptr(p) & (pageSize - 1)
	n := (off + uintptr(len(b)) + pageSize - 1) &^ (pageSize - 1)
	return unsafe.Slice((*byte)(unsafe.Add(p, -int(off))), n)
}

// Release drops the pages of b (a view into a mapping) from this process's
// resident set: the next access faults them back in from the page cache (or
// the file). The range is widened to whole pages, so neighbouring views may
// be dropped too; that costs a refault, never correctness. Where the system
// offers no such call, Release does nothing.
func Release(b []byte) {
	if len(b) > 0 {
		madvise(pages(b), adviceDontNeed)
	}
}

// Prefetch asks the system to start reading b's pages into the page cache
// ahead of use, without mapping them into this process yet.
func Prefetch(b []byte) {
	if len(b) > 0 {
		madvise(pages(b), adviceWillNeed)
	}
}
