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
	"sync"
)

// childEnv marks a process started to compile kernels for its parent.
const childEnv = "QTUNE_NVRTC_CHILD"

// childCompiler, when set (CompileInChild), runs NVRTC in child processes.
var childCompiler *child

// CompileInChild makes kernels compile in a child process running exe (a
// program that calls ServeCompile first thing in main) instead of in this
// one: NVRTC's library and its heap, about 170 MB at the peak for qtune's
// kernels, stay out of this process's memory, and so out of a --max-mem
// budget, and leave with the child. On a kernel cache hit a child only
// says NVRTC's version (the cache's key): this process never loads the
// library (13 MB resident once loaded, CUDA 11.8's). An empty exe puts
// NVRTC back in this process.
func CompileInChild(exe string) {
	if exe == "" {
		childCompiler = nil
		return
	}
	childCompiler = &child{exe: exe}
}

// child is NVRTC in child processes of exe; its version is asked once.
type child struct {
	exe  string
	once sync.Once
	id   nvrtcID
	err  error
}

// exitNoNVRTC is a child's exit code when there is no NVRTC library.
const exitNoNVRTC = 3

// run starts exe as the compiler child with args and src on its input.
func (c *child) run(src string, args ...string) ([]byte, error) {
	cmd := exec.Command(c.exe, args...)
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
	msg := strings.TrimSpace(errOut.String())
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == exitNoNVRTC {
		return nil, fmt.Errorf("%s: %w", strings.TrimSuffix(msg, ": "+ErrNoCUDA.Error()), ErrNoCUDA)
	}
	return nil, fmt.Errorf("cuda: the kernel compiler (%s as a child process): %v: %s", c.exe, err, msg)
}

func (c *child) version() (nvrtcID, error) {
	c.once.Do(func() {
		out, err := c.run("", "-version")
		if err != nil {
			c.err = err
			return
		}
		// "major minor path"
		if _, err := fmt.Sscanf(string(out), "%d %d", &c.id.Major, &c.id.Minor); err != nil {
			c.err = fmt.Errorf("cuda: the kernel compiler's version %q: %v", out, err)
			return
		}
		if fs := strings.SplitN(strings.TrimSpace(string(out)), " ", 3); len(fs) == 3 {
			c.id.Path = fs[2]
		}
	})
	return c.id, c.err
}

func (c *child) compile(src, name string, opts []string) ([]byte, error) {
	return c.run(src, append([]string{name}, opts...)...)
}

// ServeCompile returns at once unless this process was started by
// CompileInChild: then it does what its arguments ask and exits: with
// "-version", prints NVRTC's major and minor version and library path;
// otherwise compiles the CUDA source on standard input with NVRTC (its
// name and options are the arguments) and writes the image to standard
// output. A failure goes to standard error (NVRTC's own as JSON).
func ServeCompile() {
	if os.Getenv(childEnv) != "1" {
		return
	}
	os.Exit(serveCompile(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func serveCompile(args []string, in io.Reader, out, errOut io.Writer) int {
	fail := func(err error) int {
		var ce *Error
		switch {
		case errors.As(err, &ce):
			json.NewEncoder(errOut).Encode(ce)
		case errors.Is(err, ErrNoCUDA):
			fmt.Fprintln(errOut, err)
			return exitNoNVRTC
		default:
			fmt.Fprintln(errOut, err)
		}
		return 1
	}
	if len(args) < 1 {
		return fail(errors.New("cuda: the kernel compiler takes -version, or a name and NVRTC's options"))
	}
	nv, err := loadNVRTC()
	if err != nil {
		return fail(err)
	}
	if args[0] == "-version" {
		id := nv.id()
		fmt.Fprintf(out, "%d %d %s\n", id.Major, id.Minor, id.Path)
		return 0
	}
	src, err := io.ReadAll(io.LimitReader(in, 64<<20))
	if err != nil {
		return fail(err)
	}
	arena, err := mapArena(arenaBytes)
	if err != nil {
		return fail(err)
	}
	defer unmapArena(arena)
	img, err := nv.compileWith(arena, string(src), args[0], args[1:])
	if err != nil {
		return fail(err)
	}
	if _, err := out.Write(img); err != nil {
		return fail(err)
	}
	return 0
}
