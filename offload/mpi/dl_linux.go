//go:build linux && !android

package mpi

import "github.com/ebitengine/purego"

// The dynamic loader (purego, no cgo). MPI is loaded on Linux; elsewhere
// (dl_other.go) Open fails with ErrNoMPI.

func dlopen(path string) (uintptr, error) {
	return purego.Dlopen(path, purego.RTLD_NOW|purego.RTLD_GLOBAL)
}

func dlsym(h uintptr, name string) (uintptr, error) { return purego.Dlsym(h, name) }

func register(fptr any, h uintptr, name string) { purego.RegisterLibFunc(fptr, h, name) }
