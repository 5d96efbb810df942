package kernels_test

import (
	"runtime"

	"github.com/ebitengine/purego"
)

// OpenBLAS's cblas_sgemm, loaded at run time through purego when Debian's
// libopenblas is installed (apt-get install libopenblas0-pthread). Only this
// benchmark uses it; the kernels never do.
const (
	cblasRowMajor = 101
	cblasNoTrans  = 111
	cblasTrans    = 112
)

var cblasSgemm func(order, transA, transB, m, n, k int32, alpha float32, a *float32, lda int32, b *float32, ldb int32, beta float32, c *float32, ldc int32)

// loadOpenBLAS returns the library path it loaded, or "" when none is found.
func loadOpenBLAS() string {
	if runtime.GOOS != "linux" && runtime.GOOS != "darwin" {
		return ""
	}
	for _, name := range []string{
		"libopenblas.so.0", "libopenblas.so",
		"/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
		"/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
		"/opt/homebrew/opt/openblas/lib/libopenblas.dylib",
	} {
		lib, err := purego.Dlopen(name, purego.RTLD_NOW|purego.RTLD_GLOBAL)
		if err != nil {
			continue
		}
		sym, err := purego.Dlsym(lib, "cblas_sgemm")
		if err != nil {
			continue
		}
		purego.RegisterFunc(&cblasSgemm, sym)
		return name
	}
	return ""
}
