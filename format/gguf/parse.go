package gguf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"

	"github.com/qtune/qtune/quant"
)

// Limits applied while parsing (ollama's hardening limits, formats.md §1).
const (
	MaxStringLen  = 16 << 20 // bytes in one string
	MaxArrayLen   = 64 << 20 // elements in one array
	MaxDims       = 4        // dimensions of a tensor
	MaxNameLen    = 64       // bytes in a tensor name
	MaxArrayDepth = 8        // nesting of arrays inside arrays
)

// Magic is the first four bytes of every GGUF file.
const Magic = "GGUF"

// DefaultAlignment applies when general.alignment is absent.
const DefaultAlignment = 32

// KeyAlignment is the metadata key holding the data alignment.
const KeyAlignment = "general.alignment"

// ErrFormat matches every error Parse returns for malformed input.
var ErrFormat = errors.New("gguf: malformed file")

// formatError keeps the message of its inner error and matches both ErrFormat
// and whatever the inner error wraps.
type formatError struct{ err error }

func (e *formatError) Error() string   { return e.err.Error() }
func (e *formatError) Unwrap() []error { return []error{ErrFormat, e.err} }

func errf(format string, args ...any) error {
	return &formatError{fmt.Errorf("gguf: "+format, args...)}
}

// File is a parsed GGUF file. Offsets are absolute positions in the parsed
// bytes.
type File struct {
	Version    uint32
	Alignment  int64
	KV         []KV         // in file order
	Tensors    []TensorInfo // in file order
	DataOffset int64        // start of the tensor data section

	kvIndex     map[string]int
	tensorIndex map[string]int
}

// TensorInfo describes one tensor. Shape is in ggml's ne order: Shape[0] is
// the innermost (contiguous) dimension, so a row-major (out, in) matrix has
// Shape [in, out].
type TensorInfo struct {
	Name   string
	Type   quant.Type
	Shape  []int64
	Offset int64 // absolute offset of the data in the file
	Size   int64 // bytes
}

