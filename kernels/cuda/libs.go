package cuda

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// ErrNoCUDA says that the machine has no usable CUDA: no driver library,
// no GPU, or a library qtune needs could not be found or bound. `--device
// auto` takes the CPU path on it; `--device cuda` reports it.
var ErrNoCUDA = errors.New("no usable CUDA")

// Library is one of the NVIDIA libraries qtune opens: the file names it
// goes by, newest first.
type Library struct {
	Name  string   // what errors call it
	Files []string // sonames, newest first
	Env   string   // a variable that names the file outright
}

// The libraries: the driver (installed with the GPU's driver, never in a
// wheel), cuBLAS with its Lt half, and NVRTC. CUDA 13's are tried before
// 12's; a driver new enough for either runs both.
var (
	Driver = Library{Name: "CUDA driver", Files: []string{"libcuda.so.1", "libcuda.so"}, Env: "QTUNE_CUDA_DRIVER"}
	BLASLt = Library{Name: "cuBLASLt", Files: []string{"libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"}}
	BLAS   = Library{Name: "cuBLAS", Files: []string{"libcublas.so.13", "libcublas.so.12", "libcublas.so"}, Env: "QTUNE_CUBLAS"}
	NVRTC  = Library{Name: "NVRTC", Files: []string{"libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"}, Env: "QTUNE_NVRTC"}
)

// Env is what the search reads from the process: a seam for tests.
type Env struct {
	Getenv func(string) string
	Glob   func(string) ([]string, error)
	Exists func(string) bool
}

// OSEnv is the process's own environment and file system.
func OSEnv() Env {
	return Env{Getenv: os.Getenv, Glob: filepath.Glob, Exists: func(p string) bool {
		st, err := os.Stat(p)
		return err == nil && !st.IsDir()
	}}
}

// SearchDirs lists the folders searched for the CUDA libraries after the
// loader's own search (ld.so.cache, LD_LIBRARY_PATH, RUNPATH), in order:
//
//   - $QTUNE_CUDA_LIBS (a colon-separated list),
//   - $CUDA_PATH and $CUDA_HOME (lib64, lib), /usr/local/cuda, and the
//     driver's /usr/local/nvidia/lib64 (containers mount it there),
//   - the lib folders of NVIDIA's pip wheels (nvidia/*/lib: cu12 wheels
//     put each library in its own, cu13 wheels all in nvidia/cu13/lib) in
//     the site-packages of $VIRTUAL_ENV, $CONDA_PREFIX, every python on
//     $PATH, ~/.local and the system's.
func SearchDirs(e Env) []string {
	var dirs []string
	seen := map[string]bool{}
	add := func(ds ...string) {
		for _, d := range ds {
			if d != "" && !seen[d] {
				seen[d] = true
				dirs = append(dirs, d)
			}
		}
	}
	for _, d := range strings.Split(e.Getenv("QTUNE_CUDA_LIBS"), ":") {
		add(d)
	}
	for _, v := range []string{"CUDA_PATH", "CUDA_HOME"} {
		if p := e.Getenv(v); p != "" {
			add(filepath.Join(p, "lib64"), filepath.Join(p, "lib"))
		}
	}
	add("/usr/local/cuda/lib64", "/usr/local/nvidia/lib64", "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu")
	var prefixes []string
	for _, v := range []string{"VIRTUAL_ENV", "CONDA_PREFIX"} {
		if p := e.Getenv(v); p != "" {
			prefixes = append(prefixes, p)
		}
	}
	for _, d := range filepath.SplitList(e.Getenv("PATH")) {
		if d != "" && (e.Exists(filepath.Join(d, "python3")) || e.Exists(filepath.Join(d, "python"))) {
			prefixes = append(prefixes, filepath.Dir(d))
		}
	}
	if h := e.Getenv("HOME"); h != "" {
		prefixes = append(prefixes, filepath.Join(h, ".local"))
	}
	prefixes = append(prefixes, "/usr/local", "/usr", "/opt/conda")
	var sites []string
	for _, p := range prefixes {
		for _, pat := range []string{"lib/python3*/site-packages", "lib/python3*/dist-packages", "lib/python3/dist-packages"} {
			m, _ := e.Glob(filepath.Join(p, pat))
			sort.Sort(sort.Reverse(sort.StringSlice(m))) // python3.12 before python3.11
			sites = append(sites, m...)
		}
	}
	for _, s := range sites {
		m, _ := e.Glob(filepath.Join(s, "nvidia", "*", "lib"))
		sort.Strings(m)
		// cu13 (one folder) before the per-library cu12 folders
		sort.SliceStable(m, func(i, j int) bool {
			return strings.HasPrefix(filepath.Base(filepath.Dir(m[i])), "cu1") && !strings.HasPrefix(filepath.Base(filepath.Dir(m[j])), "cu1")
		})
		add(m...)
	}
	return dirs
}

// Candidates lists what Open tries for lib, in order: the file its
// variable names; then each soname, newest first, as the loader finds it
// and as a file in each search folder. A soname the loader resolves comes
// before the same soname in a folder, and a newer soname anywhere before
// an older one.
func Candidates(lib Library, e Env) []string {
	var out []string
	if lib.Env != "" {
		if p := e.Getenv(lib.Env); p != "" {
			return []string{p}
		}
	}
	dirs := SearchDirs(e)
	for _, f := range lib.Files {
		out = append(out, f)
		for _, d := range dirs {
			if p := filepath.Join(d, f); e.Exists(p) {
				out = append(out, p)
			}
		}
	}
	return out
}

// open loads lib: the first candidate the loader accepts. RTLD_GLOBAL, so
// that cuBLAS finds the cuBLASLt loaded before it.
func open(lib Library, e Env) (handle uintptr, path string, err error) {
	var errs []string
	for _, c := range Candidates(lib, e) {
		h, err := dlopen(c)
		if err == nil {
			return h, c, nil
		}
		if filepath.IsAbs(c) { // a bare soname the loader lacks says nothing
			errs = append(errs, err.Error())
		}
	}
	msg := fmt.Sprintf("cuda: %s not found (tried %s", lib.Name, strings.Join(lib.Files, ", "))
	if lib.Env != "" {
		msg += "; $" + lib.Env + " names the file"
	}
	msg += "; $QTUNE_CUDA_LIBS adds folders)"
	if len(errs) > 0 {
		msg += ": " + strings.Join(errs, "; ")
	}
	return 0, "", fmt.Errorf("%s: %w", msg, ErrNoCUDA)
}

// bind resolves each name into the function pointer beside it, reporting
// every missing symbol at once instead of panicking.
func bind(h uintptr, lib string, fns map[string]any) error {
	var missing []string
	for name, fp := range fns {
		if err := dlsym(h, name); err != nil {
			missing = append(missing, name)
			continue
		}
		register(fp, h, name)
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return fmt.Errorf("cuda: %s lacks %s (too old?): %w", lib, strings.Join(missing, ", "), ErrNoCUDA)
	}
	return nil
}
