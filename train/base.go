package train

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"github.com/qtune/qtune/internal/fsx"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"

	"github.com/qtune/qtune/model"
	"github.com/qtune/qtune/quant"
)

// DefaultCacheDir is where the qtune command keeps converted bases and
// token caches when --cache-dir is not given: $QTUNE_CACHE, else the user
// cache folder's qtune/. The library does not use it unless asked
// (Config.CacheDir): see LibraryCacheDir.
func DefaultCacheDir() string {
	if d := os.Getenv("QTUNE_CACHE"); d != "" {
		return d
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "qtune")
	}
	return filepath.Join(os.TempDir(), "qtune-cache")
}

// LibraryCacheDir is Run's cache folder when Config.CacheDir is empty: a
// folder under the system's temporary folder, so that an app embedding
// qtune writes nothing under its user's home it did not ask for.
func LibraryCacheDir() string {
	if uid := os.Getuid(); uid >= 0 { // one per user where the folder is shared
		return filepath.Join(os.TempDir(), fmt.Sprintf("qtune-cache-%d", uid))
	}
	return filepath.Join(os.TempDir(), "qtune-cache")
}

// conversionBytes is what converting m to NF4 holds at most: the runtime,
// the largest tensor's NF4 bytes (twice: the collector's room), the float
// pieces, the blocks' scales, the write buffer and the garbage of 100-odd
// tensors. Measured: 110M F32 to NF4 under --max-mem 56MiB peaks at
// 52-55 MiB (the heap held to the budget less the runtime) against 58 MiB
// here.
func conversionBytes(m *model.Model) int64 {
	var biggest int64
	for _, t := range m.Tensors {
		if b, err := quant.Bytes(quant.NF4, t.Elems()); err == nil && t.Elems()%64 == 0 {
			biggest = max(biggest, b)
		}
	}
	// The kernels do not run: the runtime without their scratch.
	return binaryText + goRuntime(m) + 2*biggest + 16<<20
}

// hasFloatMatrices reports whether any 2-D weight is stored as a float type.
func hasFloatMatrices(m *model.Model) bool {
	for _, t := range m.Tensors {
		if len(t.Shape) == 2 && (t.Type == quant.F32 || t.Type == quant.F16 || t.Type == quant.BF16) &&
			model.TargetType(t, quant.NF4) == quant.NF4 {
			return true
		}
	}
	return false
}

// OpenBase opens the model a method trains on. For "qlora" a model whose
// matrices are float is quantized to NF4 once and the result cached in
// cacheDir (keyed by the source's path, size and modification time) and
// reused next time; an already quantized model trains over its own types.
// note describes what was done, for the log.
func OpenBase(path, method, cacheDir string, opt model.Options) (m *model.Model, note string, err error) {
	return OpenBaseLimit(context.Background(), path, method, cacheDir, opt, 0)
}

// OpenBaseLimit is OpenBase under a memory budget (0: none): a conversion
// to NF4 holds one tensor's NF4 bytes and a MiB-sized piece of float32 at a
// time (model.Quantize), and one that cannot fit limit is refused before it
// starts. Cancelling ctx stops a conversion before its next tensor with an
// error wrapping ctx.Err(); the partial file is removed, never cached.
func OpenBaseLimit(ctx context.Context, path, method, cacheDir string, opt model.Options, limit int64) (m *model.Model, note string, err error) {
	m, err = model.Open(path, opt)
	if err != nil {
		return nil, "", err
	}
	if method != "qlora" || !hasFloatMatrices(m) {
		return m, "", nil
	}
	if need := conversionBytes(m); limit > 0 && need > limit {
		m.Close()
		return nil, "", fmt.Errorf("train: qlora: converting %s to NF4 needs about %.1f MiB, more than --max-mem %.1f MiB (--max-mem %dMiB)",
			path, float64(need)/(1<<20), float64(limit)/(1<<20), (need+(1<<20)-1)>>20)
	}
	st, err := os.Stat(path)
	if err != nil {
		m.Close()
		return nil, "", err
	}
	abs, _ := filepath.Abs(path)
	h := sha256.Sum256([]byte(fmt.Sprintf("%s\x00%d\x00%d\x00nf4-v1", abs, st.Size(), st.ModTime().UnixNano())))
	name := strings.TrimSuffix(filepath.Base(path), filepath.Ext(path)) + "-nf4-" + hex.EncodeToString(h[:6]) + ".gguf"
	cached := filepath.Join(cacheDir, name)
	if _, err := os.Stat(cached); err == nil {
		if q, err := model.Open(cached, opt); err == nil {
			m.Close()
			return q, "NF4 base from cache " + cached, nil
		}
		os.Remove(cached) // damaged: rebuild it
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		m.Close()
		return nil, "", fmt.Errorf("train: cache folder: %w", err)
	}
	if limit > 0 { // the collector keeps the conversion's garbage within the budget
		defer debug.SetMemoryLimit(debug.SetMemoryLimit(max(limit-runtimeBytes(m)-8<<20, 8<<20)))
	}
	reportPhase(ctx, PhaseConverting, 0)
	err = fsx.WriteFile(cached, func(w io.Writer) error { // temporary name, fsync, rename
		_, err := model.QuantizeContext(ctx, m, w, quant.NF4)
		return err
	})
	m.Close()
	if err != nil {
		return nil, "", fmt.Errorf("train: caching the NF4 base: %w", err)
	}
	q, err := model.Open(cached, opt)
	if err != nil {
		return nil, "", err
	}
	return q, "quantized the base to NF4 once, cached at " + cached, nil
}
