package adapter

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/qtune/qtune/format/safetensors"
	"github.com/qtune/qtune/quant"
)

// checkDType accepts the element types adapters are stored in.
func checkDType(t quant.Type) error {
	switch t {
	case quant.F32, quant.F16, quant.BF16:
		return nil
	}
	return invalidErr("element type %v, want F32, F16 or BF16", t)
}

// encodeInto converts v to little-endian bytes of type t (F32, F16 or BF16)
// in b's memory when it holds enough (a new slice otherwise); a finite value
// that overflows to ±Inf in the narrower type is an error. base is v's index
// in the whole tensor, for errors.
func encodeInto(b []byte, t quant.Type, v []float32, what string, base int) ([]byte, error) {
	grow := func(n int) []byte {
		if cap(b) >= n {
			return b[:n]
		}
		return make([]byte, n)
	}
	switch t {
	case quant.F32:
		b := grow(4 * len(v))
		for i, x := range v {
			binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
		}
		return b, nil
	case quant.F16, quant.BF16:
		b := grow(2 * len(v))
		for i, x := range v {
			var h uint16
			var y float32
			if t == quant.F16 {
				h = quant.F32ToF16(x)
				y = quant.F16ToF32(h)
			} else {
				h = quant.F32ToBF16(x)
				y = quant.BF16ToF32(h)
			}
			if math.IsInf(float64(y), 0) && !math.IsInf(float64(x), 0) {
				return nil, invalidErr("%s: value %g at %d overflows %v", what, x, base+i, t)
			}
			binary.LittleEndian.PutUint16(b[2*i:], h)
		}
		return b, nil
	}
	return nil, checkDType(t)
}

// chunks holds encoder's 64 KiB buffers.
var chunks = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// view is a read-only (rows, cols) row-major matrix as a writer sees it,
// with no copy made: the values of v, or at(r, c) when v is nil; row r of the
// view is row src(r) of the values when src is set (the q/k permutation);
// a transposed view is (cols, rows), its element (j, i) the values' (i, j)
// (MLX-LM's layout).
type view struct {
	rows, cols int
	v          []float32
	at         func(r, c int) float32
	src        func(r int) int
	transposed bool
}

// plain is a view of v as it is stored.
func plain(v []float32) view { return view{rows: 1, cols: len(v), v: v} }

// value is element (r, c) of the untransposed view.
func (m *view) value(r, c int) float32 {
	if m.src != nil {
		r = m.src(r)
	}
	if m.v != nil {
		return m.v[r*m.cols+c]
	}
	return m.at(r, c)
}

// fill writes the view's values lo … lo+len(dst)−1, in its own row-major
// order, into dst.
func (m *view) fill(dst []float32, lo int) {
	if !m.transposed {
		r, c := lo/m.cols, lo%m.cols
		for len(dst) > 0 {
			n := min(len(dst), m.cols-c)
			if m.v != nil {
				sr := r
				if m.src != nil {
					sr = m.src(r)
				}
				copy(dst[:n], m.v[sr*m.cols+c:])
			} else {
				for i := range n {
					dst[i] = m.value(r, c+i)
				}
			}
			dst, r, c = dst[n:], r+1, 0
		}
		return
	}
	j, i := lo/m.rows, lo%m.rows
	for k := range dst {
		dst[k] = m.value(i, j)
		if i++; i == m.rows {
			i, j = 0, j+1
		}
	}
}

// floats holds encoder's chunks of values gathered from a view.
var floats = sync.Pool{New: func() any { b := make([]float32, 16<<10); return &b }}

// encoder is encode without the whole encoding in memory: the size in
// bytes, and a function that writes it in chunks of at most 64 KiB (values
// that overflow t are refused now, before anything is written). v must not
// change until the function has run.
func encoder(t quant.Type, v []float32, what string) (int64, func(w io.Writer) error, error) {
	return encoderOf(t, plain(v), what)
}

// encoderOf is encoder for a view: its values are gathered a chunk at a
// time, so a permuted, transposed or computed matrix is written with no copy
// of it in memory.
func encoderOf(t quant.Type, m view, what string) (int64, func(w io.Writer) error, error) {
	const chunk = 16 << 10 // values per chunk
	n := m.rows * m.cols
	direct := m.v != nil && m.src == nil && !m.transposed
	write := func(w io.Writer) error {
		bp := chunks.Get().(*[]byte)
		defer chunks.Put(bp)
		fp := floats.Get().(*[]float32)
		defer floats.Put(fp)
		for lo := 0; lo < n; lo += chunk {
			var f []float32
			if direct {
				f = m.v[lo:min(lo+chunk, n)]
			} else {
				f = (*fp)[:min(chunk, n-lo)]
				m.fill(f, lo)
			}
			b, err := encodeInto(*bp, t, f, what, lo)
			if err != nil {
				return err
			}
			if _, err := w.Write(b); err != nil {
				return err
			}
		}
		return nil
	}
	switch t {
	case quant.F32:
		return 4 * int64(n), write, nil
	case quant.F16, quant.BF16:
		if err := write(io.Discard); err != nil { // an overflow, before anything is written
			return 0, nil, err
		}
		return 2 * int64(n), write, nil
	}
	return 0, nil, checkDType(t)
}

