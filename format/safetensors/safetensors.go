package safetensors

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"unicode/utf8"

	"github.com/qtune/qtune/quant"
)

// MaxHeaderLen is the largest header Parse accepts (100 MB, as upstream).
const MaxHeaderLen = 100_000_000

// MaxRank bounds the number of dimensions of a tensor.
const MaxRank = 16

// ErrFormat matches every error Parse, ParseIndex and ParseConfig return for
// malformed input.
var ErrFormat = errors.New("safetensors: malformed input")

type formatError struct{ err error }

func (e *formatError) Error() string   { return e.err.Error() }
func (e *formatError) Unwrap() []error { return []error{ErrFormat, e.err} }

func errf(format string, args ...any) error {
	return &formatError{fmt.Errorf("safetensors: "+format, args...)}
}

// Tensor is one tensor. Shape is row-major as in the file (outermost first);
// Data is a view of the parsed bytes (Parse) or the bytes to write (Write).
type Tensor struct {
	Name  string
	DType string // "F32", "F16", "BF16", ...
	Shape []int64
	Data  []byte
	// Source, for Write, takes the place of Data: it writes the tensor's
	// bytes (exactly its size) when Write reaches them, so that a file of
	// many tensors is never held in memory whole.
	Source func(w io.Writer) error
}

// File is a parsed safetensors file.
type File struct {
	Tensors  []Tensor          // sorted by name
	Metadata map[string]string // the __metadata__ object; nil when absent
}

// dtypeSizes lists the dtypes of the format with their element sizes.
var dtypeSizes = map[string]int64{
	"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
	"I16": 2, "U16": 2, "F16": 2, "BF16": 2,
	"I32": 4, "U32": 4, "F32": 4,
	"F64": 8, "I64": 8, "U64": 8,
}

// DTypeSize returns the element size of a dtype, or false if unknown.
func DTypeSize(dtype string) (int64, bool) {
	s, ok := dtypeSizes[dtype]
	return s, ok
}

// quantDTypes maps the dtypes that have a quant.Type.
var quantDTypes = []struct {
	t quant.Type
	d string
}{
	{quant.F32, "F32"}, {quant.F16, "F16"}, {quant.BF16, "BF16"}, {quant.F64, "F64"},
	{quant.I8, "I8"}, {quant.I16, "I16"}, {quant.I32, "I32"}, {quant.I64, "I64"},
}

// DTypeOf returns the safetensors dtype of a quant type (F32, F16, BF16, F64,
// I8, I16, I32, I64); block-quantized types have none.
func DTypeOf(t quant.Type) (string, bool) {
	for _, q := range quantDTypes {
		if q.t == t {
			return q.d, true
		}
	}
	return "", false
}

// TypeOf is the inverse of DTypeOf.
func TypeOf(dtype string) (quant.Type, bool) {
	for _, q := range quantDTypes {
		if q.d == dtype {
			return q.t, true
		}
	}
	return 0, false
}

// byteSize returns product(shape)·size of dtype, checking overflow.
func byteSize(dtype string, shape []int64) (int64, error) {
	es, ok := dtypeSizes[dtype]
	if !ok {
		return 0, fmt.Errorf("unknown dtype %q", dtype)
	}
	if len(shape) > MaxRank {
		return 0, fmt.Errorf("rank %d exceeds %d", len(shape), MaxRank)
	}
	n := es
	for i, d := range shape {
		if d < 0 {
			return 0, fmt.Errorf("dimension %d is %d", i, d)
		}
		if d != 0 && n > math.MaxInt64/d {
			return 0, fmt.Errorf("shape %v overflows", shape)
		}
		n *= d
	}
	return n, nil
}

