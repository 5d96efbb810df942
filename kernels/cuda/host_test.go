package cuda

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// The host-side logic: library search, error mapping, the kernel cache.
// None of it needs a GPU.

// fakeEnv is an environment over a folder tree made by the test.
func fakeEnv(vars map[string]string) Env {
	e := OSEnv()
	e.Getenv = func(k string) string { return vars[k] }
	return e
}

func touch(t *testing.T, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, nil, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

func TestCandidatesFindWheelsAndToolkits(t *testing.T) {
	root := t.TempDir()
	venv := filepath.Join(root, "venv")
	site := filepath.Join(venv, "lib", "python3.12", "site-packages")
	cu13 := filepath.Join(site, "nvidia", "cu13", "lib", "libcublas.so.13")
	cu12 := filepath.Join(site, "nvidia", "cublas", "lib", "libcublas.so.12")
	toolkit := filepath.Join(root, "cuda-12.4", "lib64", "libcublas.so.12")
	extra := filepath.Join(root, "extra", "libcublas.so.13")
	touch(t, filepath.Join(venv, "bin", "python3"), cu13, cu12, toolkit, extra)

	e := fakeEnv(map[string]string{
		"PATH":            "/nonexistent:" + filepath.Join(venv, "bin"),
		"CUDA_PATH":       filepath.Join(root, "cuda-12.4"),
		"QTUNE_CUDA_LIBS": filepath.Join(root, "extra"),
	})
	got := Candidates(BLAS, e)
	want := []string{
		"libcublas.so.13", extra, cu13, // the newest soname first: the loader's, $QTUNE_CUDA_LIBS, the wheel
		"libcublas.so.12", toolkit, cu12,
		"libcublas.so",
	}
	if !slices.Equal(got, want) {
		t.Errorf("candidates:\n got %q\nwant %q", got, want)
	}

	// The variable naming the file outright wins over every search.
	e = fakeEnv(map[string]string{"QTUNE_CUBLAS": "/opt/x/libcublas.so.12", "PATH": filepath.Join(venv, "bin")})
	if got := Candidates(BLAS, e); !slices.Equal(got, []string{"/opt/x/libcublas.so.12"}) {
		t.Errorf("with QTUNE_CUBLAS: %q", got)
	}

	// VIRTUAL_ENV finds the wheels without python on PATH.
	e = fakeEnv(map[string]string{"VIRTUAL_ENV": venv})
	if got := Candidates(BLAS, e); !slices.Contains(got, cu13) || !slices.Contains(got, cu12) {
		t.Errorf("with VIRTUAL_ENV: %q lacks the wheels' libraries", got)
	}
}

func TestOpenMissingLibraryIsOneLine(t *testing.T) {
	lib := Library{Name: "libnothing", Files: []string{"libqtune-absent.so.7"}, Env: "QTUNE_ABSENT"}
	_, _, err := open(lib, fakeEnv(map[string]string{"QTUNE_CUDA_LIBS": t.TempDir()}))
	if !errors.Is(err, ErrNoCUDA) {
		t.Fatalf("err = %v, want ErrNoCUDA", err)
	}
	msg := err.Error()
	for _, w := range []string{"libnothing not found", "libqtune-absent.so.7", "$QTUNE_ABSENT", "$QTUNE_CUDA_LIBS"} {
		if !strings.Contains(msg, w) {
			t.Errorf("%q lacks %q", msg, w)
		}
	}
	if strings.Contains(msg, "\n") {
		t.Errorf("not one line: %q", msg)
	}

	// A file that is there but not a library: the loader's reason is kept.
	bad := filepath.Join(t.TempDir(), "libqtune-absent.so.7")
	touch(t, bad)
	_, _, err = open(lib, fakeEnv(map[string]string{"QTUNE_CUDA_LIBS": filepath.Dir(bad)}))
	if err == nil || !strings.Contains(err.Error(), bad) {
		t.Errorf("a broken file: %v", err)
	}
}

func TestBindReportsEveryMissingSymbol(t *testing.T) {
	// libc is always there; it has no CUDA.
	h, _, err := open(Library{Name: "libc", Files: []string{"libc.so.6"}}, OSEnv())
	if err != nil {
		t.Skipf("no libc.so.6 to open: %v", err)
	}
	var f1, f2 func() int32
	var ok func(s *byte) uint64
	err = bind(h, "libc", map[string]any{"cuInit": &f1, "cublasCreate_v2": &f2, "strlen": &ok})
	if !errors.Is(err, ErrNoCUDA) || !strings.Contains(err.Error(), "cuInit, cublasCreate_v2") {
		t.Fatalf("bind: %v", err)
	}
	if ok == nil {
		t.Fatal("strlen, which libc has, was not bound")
	}
	s := []byte("qtune\x00")
	if n := ok(&s[0]); n != 5 {
		t.Errorf("strlen through purego = %d", n)
	}
}

func TestErrorNamesTheCall(t *testing.T) {
	err := blasErrOf("cublasGemmEx", 15)
	if err.Error() != "cuda: cublasGemmEx: CUBLAS_STATUS_NOT_SUPPORTED (15)" {
		t.Errorf("%v", err)
	}
	if blasErrOf("x", 0) != nil {
		t.Error("status 0 is success")
	}
	if e := blasErrOf("x", 99).(*Error); e.Name != "CUBLAS_STATUS_99" {
		t.Errorf("unknown status: %v", e)
	}
	d := &driverAPI{} // no library: the code alone names the error
	if got := d.err("cuMemAlloc", 2).Error(); got != "cuda: cuMemAlloc: CUDA_ERROR_2 (2)" {
		t.Errorf("%s", got)
	}
}

func TestKernelCache(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "cuda")
	compiles := 0
	compile := func() ([]byte, error) { compiles++; return []byte("cubin-v1"), nil }
	var loaded []string
	load := func(b []byte) error {
		if string(b) != "cubin-v1" {
			return errors.New("CUDA_ERROR_INVALID_IMAGE")
		}
		loaded = append(loaded, string(b))
		return nil
	}
	key := cacheKey("src", compileOptions(9, 0), "nvrtc 13.0", "sm_90.cubin")

	hit, err := cached(dir, key, compile, load)
	if err != nil || hit || compiles != 1 {
		t.Fatalf("first: hit %v err %v compiles %d", hit, err, compiles)
	}
	hit, err = cached(dir, key, compile, load)
	if err != nil || !hit || compiles != 1 {
		t.Fatalf("second: hit %v err %v compiles %d (want the cache)", hit, err, compiles)
	}
	// A damaged file is replaced, not trusted.
	if err := os.WriteFile(filepath.Join(dir, key), []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	hit, err = cached(dir, key, compile, load)
	if err != nil || hit || compiles != 2 {
		t.Fatalf("damaged: hit %v err %v compiles %d", hit, err, compiles)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, key)); string(b) != "cubin-v1" {
		t.Errorf("the damaged file was not rewritten: %q", b)
	}
	// No temporary files are left behind.
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Errorf("cache folder holds %d entries", len(ents))
	}
	// A folder that cannot be written costs a compile, not an error.
	ro := filepath.Join(t.TempDir(), "file")
	touch(t, ro)
	if _, err := cached(filepath.Join(ro, "sub"), key, compile, load); err != nil {
		t.Errorf("unwritable cache: %v", err)
	}
	// A compile error is returned as it is.
	boom := errors.New("NVRTC_ERROR_COMPILATION")
	if _, err := cached(t.TempDir(), key, func() ([]byte, error) { return nil, boom }, load); !errors.Is(err, boom) {
		t.Errorf("compile error: %v", err)
	}
}

