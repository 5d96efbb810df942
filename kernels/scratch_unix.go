//go:build unix

package kernels

import "syscall"

// mapFloats maps c floats of private anonymous memory, outside the Go
// heap: zero pages, resident once written, gone with unmapFloats. Where the
// kernel refuses the mapping the block is heap memory (still counted).
func mapFloats(c int) []byte {
	b, err := syscall.Mmap(-1, 0, 4*c, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
	if err != nil {
		return make([]byte, 4*c)
	}
	return b
}

func unmapFloats(b []byte) { syscall.Munmap(b) } // a heap block: EINVAL, left to the collector
