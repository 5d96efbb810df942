//go:build unix

package budget

import "syscall"

// mapAnon maps n bytes of private anonymous memory: zero pages that become
// resident when first written and leave with unmap, outside the Go heap.
func mapAnon(n int) ([]byte, error) {
	return syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
}

func unmap(b []byte) { syscall.Munmap(b) }
