package gguf

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"

	"github.com/qtune/qtune/quant"
)

// WriteTensor is a tensor to write. Write must write exactly Size bytes, which
// must equal quant.Bytes(Type, product of Shape). Shape is in ne order.
type WriteTensor struct {
	Name  string
	Type  quant.Type
	Shape []int64
	Size  int64
	Write func(w io.Writer) error
}

// BytesTensor is a WriteTensor whose data is b.
func BytesTensor(name string, t quant.Type, shape []int64, b []byte) WriteTensor {
	return WriteTensor{Name: name, Type: t, Shape: shape, Size: int64(len(b)), Write: func(w io.Writer) error {
		_, err := w.Write(b)
		return err
	}}
}

// ErrInvalid matches errors Write returns for metadata or tensors it refuses
// to write (as opposed to errors from w or from a tensor's Write function).
var ErrInvalid = errors.New("gguf: invalid write request")

func invalidf(format string, args ...any) error {
	return &invalidError{fmt.Errorf("gguf: write: "+format, args...)}
}

type invalidError struct{ err error }

func (e *invalidError) Error() string   { return e.err.Error() }
func (e *invalidError) Unwrap() []error { return []error{ErrInvalid, e.err} }

// writeBufSize is the buffer between Write and w; tensor data streams through it.
const writeBufSize = 256 << 10

// Write writes a GGUF file: header, kv in the given order, tensor infos in the
// given order, then each tensor's data, each padded with zeros to the
// alignment (as ggml does, so the file length is a multiple of it).
//
// The alignment is alignment when > 0, else the general.alignment value in kv,
// else 32. When alignment > 0 differs from a general.alignment in kv, Write
// fails; when it is not 32 and kv has no general.alignment, Write appends a
// u32 general.alignment pair so that readers find the data.
//
// Everything is validated before the first byte is written; data is streamed,
// so the caller need not hold it in memory.
func Write(w io.Writer, version uint32, kv []KV, tensors []WriteTensor, alignment int64) error {
	if version != 2 && version != 3 {
		return invalidf("unsupported version %d (want 2 or 3)", version)
	}
	if alignment < 0 {
		return invalidf("negative alignment %d", alignment)
	}
	seen := make(map[string]bool, len(kv))
	var kvAlign int64
	for _, p := range kv {
		if seen[p.Key] {
			return invalidf("duplicate metadata key %q", p.Key)
		}
		seen[p.Key] = true
		if len(p.Key) > MaxStringLen {
			return invalidf("metadata key of %d bytes exceeds limit", len(p.Key))
		}
		if err := checkValue(p.Type, p.Value, 0); err != nil {
			return invalidf("key %q: %w", p.Key, err)
		}
		if p.Key == KeyAlignment {
			// ggml reads general.alignment as a u32 and aborts on another type.
			a, ok := toUint(p.Value)
			if p.Type != TypeUint32 {
				ok = false
			}
			if !ok || a == 0 || a&(a-1) != 0 || a > 1<<30 {
				return invalidf("key %q: alignment must be a u32 power of two up to 2^30, got %v (%s)", KeyAlignment, p.Value, p.Type)
			}
			kvAlign = int64(a)
		}
	}
	switch {
	case alignment > 0 && kvAlign > 0 && alignment != kvAlign:
		return invalidf("alignment %d differs from %s = %d", alignment, KeyAlignment, kvAlign)
	case alignment > 0:
		if alignment&(alignment-1) != 0 || alignment > 1<<30 {
			return invalidf("alignment %d is not a power of two up to 2^30", alignment)
		}
		if kvAlign == 0 && alignment != DefaultAlignment {
			kv = append(kv[:len(kv):len(kv)], KV{KeyAlignment, TypeUint32, uint32(alignment)})
		}
	case kvAlign > 0:
		alignment = kvAlign
	default:
		alignment = DefaultAlignment
	}

	names := make(map[string]bool, len(tensors))
	offsets := make([]uint64, len(tensors))
	var off int64
	for i, t := range tensors {
		if err := checkTensor(t); err != nil {
			return err
		}
		if names[t.Name] {
			return invalidf("duplicate tensor name %q", t.Name)
		}
		names[t.Name] = true
		offsets[i] = uint64(off)
		padded := t.Size + (alignment-t.Size%alignment)%alignment
		if padded < 0 || off > math.MaxInt64-padded {
			return invalidf("tensor %q: data section overflows", t.Name)
		}
		off += padded
	}

	bw := bufio.NewWriterSize(w, writeBufSize)
	e := &enc{w: bw}
	e.bytes([]byte(Magic))
	e.u32(version)
	e.u64(uint64(len(tensors)))
	e.u64(uint64(len(kv)))
	for _, p := range kv {
		e.str(p.Key)
		e.u32(uint32(p.Type))
		e.value(p.Type, p.Value)
	}
	for i, t := range tensors {
		e.str(t.Name)
		e.u32(uint32(len(t.Shape)))
		for _, d := range t.Shape {
			e.u64(uint64(d))
		}
		e.u32(uint32(t.Type))
		e.u64(offsets[i])
	}
	e.pad(alignment)
	if e.err != nil {
		return fmt.Errorf("gguf: write header: %w", e.err)
	}
	for _, t := range tensors {
		cw := &countWriter{w: bw}
		if err := t.Write(cw); err != nil {
			return fmt.Errorf("gguf: write tensor %q: %w", t.Name, err)
		}
		if cw.err != nil {
			return fmt.Errorf("gguf: write tensor %q: %w", t.Name, cw.err)
		}
		if cw.n != t.Size {
			return invalidf("tensor %q: Write wrote %d bytes, want %d", t.Name, cw.n, t.Size)
		}
		e.n += cw.n
		e.pad(alignment)
		if e.err != nil {
			return fmt.Errorf("gguf: write tensor %q: %w", t.Name, e.err)
		}
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("gguf: write: %w", err)
	}
	return nil
}

