//go:build linux || darwin || freebsd

package offload

import "golang.org/x/sys/unix"

const (
	adviceDontNeed = unix.MADV_DONTNEED
	adviceWillNeed = unix.MADV_WILLNEED
)

func madvise(b []byte, advice int) { _ = unix.Madvise(b, advice) }
