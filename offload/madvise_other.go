//go:build !(linux || darwin || freebsd)

package offload

const (
	adviceDontNeed = 0
	adviceWillNeed = 0
)

func madvise(addr, n uintptr, advice int) {}
