package cuda

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"unsafe"

	"github.com/qtune/qtune/internal/fsx"
)

// nvrtcAPI is the part of libnvrtc qtune calls (nvrtcResult 0 = success).
type nvrtcAPI struct {
	path         string
	version      func(major, minor *int32) int32
	create       func(prog *uintptr, src, name string, nh int32, headers, names uintptr) int32
	compile      func(prog uintptr, n int32, opts unsafe.Pointer) int32
	logSize      func(prog uintptr, n *uint64) int32
	log          func(prog uintptr, b *byte) int32
	cubinSize    func(prog uintptr, n *uint64) int32
	cubin        func(prog uintptr, b *byte) int32
	destroy      func(prog *uintptr) int32
	errorString  func(rc int32) *byte
	major, minor int32
}

var (
	nvrtcOnce sync.Once
	nvrtcLib  *nvrtcAPI
	nvrtcErr  error
)

func loadNVRTC() (*nvrtcAPI, error) {
	nvrtcOnce.Do(func() {
		h, path, err := open(NVRTC, OSEnv())
		if err != nil {
			nvrtcErr = err
			return
		}
		nvrtcLib, nvrtcErr = bindNVRTC(h, path)
	})
	return nvrtcLib, nvrtcErr
}

// bindNVRTC binds the calls qtune makes in the NVRTC library h (loaded
// from path).
func bindNVRTC(h uintptr, path string) (*nvrtcAPI, error) {
	n := &nvrtcAPI{path: path}
	if err := bind(h, NVRTC.Name, map[string]any{
		"nvrtcVersion": &n.version, "nvrtcCreateProgram": &n.create, "nvrtcCompileProgram": &n.compile,
		"nvrtcGetProgramLogSize": &n.logSize, "nvrtcGetProgramLog": &n.log,
		"nvrtcGetCUBINSize": &n.cubinSize, "nvrtcGetCUBIN": &n.cubin,
		"nvrtcDestroyProgram": &n.destroy, "nvrtcGetErrorString": &n.errorString,
	}); err != nil {
		return nil, err
	}
	n.version(&n.major, &n.minor)
	return n, nil
}

func (n *nvrtcAPI) err(call string, rc int32) error {
	if rc == 0 {
		return nil
	}
	s := cstring(n.errorString(rc))
	return &Error{Call: call, Code: rc, Name: s}
}

// compileOptions are NVRTC's flags for compute capability major.minor: a
// cubin for that exact architecture (sm_XY).
func compileOptions(major, minor int) []string {
	return []string{fmt.Sprintf("--gpu-architecture=sm_%d%d", major, minor), "--std=c++17", "-default-device", "-lineinfo"}
}

// compileWith runs NVRTC on src with opts on the calling thread, putting
// the option strings in arena (mapped memory, not the Go heap). It returns
// the cubin.
func (n *nvrtcAPI) compileWith(arena []byte, src, name string, opts []string) ([]byte, error) {
	img, _, err := n.compileLog(arena, src, name, opts)
	return img, err
}

// compileLog is compileWith returning NVRTC's log too (ptxas's resource
// report with --ptxas-options=-v).
func (n *nvrtcAPI) compileLog(arena []byte, src, name string, opts []string) ([]byte, string, error) {
	var prog uintptr
	if err := n.err("nvrtcCreateProgram", n.create(&prog, src, name, 0, 0, 0)); err != nil {
		return nil, "", err
	}
	defer n.destroy(&prog)
	// char *opts[]: the pointers first, then the strings.
	need := 8 * len(opts)
	for _, o := range opts {
		need += len(o) + 1
	}
	if need > len(arena) {
		return nil, "", fmt.Errorf("cuda: NVRTC options take %d bytes", need)
	}
	at := 8 * len(opts)
	base := uintptr(unsafe.Pointer(&arena[0]))
	for i, o := range opts {
		*(*uintptr)(unsafe.Pointer(&arena[8*i])) = base + uintptr(at)
		copy(arena[at:], o)
		arena[at+len(o)] = 0
		at += len(o) + 1
	}
	rc := n.compile(prog, int32(len(opts)), unsafe.Pointer(&arena[0]))
	var ls uint64
	var logText string
	if n.logSize(prog, &ls) == 0 && ls > 1 && ls < 1<<24 {
		b := make([]byte, ls)
		if n.log(prog, &b[0]) == 0 {
			logText = strings.TrimRight(string(b), "\x00\n ")
		}
	}
	if rc != 0 {
		e := n.err("nvrtcCompileProgram", rc).(*Error)
		e.Text = logText
		return nil, logText, e
	}
	var sz uint64
	if err := n.err("nvrtcGetCUBINSize", n.cubinSize(prog, &sz)); err != nil {
		return nil, logText, err
	}
	if sz == 0 || sz > 1<<30 {
		return nil, logText, fmt.Errorf("cuda: nvrtcGetCUBIN: %d bytes", sz)
	}
	out := make([]byte, sz)
	if err := n.err("nvrtcGetCUBIN", n.cubin(prog, &out[0])); err != nil {
		return nil, logText, err
	}
	return out, logText, nil
}

// cacheKey names a compiled module: the source, the options and the
// compiler's version hashed, and the architecture in clear.
func cacheKey(src string, opts []string, compiler, arch string) string {
	h := sha256.New()
	h.Write([]byte(src))
	h.Write([]byte{0})
	h.Write([]byte(strings.Join(opts, "\x00")))
	h.Write([]byte{0})
	h.Write([]byte(compiler))
	return hex.EncodeToString(h.Sum(nil))[:32] + "-" + arch
}

