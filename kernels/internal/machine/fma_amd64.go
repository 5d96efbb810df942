//go:build amd64 && !noasm

package machine

import "golang.org/x/sys/cpu"

//go:noescape
func fmaLoopAVX512(n int)

//go:noescape
func fmaLoopAVX2(n int)

func fmaLoop() (func(int), float64, string) {
	switch {
	case cpu.X86.HasAVX512F:
		return fmaLoopAVX512, 24 * 16 * 2, "avx512"
	case cpu.X86.HasAVX2 && cpu.X86.HasFMA:
		return fmaLoopAVX2, 12 * 8 * 2, "avx2"
	}
	return nil, 0, ""
}

//go:noescape
func readLoopAVX2(p *byte, n int) uint64

func readLoop() func([]byte) uint64 {
	if !cpu.X86.HasAVX2 {
		return nil
	}
	return func(b []byte) uint64 {
		n := len(b) &^ 127
		if n == 0 {
			return 0
		}
		return readLoopAVX2(&b[0], n)
	}
}
