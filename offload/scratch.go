package offload

import (
	"errors"
	"fmt"
	"os"
	"unsafe"
)

// Scratch is a file-backed, writable mapping for state that may leave memory
// between uses (the plan's "optimizer state on disk"): values written to it
// live in the page cache and the file, and Evict drops them from this
// process's resident set until they are touched again. The file is unlinked
// at creation, so nothing is left behind.
type Scratch struct {
	data []byte
	off  int
}

// ErrScratchFull is returned when an allocation does not fit.
var ErrScratchFull = errors.New("scratch file full")

// NewScratch creates a scratch of size bytes in dir.
func NewScratch(dir string, size int64) (*Scratch, error) {
	if size <= 0 || size > 1<<40 {
		return nil, fmt.Errorf("offload: scratch size %d out of range", size)
	}
	f, err := os.CreateTemp(dir, "qtune-scratch-*")
	if err != nil {
		return nil, fmt.Errorf("offload: %w", err)
	}
	defer f.Close()
	os.Remove(f.Name())
	if err := f.Truncate(size); err != nil {
		return nil, fmt.Errorf("offload: scratch: %w", err)
	}
	data, err := mapShared(f, int(size))
	if err != nil {
		return nil, fmt.Errorf("offload: scratch: %w", err)
	}
	return &Scratch{data: data}, nil
}

// Alloc carves n zeroed float32 values (64-byte aligned).
func (s *Scratch) Alloc(n int) ([]float32, error) {
	start := (s.off + 63) &^ 63
	end := start + 4*n
	if n < 0 || end > len(s.data) {
		return nil, fmt.Errorf("offload: %w: %d values past %d of %d bytes", ErrScratchFull, n, start, len(s.data))
	}
	s.off = end
	if n == 0 {
		return []float32{}, nil
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(&s.data[start])), n), nil
}

// Evict drops v's pages from the resident set; their values stay in the
// page cache and the file. Slices that are not wholly inside the scratch
// are ignored: dropping pages of ordinary memory would zero them.
func (s *Scratch) Evict(v []float32) {
	if len(v) == 0 || len(s.data) == 0 {
		return
	}
	lo := uintptr(unsafe.Pointer(&s.data[0]))
	hi := lo + uintptr(len(s.data))
	p := uintptr(unsafe.Pointer(&v[0]))
	if p < lo || p+4*uintptr(len(v)) > hi {
		return
	}
	// Only whole pages inside v: a neighbour's partial page stays resident.
	b := unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), 4*len(v))
	Release(b)
}

// Reset makes the whole scratch available again (earlier slices are reused).
func (s *Scratch) Reset() { s.off = 0 }

// Close unmaps the scratch; slices from it become invalid.
func (s *Scratch) Close() error {
	if s.data == nil {
		return nil
	}
	err := unmap(s.data)
	s.data = nil
	return err
}
