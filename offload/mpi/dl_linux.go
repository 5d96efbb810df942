//go:build linux && !android

package mpi

import (
	"syscall"

	"github.com/ebitengine/purego"
)

// The dynamic loader (purego, no cgo). MPI is loaded on Linux; elsewhere
// (dl_other.go) Open fails with ErrNoMPI.

func dlopen(path string) (uintptr, error) {
	return purego.Dlopen(path, purego.RTLD_NOW|purego.RTLD_GLOBAL)
}

func dlsym(h uintptr, name string) (uintptr, error) { return purego.Dlsym(h, name) }

func register(fptr any, h uintptr, name string) { purego.RegisterLibFunc(fptr, h, name) }

// mapBytes maps n bytes outside the Go heap; unmap returns them.
func mapBytes(n int) (b []byte, unmap func(), err error) {
	b, err = syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
	if err != nil {
		return nil, nil, err
	}
	return b, func() { syscall.Munmap(b) }, nil
}
