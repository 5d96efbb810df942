//go:build unix

package budget

import "syscall"

// MapAnon maps n bytes of private anonymous memory: zero pages that become
// resident when first written and leave with Unmap, outside the Go heap.
// The accountant's slabs, the kernels' scratch and MPI's warm-up buffer
// use it.
func MapAnon(n int) ([]byte, error) {
	return syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
}

// Unmap returns a MapAnon mapping (a heap slice is left to the collector).
func Unmap(b []byte) { syscall.Munmap(b) }
