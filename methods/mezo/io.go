package mezo

import (
	"encoding/binary"
	"fmt"
	"github.com/qtune/qtune/internal/fsx"
	"math"

	"github.com/qtune/qtune/format/safetensors"
)

// WriteTensors writes ts as an F32 safetensors file (names and shapes as
// given, metadata in the header), atomically: a temporary file renamed.
func WriteTensors(path string, ts []Tensor, meta map[string]string) error {
	st := make([]safetensors.Tensor, len(ts))
	for i, t := range ts {
		shape := []int64{int64(len(t.Data))}
		if t.Shape != nil {
			shape = shape[:0]
			for _, d := range t.Shape {
				shape = append(shape, int64(d))
			}
		}
		b := make([]byte, 4*len(t.Data))
		for j, v := range t.Data {
			binary.LittleEndian.PutUint32(b[4*j:], math.Float32bits(v))
		}
		st[i] = safetensors.Tensor{Name: t.Name, DType: "F32", Shape: shape, Data: b}
	}
	if err := safetensors.WriteFile(path, st, meta); err != nil {
		return fmt.Errorf("mezo: %w", err)
	}
	return nil
}

// ReadTensors reads a file written by WriteTensors (F32 tensors only).
func ReadTensors(path string) ([]Tensor, map[string]string, error) {
	b, err := fsx.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("mezo: %w", err)
	}
	f, err := safetensors.Parse(b)
	if err != nil {
		return nil, nil, fmt.Errorf("mezo: %s: %w", path, err)
	}
	if len(f.Tensors) == 0 {
		return nil, nil, fmt.Errorf("mezo: %s holds no tensors", path)
	}
	ts := make([]Tensor, 0, len(f.Tensors))
	for _, t := range f.Tensors {
		if t.DType != "F32" {
			return nil, nil, fmt.Errorf("mezo: %s: tensor %q is %s, want F32", path, t.Name, t.DType)
		}
		v := make([]float32, len(t.Data)/4)
		for j := range v {
			v[j] = math.Float32frombits(binary.LittleEndian.Uint32(t.Data[4*j:]))
			if f := float64(v[j]); math.IsNaN(f) || math.IsInf(f, 0) {
				return nil, nil, fmt.Errorf("mezo: %s: tensor %q: value %d is %v", path, t.Name, j, v[j])
			}
		}
		shape := make([]int, len(t.Shape))
		for j, d := range t.Shape {
			shape[j] = int(d)
		}
		ts = append(ts, Tensor{Name: t.Name, Data: v, Shape: shape})
	}
	return ts, f.Metadata, nil
}