// DefaultCacheDir is where compiled kernels are kept: $QTUNE_CACHE/cuda,
// else the user cache folder's qtune/cuda, else the temporary folder's.
func DefaultCacheDir() string {
	if c := os.Getenv("QTUNE_CACHE"); c != "" {
		return filepath.Join(c, "cuda")
	}
	if c, err := os.UserCacheDir(); err == nil {
		return filepath.Join(c, "qtune", "cuda")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("qtune-%d", os.Getuid()), "cuda")
}

// cached returns the module image under key in dir if there is one that
// load accepts; else it compiles one, loads it and stores it (by rename,
// so a reader never sees half a file). A cache that cannot be written
// costs a compile per process, not an error. fromCache says which.
func cached(dir, key string, compile func() ([]byte, error), load func([]byte) error) (fromCache bool, err error) {
	path := filepath.Join(dir, key)
	if b, err := os.ReadFile(path); err == nil {
		if load(b) == nil {
			return true, nil
		}
		os.Remove(path) // a damaged or foreign file: compile afresh
	}
	img, err := compile()
	if err != nil {
		return false, err
	}
	if err := load(img); err != nil {
		return false, err
	}
	if os.MkdirAll(dir, 0o755) == nil {
		fsx.WriteFile(path, func(w io.Writer) error { _, err := w.Write(img); return err })
	}
	return false, nil
}

// module is a loaded CUmodule with its functions looked up so far.
type module struct {
	h       uintptr
	fns     map[string]uintptr
	fromCch bool
}

// Module compiles (or takes from the cache) src for this device's
// architecture and loads it; name keys it within the device.
func (d *Device) module(name, src string) (*module, error) {
	d.mu.Lock()
	m := d.mods[name]
	d.mu.Unlock()
	if m != nil {
		return m, nil
	}
	id, compile, err := d.compiler()
	if err != nil {
		return nil, err
	}
	dir := d.opt.CacheDir
	if dir == "" {
		dir = DefaultCacheDir()
	}
	m = &module{fns: map[string]uintptr{}}
	err = d.do(func() error {
		load := func(img []byte) error {
			return d.drv.err("cuModuleLoadData", d.drv.cuModuleLoadData(&m.h, unsafe.Pointer(&img[0])))
		}
		opts := compileOptions(d.Major, d.Minor)
		var cerr error
		m.fromCch, cerr = cached(dir, moduleKey(src, d.Major, d.Minor, id),
			func() ([]byte, error) { return compile(src, name+".cu", opts) }, load)
		if cerr == nil {
			return nil
		}
		var ce *Error
		if !errors.As(cerr, &ce) || !strings.Contains(ce.Text+ce.Name, "gpu-architecture") {
			return cerr
		}
		// An NVRTC older than the GPU cannot target it: say which versions meet.
		return fmt.Errorf("cuda: NVRTC %d.%d (%s) cannot compile for compute %d.%d: install a newer CUDA (the nvidia-cuda-nvrtc wheel, or set QTUNE_NVRTC): %w",
			id.Major, id.Minor, id.Path, d.Major, d.Minor, cerr)
	})
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	d.mods[name] = m
	d.mu.Unlock()
	return m, nil
}

// nvrtcID names the NVRTC that compiles: its version (in the cache's
// key) and library.
type nvrtcID struct {
	Major, Minor int
	Path         string
}

func (id nvrtcID) String() string { return fmt.Sprintf("nvrtc %d.%d", id.Major, id.Minor) }

func (n *nvrtcAPI) id() nvrtcID { return nvrtcID{int(n.major), int(n.minor), n.path} }

// currentNVRTC is the NVRTC modules compile with: a child process's
// (CompileInChild: this process never loads the library, not even on a
// cache hit, where only its version is asked; nv is nil), else this
// process's.
func currentNVRTC() (id nvrtcID, nv *nvrtcAPI, err error) {
	if c := childCompiler; c != nil {
		id, err = c.version()
		return id, nil, err
	}
	if nv, err = loadNVRTC(); err != nil {
		return id, nil, err
	}
	return nv.id(), nv, nil
}

// moduleKey names src compiled for compute major.minor by id in the cache.
func moduleKey(src string, major, minor int, id nvrtcID) string {
	return cacheKey(src, compileOptions(major, minor), id.String(), fmt.Sprintf("sm_%d%d.cubin", major, minor))
}

// compiler is the NVRTC this device's modules compile with and its
// compile: a child process's, or this process's on the device's thread
// with its arena.
func (d *Device) compiler() (nvrtcID, func(src, name string, opts []string) ([]byte, error), error) {
	id, nv, err := currentNVRTC()
	switch {
	case err != nil:
		return id, nil, err
	case nv == nil:
		return id, childCompiler.compile, nil
	}
	return id, func(src, name string, opts []string) ([]byte, error) { return nv.compileWith(d.arena, src, name, opts) }, nil
}

// fn returns kernel name of module m (looked up once).
func (d *Device) fn(m *module, name string) (uintptr, error) {
	d.mu.Lock()
	f, ok := m.fns[name]
	d.mu.Unlock()
	if ok {
		return f, nil
	}
	err := d.do(func() error {
		return d.drv.err("cuModuleGetFunction "+name, d.drv.cuModuleGetFunction(&f, m.h, name))
	})
	if err != nil {
		return 0, err
	}
	d.mu.Lock()
	m.fns[name] = f
	d.mu.Unlock()
	return f, nil
}