func TestCacheKeySeparatesWhatMatters(t *testing.T) {
	o := compileOptions(9, 0)
	base := cacheKey("src", o, "nvrtc 13.0", "sm_90.cubin")
	for name, k := range map[string]string{
		"source":   cacheKey("src2", o, "nvrtc 13.0", "sm_90.cubin"),
		"options":  cacheKey("src", append(compileOptions(9, 0), "-G"), "nvrtc 13.0", "sm_90.cubin"),
		"compiler": cacheKey("src", o, "nvrtc 12.4", "sm_90.cubin"),
		"arch":     cacheKey("src", compileOptions(8, 6), "nvrtc 13.0", "sm_86.cubin"),
	} {
		if k == base {
			t.Errorf("a different %s gives the same key", name)
		}
	}
	if !strings.HasSuffix(base, "-sm_90.cubin") {
		t.Errorf("key %q does not name its architecture", base)
	}
	if !slices.Contains(o, "--gpu-architecture=sm_90") {
		t.Errorf("options %q", o)
	}
}

// Without a driver (this machine, CI), asking for a GPU fails with one line
// wrapping ErrNoCUDA; with one, it names the GPU.
func TestCountWithoutOrWithGPU(t *testing.T) {
	n, err := Count()
	if err != nil {
		if !errors.Is(err, ErrNoCUDA) || strings.Contains(err.Error(), "\n") {
			t.Fatalf("no GPU: %q should be one line wrapping ErrNoCUDA", err)
		}
		if _, err := Open(0, Options{}); !errors.Is(err, ErrNoCUDA) {
			t.Fatalf("Open without a GPU: %v", err)
		}
		t.Logf("no GPU here: %v", err)
		return
	}
	if n < 1 {
		t.Fatalf("Count = %d without an error", n)
	}
	if _, err := Open(n, Options{}); err == nil || !strings.Contains(err.Error(), "sees") {
		t.Errorf("Open(%d) of %d GPUs: %v", n, n, err)
	}
}