// Parse reads a safetensors file held in data. Tensor Data are views of data.
func Parse(data []byte) (*File, error) {
	if len(data) < 8 {
		return nil, errf("file of %d bytes: %w (no header length)", len(data), io.ErrUnexpectedEOF)
	}
	n := binary.LittleEndian.Uint64(data)
	if n > MaxHeaderLen {
		return nil, errf("header length %d exceeds limit %d", n, MaxHeaderLen)
	}
	if n > uint64(len(data)-8) {
		return nil, errf("header length %d past end of file (%d bytes): %w", n, len(data), io.ErrUnexpectedEOF)
	}
	header := data[8 : 8+n]
	buf := data[8+n:]
	if len(bytes.TrimLeft(header, " \t\r\n")) == 0 || bytes.TrimLeft(header, " \t\r\n")[0] != '{' {
		return nil, errf("header is not a JSON object")
	}
	if err := checkJSON(header); err != nil {
		return nil, errf("header: %w", err)
	}
	var entries map[string]json.RawMessage
	if err := json.Unmarshal(header, &entries); err != nil {
		return nil, errf("header: %w", err)
	}
	f := &File{Tensors: make([]Tensor, 0, len(entries))}
	var spans []span
	names := make([]string, 0, len(entries))
	for name := range entries {
		names = append(names, name)
	}
	sort.Strings(names) // deterministic errors
	for _, name := range names {
		raw := entries[name]
		if name == "__metadata__" {
			if err := json.Unmarshal(raw, &f.Metadata); err != nil {
				return nil, errf("__metadata__ must map strings to strings: %w", err)
			}
			continue
		}
		t, begin, err := parseEntry(name, raw, buf)
		if err != nil {
			return nil, err
		}
		f.Tensors = append(f.Tensors, t)
		if len(t.Data) > 0 {
			spans = append(spans, span{begin, begin + int64(len(t.Data)), name})
		}
	}
	if err := checkOverlap(spans); err != nil {
		return nil, err
	}
	return f, nil
}

func parseEntry(name string, raw json.RawMessage, buf []byte) (Tensor, int64, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil || fields == nil {
		return Tensor{}, 0, errf("tensor %q: entry is not an object", name)
	}
	var t Tensor
	t.Name = name
	var offs []int64
	for _, k := range []string{"dtype", "shape", "data_offsets"} {
		if _, ok := fields[k]; !ok {
			return Tensor{}, 0, errf("tensor %q: missing %q", name, k)
		}
	}
	if err := json.Unmarshal(fields["dtype"], &t.DType); err != nil {
		return Tensor{}, 0, errf("tensor %q: dtype: %w", name, err)
	}
	if err := json.Unmarshal(fields["shape"], &t.Shape); err != nil || t.Shape == nil {
		return Tensor{}, 0, errf("tensor %q: shape must be an array of integers", name)
	}
	if err := json.Unmarshal(fields["data_offsets"], &offs); err != nil || len(offs) != 2 {
		return Tensor{}, 0, errf("tensor %q: data_offsets must be two integers", name)
	}
	size, err := byteSize(t.DType, t.Shape)
	if err != nil {
		return Tensor{}, 0, errf("tensor %q: %w", name, err)
	}
	begin, end := offs[0], offs[1]
	if begin < 0 || end < begin {
		return Tensor{}, 0, errf("tensor %q: bad data_offsets [%d, %d]", name, begin, end)
	}
	if end > int64(len(buf)) {
		return Tensor{}, 0, errf("tensor %q: data past end of file (offsets [%d, %d], buffer %d)", name, begin, end, len(buf))
	}
	if end-begin != size {
		return Tensor{}, 0, errf("tensor %q: %d bytes for %s %v, want %d", name, end-begin, t.DType, t.Shape, size)
	}
	t.Data = buf[begin:end:end]
	return t, begin, nil
}

type span struct {
	b, e int64
	name string
}

func checkOverlap(sp []span) error {
	sort.Slice(sp, func(i, j int) bool { return sp[i].b < sp[j].b })
	for i := 1; i < len(sp); i++ {
		if sp[i-1].e > sp[i].b {
			return errf("tensor %q: data overlaps tensor %q (offsets [%d, %d] and [%d, %d])", sp[i].name, sp[i-1].name, sp[i].b, sp[i].e, sp[i-1].b, sp[i-1].e)
		}
	}
	return nil
}

// Tensor returns the tensor with the given name.
func (f *File) Tensor(name string) (Tensor, bool) {
	i := sort.Search(len(f.Tensors), func(i int) bool { return f.Tensors[i].Name >= name })
	if i < len(f.Tensors) && f.Tensors[i].Name == name {
		return f.Tensors[i], true
	}
	for _, t := range f.Tensors { // a File built by hand may be unsorted
		if t.Name == name {
			return t, true
		}
	}
	return Tensor{}, false
}