// plainSize is the bytes per value of the element types adapters store
// value by value (F32, F16, BF16), or 0 for any other.
func plainSize(t quant.Type) int {
	switch t {
	case quant.F32:
		return 4
	case quant.F16, quant.BF16:
		return 2
	}
	return 0
}

// valueAt reads value k of little-endian F32, F16 or BF16 bytes.
func valueAt(t quant.Type, b []byte, k int) float32 {
	switch t {
	case quant.F32:
		return math.Float32frombits(binary.LittleEndian.Uint32(b[4*k:]))
	case quant.F16:
		return quant.F16ToF32(binary.LittleEndian.Uint16(b[2*k:]))
	}
	return quant.BF16ToF32(binary.LittleEndian.Uint16(b[2*k:]))
}

// decode converts n values of type t (F32, F16 or BF16) from b.
func decode(t quant.Type, b []byte, n int, what string) ([]float32, error) {
	size := plainSize(t)
	if size == 0 {
		// Any ggml block type (llama.cpp's converter writes Q8_0 with
		// --outtype q8_0): checked against the bytes, then decoded.
		need, err := quant.Bytes(t, int64(n))
		if err != nil {
			return nil, unsupportedErr("%s: element type %v: %v", what, t, err)
		}
		if n < 0 || int64(len(b)) != need {
			return nil, formatErr("%s: %d bytes for %d values of %v", what, len(b), n, t)
		}
		v := make([]float32, n)
		if err := quant.Dequantize(t, v, b); err != nil {
			return nil, formatErr("%s: %v", what, err)
		}
		for _, x := range v {
			if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
				return nil, formatErr("%s: holds NaN or Inf", what)
			}
		}
		return v, nil
	}
	if n < 0 || len(b) != n*size {
		return nil, formatErr("%s: %d bytes for %d values of %v", what, len(b), n, t)
	}
	v := make([]float32, n)
	for i := range v {
		v[i] = valueAt(t, b, i)
	}
	return v, nil
}

// decodeTransposed is decode of a (rows, cols) row-major tensor into its
// transpose (cols, rows), with no second copy: MLX-LM stores lora_a as
// (in, R) and lora_b as (R, out), qtune holds (R, in) and (out, R).
func decodeTransposed(t quant.Type, b []byte, rows, cols int, what string) ([]float32, error) {
	size := plainSize(t)
	if size == 0 {
		return nil, unsupportedErr("%s: element type %v, want F32, F16 or BF16", what, t)
	}
	n := rows * cols
	if rows < 0 || cols < 0 || len(b) != n*size {
		return nil, formatErr("%s: %d bytes for %d values of %v", what, len(b), n, t)
	}
	v := make([]float32, n)
	for i := 0; i < rows; i++ {
		for j := 0; j < cols; j++ {
			v[j*rows+i] = valueAt(t, b, i*cols+j)
		}
	}
	return v, nil
}

// stType returns the element type of a safetensors dtype adapters use (F32,
// F16, BF16).
func stType(dtype string) (quant.Type, bool) {
	t, ok := safetensors.TypeOf(dtype)
	if !ok || checkDType(t) != nil {
		return 0, false
	}
	return t, true
}

// writeFileAtomic writes path through a temporary file in the same folder,
// fsynced and renamed over path, so a reader sees the old file or the new
// one, never a part. The folder is synced as well (best effort).
func writeFileAtomic(path string, write func(w io.Writer) error) (err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp*")
	if err != nil {
		return fmt.Errorf("adapter: %w", err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	bw := bufio.NewWriterSize(f, 64<<10)
	if err := write(bw); err != nil {
		if strings.HasPrefix(err.Error(), "adapter: ") {
			return err // already ours, with its context
		}
		return fmt.Errorf("adapter: write %s: %w", path, err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("adapter: write %s: %w", path, err)
	}
	if err := f.Chmod(0o644); err != nil {
		return fmt.Errorf("adapter: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("adapter: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("adapter: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("adapter: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync() // best effort: makes the rename durable where supported
		d.Close()
	}
	return nil
}

// checkHeads checks that rows split into heads of even size.
func checkHeads(target string, rows, heads int, which string) error {
	if heads <= 0 {
		return invalidErr("%s: %s = %d; the Q/K row permutation needs the head count", target, which, heads)
	}
	if rows%heads != 0 || (rows/heads)%2 != 0 {
		return invalidErr("%s: %d rows do not split into %s = %d heads of even size", target, rows, which, heads)
	}
	return nil
}