func TestSourceCompilesOnTheHost(t *testing.T) {
	// The CUDA C is checked for syntax by the host C++ compiler with a
	// shim for CUDA's keywords and intrinsics when one is installed; the
	// GPU tests compile it for real.
	if _, err := os.Stat("/usr/bin/g++"); err != nil {
		t.Skip("no g++ to check the CUDA source's syntax")
	}
	shim := filepath.Join(t.TempDir(), "shim.h")
	if err := os.WriteFile(shim, []byte(cudaShim), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := runCmd("g++", "-std=c++17", "-fsyntax-only", "-Wall", "-Wno-unused-variable", "-Wno-unknown-pragmas", "-include", shim, "-x", "c++", "kernels.cu")
	if err != nil {
		t.Fatalf("g++: %v\n%s", err, out)
	}
}

// cudaShim declares what kernels.cu takes from CUDA, for a host syntax check.
const cudaShim = `#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__
#define __constant__
#define __restrict__
#define asm(...) ((void)0)
struct dim3s { unsigned x, y, z; };
extern dim3s threadIdx, blockIdx, blockDim, gridDim;
float __fmul_rn(float, float); float __fadd_rn(float, float); float __fsub_rn(float, float); float __fdiv_rn(float, float);
float __uint_as_float(unsigned); unsigned __float_as_uint(float); float __int_as_float(int);
float __shfl_xor_sync(unsigned, float, int);
float fmaxf(float, float); float expf(float); float logf(float);
double sqrt(double); double log(double); double tanh(double); void sincos(double, double*, double*);
float atomicAdd(float*, float);
unsigned long long __umul64hi(unsigned long long, unsigned long long);
void __syncthreads();
void __syncwarp(unsigned = 0xffffffffu);
#define __launch_bounds__(...)
`

// The CUDA C compiles with NVIDIA's own compiler, not only the host's
// over a shim: NVRTC needs no GPU, only its library, so every change to
// kernels.cu is compiled here to the machine code of the consumer and
// data-centre GPUs people train on (Ampere: A100, RTX 30; Ada: RTX 40;
// about 16 s each on 2 cores).
// The library is $QTUNE_CHECK_NVRTC, else the system's (Debian's
// libnvrtc11.2 from non-free, which .ci/run installs: CUDA 11.8's
// compiler); without one the test skips. Hopper (sm_90) is left to the
// GPU check: 11.8's sm_90 back end crashes (SIGSEGV, or runs out of
// memory with an unlimited stack) on this source and on the source an
// H200 compiled with NVRTC 13.0, though a trivial kernel passes.
func TestSourceCompilesWithNVRTC(t *testing.T) {
	path := realNVRTC(t)
	h, err := dlopen(path)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	n, err := bindNVRTC(h, path)
	if err != nil {
		t.Fatal(err)
	}
	arena, err := mapArena(arenaBytes)
	if err != nil {
		t.Fatal(err)
	}
	defer unmapArena(arena)
	for _, cc := range [][2]int{{8, 0}, {8, 9}} {
		cubin, log, err := n.compileLog(arena, source, "qtune.cu", append(compileOptions(cc[0], cc[1]), "--ptxas-options=-v"))
		if err != nil {
			t.Errorf("NVRTC %d.%d for sm_%d%d: %v", n.major, n.minor, cc[0], cc[1], err)
			continue
		}
		checkResources(t, fmt.Sprintf("sm_%d%d", cc[0], cc[1]), log)
		// an ELF object: the cubin
		if len(cubin) < 4 || string(cubin[1:4]) != "ELF" {
			t.Errorf("sm_%d%d: %d bytes that are not a cubin", cc[0], cc[1], len(cubin))
		}
		t.Logf("NVRTC %d.%d (%s): sm_%d%d cubin of %d KiB", n.major, n.minor, path, cc[0], cc[1], len(cubin)>>10)
	}
}

// realNVRTC is the path of an NVRTC library on this machine: the one
// $QTUNE_CHECK_NVRTC names, else the system's; the test skips without one
// (fails under CI=true, whose machine has Debian's).
func realNVRTC(t *testing.T) string {
	t.Helper()
	path := os.Getenv("QTUNE_CHECK_NVRTC")
	for _, pat := range []string{"/usr/lib/x86_64-linux-gnu/libnvrtc.so.1*", "/usr/local/cuda/lib64/libnvrtc.so.1*"} {
		if path != "" {
			break
		}
		if m, _ := filepath.Glob(pat); len(m) > 0 {
			path = m[0]
		}
	}
	if path == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("no NVRTC library: .ci/run installs Debian's libnvrtc11.2")
		}
		t.Skip("no NVRTC library (Debian's libnvrtc11.2, or $QTUNE_CHECK_NVRTC) to compile the CUDA source with")
	}
	return path
}