func checkTensor(t WriteTensor) error {
	if t.Name == "" {
		return invalidf("tensor with empty name")
	}
	if len(t.Name) > MaxNameLen {
		return invalidf("tensor %q: name of %d bytes exceeds limit %d", t.Name, len(t.Name), MaxNameLen)
	}
	if len(t.Shape) > MaxDims {
		return invalidf("tensor %q: %d dimensions exceed %d", t.Name, len(t.Shape), MaxDims)
	}
	info, err := quant.Lookup(t.Type)
	if errors.Is(err, quant.ErrUnsupported) {
		return invalidf("tensor %q: %w", t.Name, err)
	}
	if err != nil {
		return invalidf("tensor %q: %w %d", t.Name, quant.ErrUnknownType, uint32(t.Type))
	}
	n := int64(1)
	for j, d := range t.Shape {
		if d <= 0 {
			return invalidf("tensor %q: dimension %d is %d", t.Name, j, d)
		}
		if d > math.MaxInt64/n {
			return invalidf("tensor %q: shape %v overflows", t.Name, t.Shape)
		}
		n *= d
	}
	if t.Type != quant.NF4 && len(t.Shape) > 0 && t.Shape[0]%int64(info.BlockSize) != 0 {
		return invalidf("tensor %q: row length %d is not a multiple of the %s block size %d", t.Name, t.Shape[0], info.Name, info.BlockSize)
	}
	size, err := quant.Bytes(t.Type, n)
	if err != nil {
		return invalidf("tensor %q: %w", t.Name, err)
	}
	if size != t.Size {
		return invalidf("tensor %q: size %d bytes, want %d for %s %v", t.Name, t.Size, size, t.Type, t.Shape)
	}
	if t.Write == nil {
		return invalidf("tensor %q: nil Write function", t.Name)
	}
	return nil
}

// checkValue verifies that v is the Go value for type t and that it is within
// the limits Parse applies.
func checkValue(t ValueType, v any, depth int) error {
	ok := false
	switch t {
	case TypeUint8:
		_, ok = v.(uint8)
	case TypeInt8:
		_, ok = v.(int8)
	case TypeUint16:
		_, ok = v.(uint16)
	case TypeInt16:
		_, ok = v.(int16)
	case TypeUint32:
		_, ok = v.(uint32)
	case TypeInt32:
		_, ok = v.(int32)
	case TypeFloat32:
		_, ok = v.(float32)
	case TypeBool:
		_, ok = v.(bool)
	case TypeUint64:
		_, ok = v.(uint64)
	case TypeInt64:
		_, ok = v.(int64)
	case TypeFloat64:
		_, ok = v.(float64)
	case TypeString:
		var s string
		s, ok = v.(string)
		if ok && len(s) > MaxStringLen {
			return fmt.Errorf("string of %d bytes exceeds limit %d", len(s), MaxStringLen)
		}
	case TypeArray:
		a, isArr := v.(Array)
		if !isArr {
			break
		}
		if depth >= MaxArrayDepth {
			return fmt.Errorf("arrays nested deeper than %d", MaxArrayDepth)
		}
		n := a.Len()
		if n < 0 {
			return fmt.Errorf("array of %s holds %T", a.Elem, a.Data)
		}
		if n > MaxArrayLen {
			return fmt.Errorf("array length %d exceeds limit %d", n, MaxArrayLen)
		}
		switch d := a.Data.(type) {
		case []string:
			for _, s := range d {
				if len(s) > MaxStringLen {
					return fmt.Errorf("string of %d bytes exceeds limit %d", len(s), MaxStringLen)
				}
			}
		case []Array:
			for _, x := range d {
				if err := checkValue(TypeArray, x, depth+1); err != nil {
					return err
				}
			}
		}
		return nil
	default:
		return fmt.Errorf("unknown value type %d", uint32(t))
	}
	if !ok {
		return fmt.Errorf("value of Go type %T does not match value type %s", v, t)
	}
	return nil
}

