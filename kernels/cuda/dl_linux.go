//go:build linux && !android

package cuda

import (
	"syscall"

	"github.com/ebitengine/purego"
)

// The operating system's part: the dynamic loader (purego, no cgo) and
// anonymous mappings. CUDA's libraries exist for Linux here; elsewhere
// (dl_other.go) every load fails with ErrNoCUDA and the CPU path runs.

func dlopen(path string) (uintptr, error) {
	return purego.Dlopen(path, purego.RTLD_NOW|purego.RTLD_GLOBAL)
}

func dlsym(h uintptr, name string) error {
	_, err := purego.Dlsym(h, name)
	return err
}

func register(fptr any, h uintptr, name string) { purego.RegisterLibFunc(fptr, h, name) }

func mapArena(n int) ([]byte, error) {
	return syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
}

func unmapArena(b []byte) { syscall.Munmap(b) }

// threadID is the calling OS thread's id.
func threadID() int { return syscall.Gettid() }
