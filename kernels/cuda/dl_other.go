//go:build !linux || android

package cuda

import (
	"errors"
	"runtime"
)

// No CUDA backend on this platform (purego's loader is not available to
// a cgo-free build on Android, and CUDA ships no Darwin driver): every
// load fails with ErrNoCUDA and the CPU path runs.

var errPlatform = errors.New("no CUDA on " + runtime.GOOS + "/" + runtime.GOARCH + " in this build")

func dlopen(string) (uintptr, error) { return 0, errPlatform }
func dlsym(uintptr, string) error    { return errPlatform }
func register(any, uintptr, string)  {}
func mapArena(n int) ([]byte, error) { return make([]byte, n), nil }
func unmapArena([]byte)              {}
func threadID() int                  { return -1 }
