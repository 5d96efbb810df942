package tensor

import (
	"fmt"

	"github.com/qtune/qtune/quant"
)

// Tensor is a typed view of bytes. Data is not owned: it usually aliases a
// read-only memory-mapped file and must not be written.
type Tensor struct {
	Name  string
	Type  quant.Type
	Shape []int64 // ggml order: Shape[0] innermost
	Data  []byte
}

// Elems is the number of elements.
func (t Tensor) Elems() int64 {
	n := int64(1)
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// Cols is the length of one row (Shape[0]); Rows is the product of the rest.
func (t Tensor) Cols() int {
	if len(t.Shape) == 0 {
		return 1
	}
	return int(t.Shape[0])
}

// Rows is the number of rows of Cols elements.
func (t Tensor) Rows() int {
	r := int64(1)
	for _, d := range t.Shape[1:] {
		r *= d
	}
	return int(r)
}

// RowBytes is the byte length of one row; it is undefined for NF4, whose
// scales live in a tensor-level side table (use quant.DequantizeRange).
func (t Tensor) RowBytes() int {
	in, err := quant.Lookup(t.Type)
	if err != nil {
		return 0
	}
	return t.Cols() / in.BlockSize * in.TypeSize
}

// Check verifies that Data has exactly the size the type and shape call for.
func (t Tensor) Check() error {
	want, err := quant.Bytes(t.Type, t.Elems())
	if err != nil {
		return fmt.Errorf("tensor %q: %w", t.Name, err)
	}
	if int64(len(t.Data)) != want {
		return fmt.Errorf("tensor %q: %d bytes of data, %s %v needs %d", t.Name, len(t.Data), t.Type, t.Shape, want)
	}
	return nil
}

// ShapeString renders the shape in ggml order, e.g. "[64 512]".
func (t Tensor) ShapeString() string { return fmt.Sprint(t.Shape) }
