// Package cudaemu builds qtune's CUDA emulator: one shared library that
// answers the calls kernels/cuda makes to libcuda, libcublas and libnvrtc
// by running them on the CPU (emu.cpp; the kernels are compiled with the
// host's C++ compiler over prelude.h, CUDA's device language on the CPU).
//
// Pointing qtune at it (Env) runs the GPU path — library loading, NVRTC's
// cache, placement and streaming, every kernel — on a machine without a
// GPU, so `make test` checks the GPU code on every change. It shows that
// the kernels compute what the CPU path computes and that the host code
// drives them correctly; it cannot show speed, the GPU's own rounding of
// expf/logf, or races between streams (the emulator runs every stream in
// order). Test tooling only: it is never linked into the qtune binary.
package cudaemu

import (
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

//go:embed src/emu.cpp
var emuSource string

//go:embed src/prelude.h
var preludeSource string

// Compiler is the C++ compiler the emulator is built with and builds the
// kernels with: $QTUNE_CUDAEMU_CXX, else g++.
func Compiler() string {
	if c := os.Getenv("QTUNE_CUDAEMU_CXX"); c != "" {
		return c
	}
	return "g++"
}

// Build compiles the emulator into dir, once per source: the library's
// path is dir/libqtune-cudaemu-<hash>.so.
func Build(dir string) (string, error) {
	cxx := Compiler()
	if _, err := exec.LookPath(cxx); err != nil {
		return "", fmt.Errorf("cudaemu: no C++ compiler (%s): %w", cxx, err)
	}
	h := sha256.Sum256([]byte(emuSource + "\x00" + preludeSource + "\x00" + cxx))
	lib := filepath.Join(dir, "libqtune-cudaemu-"+hex.EncodeToString(h[:8])+".so")
	if _, err := os.Stat(lib); err == nil {
		return lib, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	work, err := os.MkdirTemp(dir, "build-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(work)
	if strings.Contains(preludeSource, ")QTUNEPRELUDE\"") {
		return "", fmt.Errorf("cudaemu: prelude.h contains its own raw-string delimiter")
	}
	inc := "R\"QTUNEPRELUDE(" + preludeSource + ")QTUNEPRELUDE\"\n"
	if err := os.WriteFile(filepath.Join(work, "prelude.inc"), []byte(inc), 0o644); err != nil {
		return "", err
	}
	src := filepath.Join(work, "emu.cpp")
	if err := os.WriteFile(src, []byte(emuSource), 0o644); err != nil {
		return "", err
	}
	tmp := filepath.Join(work, "lib.so")
	build := fmt.Sprintf(`-DQTUNE_CUDAEMU_BUILD="%x"`, h[:8]) // kernels cached by an older emulator are not taken
	out, err := exec.Command(cxx, "-std=c++17", "-O2", "-fPIC", "-shared", "-Wall", "-Wno-unused-function", build, "-o", tmp, src, "-ldl", "-lpthread").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("cudaemu: %s: %v\n%s", cxx, err, out)
	}
	if err := os.Rename(tmp, lib); err != nil {
		return "", err
	}
	return lib, nil
}

// Env is the environment that points kernels/cuda at the emulator lib:
// the driver, cuBLAS and NVRTC are all that one file.
func Env(lib string) []string {
	return []string{"QTUNE_CUDA_DRIVER=" + lib, "QTUNE_CUBLAS=" + lib, "QTUNE_NVRTC=" + lib}
}
