package cuda

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
)

// childEnv marks a process started to compile kernels for its parent.
const childEnv = "QTUNE_NVRTC_CHILD"

// childCompiler, when set (CompileInChild), compiles a module instead of NVRTC
// in this process.
var childCompiler func(src, name string, opts []string) ([]byte, error)

// CompileInChild makes kernels compile in a child process running exe (a
// program that calls ServeCompile first thing in main) instead of in this
// one: NVRTC's library and its heap, about 170 MB at the peak for qtune's
// kernels, stay out of this process's memory, and so out of a --max-mem
// budget, and leave with the child. Only a compile (a kernel cache miss)
// starts one. An empty exe puts the compile back in this process.
func CompileInChild(exe string) {
	if exe == "" {
		childCompiler = nil
		return
	}
	childCompiler = func(src, name string, opts []string) ([]byte, error) {
		cmd := exec.Command(exe, append([]string{name}, opts...)...)
		cmd.Env = append(os.Environ(), childEnv+"=1")
		cmd.Stdin = strings.NewReader(src)
		var out, errOut bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		err := cmd.Run()
		if err == nil {
			return out.Bytes(), nil
		}
		var ce Error
		if json.Unmarshal(errOut.Bytes(), &ce) == nil && ce.Call != "" {
			return nil, &ce // NVRTC's own error, as in this process
		}
		return nil, fmt.Errorf("cuda: the kernel compiler (%s as a child process): %v: %s", exe, err, strings.TrimSpace(errOut.String()))
	}
}

// ServeCompile returns at once unless this process was started by
// CompileInChild: then it compiles the CUDA source on standard input with
// NVRTC (its name and options are the arguments), writes the image to
// standard output and exits; a failure goes to standard error (NVRTC's
// own as JSON) with exit code 1.
func ServeCompile() {
	if os.Getenv(childEnv) != "1" {
		return
	}
	os.Exit(serveCompile(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func serveCompile(args []string, in io.Reader, out, errOut io.Writer) int {
	fail := func(err error) int {
		var ce *Error
		if errors.As(err, &ce) {
			json.NewEncoder(errOut).Encode(ce)
		} else {
			fmt.Fprintln(errOut, err)
		}
		return 1
	}
	if len(args) < 1 {
		return fail(errors.New("cuda: the kernel compiler takes a name and NVRTC's options"))
	}
	src, err := io.ReadAll(io.LimitReader(in, 64<<20))
	if err != nil {
		return fail(err)
	}
	img, err := compileHere(string(src), args[0], args[1:])
	if err != nil {
		return fail(err)
	}
	if _, err := out.Write(img); err != nil {
		return fail(err)
	}
	return 0
}

// compileHere runs NVRTC on src in this process.
func compileHere(src, name string, opts []string) ([]byte, error) {
	nv, err := loadNVRTC()
	if err != nil {
		return nil, err
	}
	arena, err := mapArena(arenaBytes)
	if err != nil {
		return nil, err
	}
	defer unmapArena(arena)
	return nv.compileWith(arena, src, name, opts)
}
