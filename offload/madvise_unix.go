//go:build linux || darwin || freebsd

package offload

import (
	"os"

	"golang.org/x/sys/unix"
)

const (
	adviceDontNeed = unix.MADV_DONTNEED
	adviceWillNeed = unix.MADV_WILLNEED
)

func madvise(b []byte, advice int) { _ = unix.Madvise(b, advice) }

func mapShared(f *os.File, size int) ([]byte, error) {
	return unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
}

func unmap(b []byte) error { return unix.Munmap(b) }