// Elements returns the product of the shape (1 for a scalar).
func (t TensorInfo) Elements() int64 {
	n := int64(1)
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

type reader struct {
	data []byte
	pos  int
	ctx  string // prefix for error messages, e.g. `key "x": `
}

func (r *reader) errf(format string, args ...any) error {
	return errf("%s"+format, append([]any{r.ctx}, args...)...)
}

func (r *reader) remaining() int { return len(r.data) - r.pos }

// need fails unless n more bytes are available.
func (r *reader) need(n int, what string) error {
	if n < 0 || n > r.remaining() {
		return r.errf("%s at offset %d: %w (need %d bytes, %d left)", what, r.pos, io.ErrUnexpectedEOF, n, r.remaining())
	}
	return nil
}

func (r *reader) u8() uint8 { v := r.data[r.pos]; r.pos++; return v }
func (r *reader) u16() uint16 {
	v := binary.LittleEndian.Uint16(r.data[r.pos:])
	r.pos += 2
	return v
}
func (r *reader) u32() uint32 {
	v := binary.LittleEndian.Uint32(r.data[r.pos:])
	r.pos += 4
	return v
}
func (r *reader) u64() uint64 {
	v := binary.LittleEndian.Uint64(r.data[r.pos:])
	r.pos += 8
	return v
}

func (r *reader) readU32(what string) (uint32, error) {
	if err := r.need(4, what); err != nil {
		return 0, err
	}
	return r.u32(), nil
}

func (r *reader) readU64(what string) (uint64, error) {
	if err := r.need(8, what); err != nil {
		return 0, err
	}
	return r.u64(), nil
}

// str reads a gguf_string: u64 length, then the bytes.
func (r *reader) str(what string) (string, error) {
	n, err := r.readU64(what + " length")
	if err != nil {
		return "", err
	}
	if n > MaxStringLen {
		return "", r.errf("%s at offset %d: string length %d exceeds limit %d", what, r.pos-8, n, MaxStringLen)
	}
	if err := r.need(int(n), what); err != nil {
		return "", err
	}
	s := string(r.data[r.pos : r.pos+int(n)])
	r.pos += int(n)
	return s, nil
}

// Parse reads a GGUF file held in data. Tensor data is not copied: use
// File.Data to get a view. The returned File does not keep data.
func Parse(data []byte) (*File, error) {
	r := &reader{data: data}
	if err := r.need(4, "magic"); err != nil {
		return nil, err
	}
	if string(data[:4]) != Magic {
		return nil, errf("bad magic %q, want %q", data[:4], Magic)
	}
	r.pos = 4
	version, err := r.readU32("version")
	if err != nil {
		return nil, err
	}
	switch {
	case version == 0x03000000 || version == 0x02000000:
		return nil, errf("version field 0x%08x: big-endian GGUF files are not supported", version)
	case version != 2 && version != 3:
		return nil, errf("unsupported version %d (want 2 or 3)", version)
	}
	nTensors, err := r.readU64("tensor count")
	if err != nil {
		return nil, err
	}
	nKV, err := r.readU64("metadata count")
	if err != nil {
		return nil, err
	}
	// Each KV takes at least 8 (key length) + 4 (type) + 1 bytes, each tensor
	// info at least 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset).
	const minKV, minTensor = 13, 24
	if nKV > uint64(r.remaining()/minKV) {
		return nil, errf("metadata count %d too large for a file of %d bytes", nKV, len(data))
	}
	if nTensors > uint64(r.remaining()/minTensor) {
		return nil, errf("tensor count %d too large for a file of %d bytes", nTensors, len(data))
	}
	f := &File{Version: version, Alignment: DefaultAlignment}

	f.KV = make([]KV, 0, min(int(nKV), 1024))
	f.kvIndex = make(map[string]int, min(int(nKV), 1024))
	for i := 0; i < int(nKV); i++ {
		key, err := r.str(fmt.Sprintf("metadata %d: key", i))
		if err != nil {
			return nil, err
		}
		if _, dup := f.kvIndex[key]; dup {
			return nil, errf("duplicate metadata key %q", key)
		}
		vt, err := r.readU32(fmt.Sprintf("key %q: value type", key))
		if err != nil {
			return nil, err
		}
		r.ctx = fmt.Sprintf("key %q: ", key)
		v, err := r.value(ValueType(vt), 0)
		r.ctx = ""
		if err != nil {
			return nil, err
		}
		f.kvIndex[key] = len(f.KV)
		f.KV = append(f.KV, KV{Key: key, Type: ValueType(vt), Value: v})
	}

	if kv, ok := f.Get(KeyAlignment); ok {
		a, ok := f.Uint(KeyAlignment)
		if _, isBool := kv.Value.(bool); isBool {
			ok = false
		}
		if !ok || a == 0 || a&(a-1) != 0 || a > 1<<30 {
			return nil, errf("key %q: alignment must be a power of two up to 2^30, got %v (%s)", KeyAlignment, kv.Value, kv.Type)
		}
		f.Alignment = int64(a)
	}

	f.Tensors = make([]TensorInfo, 0, min(int(nTensors), 1024))
	f.tensorIndex = make(map[string]int, min(int(nTensors), 1024))
	rel := make([]uint64, 0, min(int(nTensors), 1024))
	for i := 0; i < int(nTensors); i++ {
		ti, off, err := r.tensorInfo(i)
		if err != nil {
			return nil, err
		}
		if _, dup := f.tensorIndex[ti.Name]; dup {
			return nil, errf("duplicate tensor name %q", ti.Name)
		}
		f.tensorIndex[ti.Name] = len(f.Tensors)
		f.Tensors = append(f.Tensors, ti)
		rel = append(rel, off)
	}

	A := f.Alignment
	end := int64(r.pos)
	f.DataOffset = end + (A-end%A)%A
	fileLen := int64(len(data))
	for i := range f.Tensors {
		t := &f.Tensors[i]
		if rel[i]%uint64(A) != 0 {
			return nil, errf("tensor %q: data offset %d is not a multiple of the alignment %d", t.Name, rel[i], A)
		}
		if rel[i] > uint64(fileLen) || f.DataOffset+int64(rel[i]) > fileLen || t.Size > fileLen-f.DataOffset-int64(rel[i]) {
			if rel[i] > math.MaxInt64/2 {
				return nil, errf("tensor %q: data past end of file (offset %d+%d, size %d, file %d)", t.Name, f.DataOffset, rel[i], t.Size, fileLen)
			}
			return nil, errf("tensor %q: data past end of file (offset %d, size %d, file %d)", t.Name, f.DataOffset+int64(rel[i]), t.Size, fileLen)
		}
		t.Offset = f.DataOffset + int64(rel[i])
	}
	if err := checkOverlap(f.Tensors); err != nil {
		return nil, err
	}
	return f, nil
}

func checkOverlap(ts []TensorInfo) error {
	if len(ts) < 2 {
		return nil
	}
	idx := make([]int, len(ts))
	for i := range idx {
		idx[i] = i
	}
	sort.Slice(idx, func(a, b int) bool { return ts[idx[a]].Offset < ts[idx[b]].Offset })
	for k := 1; k < len(idx); k++ {
		p, q := ts[idx[k-1]], ts[idx[k]]
		if p.Offset+p.Size > q.Offset {
			return errf("tensor %q: data overlaps tensor %q (offsets %d+%d and %d)", q.Name, p.Name, p.Offset, p.Size, q.Offset)
		}
	}
	return nil
}

func (r *reader) tensorInfo(i int) (TensorInfo, uint64, error) {
	name, err := r.str(fmt.Sprintf("tensor %d: name", i))
	if err != nil {
		return TensorInfo{}, 0, err
	}
	if name == "" {
		return TensorInfo{}, 0, errf("tensor %d: empty name", i)
	}
	if len(name) > MaxNameLen {
		return TensorInfo{}, 0, errf("tensor %d: name of %d bytes exceeds limit %d", i, len(name), MaxNameLen)
	}
	nd, err := r.readU32(fmt.Sprintf("tensor %q: n_dims", name))
	if err != nil {
		return TensorInfo{}, 0, err
	}
	if nd > MaxDims {
		return TensorInfo{}, 0, errf("tensor %q: n_dims %d exceeds %d", name, nd, MaxDims)
	}
	if err := r.need(int(nd)*8+4+8, fmt.Sprintf("tensor %q: info", name)); err != nil {
		return TensorInfo{}, 0, err
	}
	shape := make([]int64, nd)
	n := int64(1)
	for j := range shape {
		d := r.u64()
		if d == 0 || d > math.MaxInt64 {
			return TensorInfo{}, 0, errf("tensor %q: dimension %d is %d", name, j, int64(d))
		}
		shape[j] = int64(d)
		if int64(d) > math.MaxInt64/n {
			return TensorInfo{}, 0, errf("tensor %q: shape %v overflows", name, shape[:j+1])
		}
		n *= int64(d)
	}
	typ := quant.Type(r.u32())
	info, err := quant.Lookup(typ)
	if errors.Is(err, quant.ErrUnsupported) {
		return TensorInfo{}, 0, errf("tensor %q: %w", name, err) // a ggml type refused by name (IQ2_XS …)
	}
	if err != nil {
		return TensorInfo{}, 0, errf("tensor %q: %w %d", name, quant.ErrUnknownType, uint32(typ))
	}
	if typ != quant.NF4 && nd > 0 && shape[0]%int64(info.BlockSize) != 0 {
		return TensorInfo{}, 0, errf("tensor %q: row length %d is not a multiple of the %s block size %d", name, shape[0], info.Name, info.BlockSize)
	}
	size, err := quant.Bytes(typ, n)
	if err != nil {
		return TensorInfo{}, 0, errf("tensor %q: %w", name, err)
	}
	off := r.u64()
	return TensorInfo{Name: name, Type: typ, Shape: shape, Size: size}, off, nil
}

// value reads one value of type t.
func (r *reader) value(t ValueType, depth int) (any, error) {
	if t == TypeArray {
		return r.array(depth)
	}
	if t == TypeString {
		return r.str("string")
	}
	if !t.Valid() {
		return nil, r.errf("unknown value type %d", uint32(t))
	}
	if err := r.need(t.scalarSize(), t.String()+" value"); err != nil {
		return nil, err
	}
	switch t {
	case TypeUint8:
		return r.u8(), nil
	case TypeInt8:
		return int8(r.u8()), nil
	case TypeUint16:
		return r.u16(), nil
	case TypeInt16:
		return int16(r.u16()), nil
	case TypeUint32:
		return r.u32(), nil
	case TypeInt32:
		return int32(r.u32()), nil
	case TypeFloat32:
		return math.Float32frombits(r.u32()), nil
	case TypeBool:
		b := r.u8()
		if b > 1 {
			return nil, r.errf("bool value %d at offset %d is not 0 or 1", b, r.pos-1)
		}
		return b == 1, nil
	case TypeUint64:
		return r.u64(), nil
	case TypeInt64:
		return int64(r.u64()), nil
	default: // TypeFloat64
		return math.Float64frombits(r.u64()), nil
	}
}

func (r *reader) array(depth int) (Array, error) {
	if depth >= MaxArrayDepth {
		return Array{}, r.errf("arrays nested deeper than %d", MaxArrayDepth)
	}
	if err := r.need(12, "array header"); err != nil {
		return Array{}, err
	}
	et := ValueType(r.u32())
	count := r.u64()
	if !et.Valid() {
		return Array{}, r.errf("array of unknown value type %d", uint32(et))
	}
	if count > MaxArrayLen {
		return Array{}, r.errf("array length %d exceeds limit %d", count, MaxArrayLen)
	}
	n := int(count)
	if n > r.remaining()/et.minSize() {
		return Array{}, r.errf("array of %d %s at offset %d: %w (%d bytes left)", n, et, r.pos, io.ErrUnexpectedEOF, r.remaining())
	}
	a := Array{Elem: et}
	switch et {
	case TypeUint8:
		s := make([]uint8, n)
		copy(s, r.data[r.pos:])
		r.pos += n
		a.Data = s
	case TypeInt8:
		s := make([]int8, n)
		for i := range s {
			s[i] = int8(r.u8())
		}
		a.Data = s
	case TypeUint16:
		s := make([]uint16, n)
		for i := range s {
			s[i] = r.u16()
		}
		a.Data = s
	case TypeInt16:
		s := make([]int16, n)
		for i := range s {
			s[i] = int16(r.u16())
		}
		a.Data = s
	case TypeUint32:
		s := make([]uint32, n)
		for i := range s {
			s[i] = r.u32()
		}
		a.Data = s
	case TypeInt32:
		s := make([]int32, n)
		for i := range s {
			s[i] = int32(r.u32())
		}
		a.Data = s
	case TypeFloat32:
		s := make([]float32, n)
		for i := range s {
			s[i] = math.Float32frombits(r.u32())
		}
		a.Data = s
	case TypeBool:
		s := make([]bool, n)
		for i := range s {
			b := r.u8()
			if b > 1 {
				return Array{}, r.errf("bool value %d at offset %d is not 0 or 1", b, r.pos-1)
			}
			s[i] = b == 1
		}
		a.Data = s
	case TypeUint64:
		s := make([]uint64, n)
		for i := range s {
			s[i] = r.u64()
		}
		a.Data = s
	case TypeInt64:
		s := make([]int64, n)
		for i := range s {
			s[i] = int64(r.u64())
		}
		a.Data = s
	case TypeFloat64:
		s := make([]float64, n)
		for i := range s {
			s[i] = math.Float64frombits(r.u64())
		}
		a.Data = s
	case TypeString:
		s := make([]string, n)
		for i := range s {
			v, err := r.str("array element")
			if err != nil {
				return Array{}, err
			}
			s[i] = v
		}
		a.Data = s
	case TypeArray:
		s := make([]Array, n)
		for i := range s {
			v, err := r.array(depth + 1)
			if err != nil {
				return Array{}, err
			}
			s[i] = v
		}
		a.Data = s
	}
	return a, nil
}
