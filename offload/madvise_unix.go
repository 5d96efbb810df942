//go:build linux || darwin || freebsd

package offload

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	adviceDontNeed = unix.MADV_DONTNEED
	adviceWillNeed = unix.MADV_WILLNEED
)

func madvise(addr, n uintptr, advice int) {
	b := unsafe.Slice((*byte)(unsafe.Pointer(addr)), n)
	_ = unix.Madvise(b, advice)
}
