//go:build !(linux || darwin || freebsd)

package offload

import "os"

const (
	adviceDontNeed = 0
	adviceWillNeed = 0
)

func madvise(b []byte, advice int) {}

// Without mmap the scratch is plain memory: correct, but it stays resident.
func mapShared(f *os.File, size int) ([]byte, error) { return make([]byte, size), nil }

func unmap(b []byte) error { return nil }