type headerEntry struct {
	DType       string   `json:"dtype"`
	Shape       []int64  `json:"shape"`
	DataOffsets [2]int64 `json:"data_offsets"`
}

// Write writes a safetensors file: tensors sorted by name, their data back to
// back in that order, the header padded with spaces so the data starts at a
// multiple of 8. Metadata is written only when non-empty.
func Write(w io.Writer, tensors []Tensor, metadata map[string]string) error {
	ts := append([]Tensor(nil), tensors...)
	sort.Slice(ts, func(i, j int) bool { return ts[i].Name < ts[j].Name })
	for k, v := range metadata {
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			return fmt.Errorf("safetensors: write: metadata %q: not valid UTF-8", k)
		}
	}
	header := make(map[string]any, len(ts)+1)
	if len(metadata) > 0 {
		header["__metadata__"] = metadata
	}
	var off int64
	for i, t := range ts {
		if t.Name == "" || t.Name == "__metadata__" || !utf8.ValidString(t.Name) {
			return fmt.Errorf("safetensors: write: invalid tensor name %q", t.Name)
		}
		if i > 0 && ts[i-1].Name == t.Name {
			return fmt.Errorf("safetensors: write: duplicate tensor name %q", t.Name)
		}
		size, err := byteSize(t.DType, t.Shape)
		if err != nil {
			return fmt.Errorf("safetensors: write: tensor %q: %w", t.Name, err)
		}
		if t.Source == nil && int64(len(t.Data)) != size {
			return fmt.Errorf("safetensors: write: tensor %q: %d bytes for %s %v, want %d", t.Name, len(t.Data), t.DType, t.Shape, size)
		}
		shape := t.Shape
		if shape == nil {
			shape = []int64{}
		}
		header[t.Name] = headerEntry{t.DType, shape, [2]int64{off, off + size}}
		off += size
	}
	var hb bytes.Buffer
	enc := json.NewEncoder(&hb)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(header); err != nil {
		return fmt.Errorf("safetensors: write: %w", err)
	}
	h := bytes.TrimRight(hb.Bytes(), "\n")
	for (8+len(h))%8 != 0 {
		h = append(h, ' ')
	}
	if len(h) > MaxHeaderLen {
		return fmt.Errorf("safetensors: write: header of %d bytes exceeds limit %d", len(h), MaxHeaderLen)
	}
	var lenBuf [8]byte
	binary.LittleEndian.PutUint64(lenBuf[:], uint64(len(h)))
	if _, err := w.Write(lenBuf[:]); err != nil {
		return fmt.Errorf("safetensors: write: %w", err)
	}
	if _, err := w.Write(h); err != nil {
		return fmt.Errorf("safetensors: write: %w", err)
	}
	for _, t := range ts {
		if t.Source == nil {
			if _, err := w.Write(t.Data); err != nil {
				return fmt.Errorf("safetensors: write: tensor %q: %w", t.Name, err)
			}
			continue
		}
		size, _ := byteSize(t.DType, t.Shape)
		cw := &countingWriter{w: w}
		if err := t.Source(cw); err != nil {
			return fmt.Errorf("safetensors: write: tensor %q: %w", t.Name, err)
		}
		if cw.n != size {
			return fmt.Errorf("safetensors: write: tensor %q: its source wrote %d bytes, want %d", t.Name, cw.n, size)
		}
	}
	return nil
}

// countingWriter counts what passes through it.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// WriteFile writes a safetensors file atomically: to a temporary file in the
// same folder, then renamed over path, so a failure leaves any previous file
// intact.
func WriteFile(path string, tensors []Tensor, metadata map[string]string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("safetensors: %w", err)
	}
	// Streamed through a small buffer: the file is never held whole in memory.
	bw := bufio.NewWriterSize(tmp, 64<<10)
	err = Write(bw, tensors, metadata)
	if err == nil {
		err = bw.Flush()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("safetensors: %w", err)
	}
	return nil
}