// enc writes little-endian values, keeping the first error and the count.
type enc struct {
	w   *bufio.Writer
	n   int64
	err error
	buf [8]byte
}

func (e *enc) bytes(b []byte) {
	if e.err != nil {
		return
	}
	n, err := e.w.Write(b)
	e.n += int64(n)
	e.err = err
}

func (e *enc) u8(v uint8) { e.buf[0] = v; e.bytes(e.buf[:1]) }
func (e *enc) u16(v uint16) {
	binary.LittleEndian.PutUint16(e.buf[:], v)
	e.bytes(e.buf[:2])
}
func (e *enc) u32(v uint32) {
	binary.LittleEndian.PutUint32(e.buf[:], v)
	e.bytes(e.buf[:4])
}
func (e *enc) u64(v uint64) {
	binary.LittleEndian.PutUint64(e.buf[:], v)
	e.bytes(e.buf[:8])
}
func (e *enc) str(s string) {
	e.u64(uint64(len(s)))
	if e.err == nil {
		n, err := e.w.WriteString(s)
		e.n += int64(n)
		e.err = err
	}
}

var zeros [256]byte

func (e *enc) pad(a int64) {
	for p := (a - e.n%a) % a; p > 0; {
		k := min(p, int64(len(zeros)))
		e.bytes(zeros[:k])
		p -= k
	}
}

func b2u(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

// value encodes v (already checked by checkValue).
func (e *enc) value(t ValueType, v any) {
	switch t {
	case TypeUint8:
		e.u8(v.(uint8))
	case TypeInt8:
		e.u8(uint8(v.(int8)))
	case TypeUint16:
		e.u16(v.(uint16))
	case TypeInt16:
		e.u16(uint16(v.(int16)))
	case TypeUint32:
		e.u32(v.(uint32))
	case TypeInt32:
		e.u32(uint32(v.(int32)))
	case TypeFloat32:
		e.u32(math.Float32bits(v.(float32)))
	case TypeBool:
		e.u8(b2u(v.(bool)))
	case TypeString:
		e.str(v.(string))
	case TypeUint64:
		e.u64(v.(uint64))
	case TypeInt64:
		e.u64(uint64(v.(int64)))
	case TypeFloat64:
		e.u64(math.Float64bits(v.(float64)))
	case TypeArray:
		a := v.(Array)
		e.u32(uint32(a.Elem))
		e.u64(uint64(a.Len()))
		switch d := a.Data.(type) {
		case []uint8:
			e.bytes(d)
		case []int8:
			for _, x := range d {
				e.u8(uint8(x))
			}
		case []uint16:
			for _, x := range d {
				e.u16(x)
			}
		case []int16:
			for _, x := range d {
				e.u16(uint16(x))
			}
		case []uint32:
			for _, x := range d {
				e.u32(x)
			}
		case []int32:
			for _, x := range d {
				e.u32(uint32(x))
			}
		case []float32:
			for _, x := range d {
				e.u32(math.Float32bits(x))
			}
		case []bool:
			for _, x := range d {
				e.u8(b2u(x))
			}
		case []string:
			for _, x := range d {
				e.str(x)
			}
		case []uint64:
			for _, x := range d {
				e.u64(x)
			}
		case []int64:
			for _, x := range d {
				e.u64(uint64(x))
			}
		case []float64:
			for _, x := range d {
				e.u64(math.Float64bits(x))
			}
		case []Array:
			for _, x := range d {
				e.value(TypeArray, x)
			}
		}
	}
}

type countWriter struct {
	w   io.Writer
	n   int64
	err error
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	if err != nil && c.err == nil {
		c.err = err
	}
	return n, err
}
