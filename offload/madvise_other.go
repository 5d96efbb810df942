//go:build !(linux || darwin || freebsd)

package offload

const (
	adviceDontNeed = 0
	adviceWillNeed = 0
)

func madvise(b []byte, advice int) {}
