//go:build !linux || android

package mpi

import (
	"errors"
	"runtime"
)

// No MPI loader on this platform (purego's is not available to a cgo-free
// Android build; Windows has no dlopen): Open fails with ErrNoMPI.

var errPlatform = errors.New("no MPI loader on " + runtime.GOOS + "/" + runtime.GOARCH + " in this build")

func dlopen(string) (uintptr, error)         { return 0, errPlatform }
func dlsym(uintptr, string) (uintptr, error) { return 0, errPlatform }
func register(any, uintptr, string)          {}