// The kernels compile in a child process (CompileInChild, the qtune
// binary's way: NVRTC's heap and library out of the parent): the child is
// this test binary (TestMain serves), its NVRTC the real one. It says the
// version the cache's key takes, the image comes back, and NVRTC's refusal
// comes back as the same *Error, its log with it; a child without NVRTC
// is ErrNoCUDA.
func TestCompileInChild(t *testing.T) {
	path := realNVRTC(t)
	t.Setenv("QTUNE_NVRTC", path)
	CompileInChild(os.Args[0])
	defer CompileInChild("")
	c := childCompiler
	id, err := c.version()
	if err != nil || id.Major < 11 || id.Path != path {
		t.Fatalf("the child's NVRTC: %+v, %v (want %s)", id, err, path)
	}
	img, err := c.compile(`extern "C" __global__ void k(float* x) { x[threadIdx.x] *= 2.0f; }`, "k.cu", compileOptions(8, 0))
	if err != nil || len(img) < 4 || string(img[1:4]) != "ELF" {
		t.Fatalf("a kernel compiled by the child: %d bytes, %v", len(img), err)
	}
	_, err = c.compile(`extern "C" __global__ void k(float* x) { x[0] = undefined_name; }`, "broken.cu", compileOptions(8, 0))
	var ce *Error
	if !errors.As(err, &ce) || ce.Call != "nvrtcCompileProgram" || !strings.Contains(ce.Text, "undefined_name") {
		t.Errorf("a source NVRTC refuses: %v", err)
	}
	t.Setenv("QTUNE_NVRTC", filepath.Join(t.TempDir(), "libnvrtc.so.none"))
	t.Setenv("QTUNE_CUDA_LIBS", t.TempDir())
	CompileInChild(os.Args[0])
	if id, err := childCompiler.version(); err == nil {
		t.Logf("the child found another NVRTC (%s): no refusal to check", id.Path)
	} else if !errors.Is(err, ErrNoCUDA) {
		t.Errorf("a child without NVRTC: %v", err)
	}
}

func TestMain(m *testing.M) {
	ServeCompile() // the child of TestCompileInChild
	os.Exit(m.Run())
}

// launchThreads is the most threads qtune launches a kernel with (ops.go):
// 256 for most; the attention kernels' blocks are ATT_NT and DEC_NT (128).
func launchThreads(kernel string) int {
	switch {
	case kernel == "xent":
		return 512
	case strings.HasPrefix(kernel, "attn_"):
		return 128
	}
	return 256
}

// checkResources reads ptxas's report (--ptxas-options=-v) of every
// kernel: its registers times the threads it is launched with must fit a
// multiprocessor's 64K registers, or the launch fails on a GPU ("too many
// resources requested") though the emulator, which has no registers,
// runs it; and it reports the kernels that spill.
func checkResources(t *testing.T, arch, log string) {
	t.Helper()
	kernel, kernels := "", 0
	for _, l := range strings.Split(log, "\n") {
		if i := strings.Index(l, "Compiling entry function '"); i >= 0 {
			kernel = strings.SplitN(l[i+len("Compiling entry function '"):], "'", 2)[0]
			kernels++
		}
		var regs int
		if i := strings.Index(l, "Used "); i >= 0 && kernel != "" {
			if _, err := fmt.Sscanf(l[i:], "Used %d registers", &regs); err == nil {
				if regs*launchThreads(kernel) > 65536 {
					t.Errorf("%s: %s uses %d registers a thread: %d threads a block need %d of the 65536", arch, kernel, regs, launchThreads(kernel), regs*launchThreads(kernel))
				}
			}
		}
		var stack, spill int
		if i := strings.Index(l, "bytes stack frame"); i >= 0 && kernel != "" {
			if _, err := fmt.Sscanf(strings.TrimSpace(l[strings.Index(l, ".")+1:]), "%d bytes stack frame, %d bytes spill stores", &stack, &spill); err == nil && spill > 0 {
				t.Logf("%s: %s spills %d bytes", arch, kernel, spill)
			}
		}
	}
	if kernels < 50 {
		t.Errorf("%s: ptxas reported %d kernels; its report was not read:\n%.2000s", arch, kernels, log)
	}
}
