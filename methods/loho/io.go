package loho

import (
	"encoding/binary"
	"fmt"
	"github.com/qtune/qtune/internal/fsx"
	"math"
	"strings"

	"github.com/qtune/qtune/format/safetensors"
	"github.com/qtune/qtune/kernels"
)

// SparseFile is the file name of a saved set of sparse deltas.
const SparseFile = "sparse_delta.safetensors"

// The sparse-delta file is a safetensors file with, per adapted matrix
// (GGUF tensor name T, rows in the model's order):
//
//	T.shape    I32 [2]      (Out, In)
//	T.indices  I32 [nnz]    flat row-major positions o·In + c, ascending
//	T.values   F32 [nnz]    the delta at those positions
//
// and metadata "format": "qtune-sparse-delta", "version": "1" plus whatever
// the writer adds (mask seed, ratio). W_eff = W + S.
const sparseFormat = "qtune-sparse-delta"

// WriteSparse writes ds to path atomically.
func WriteSparse(path string, ds []*Sparse, meta map[string]string) error {
	md := map[string]string{"format": sparseFormat, "version": "1"}
	for k, v := range meta {
		md[k] = v
	}
	var ts []safetensors.Tensor
	for _, s := range ds {
		idx := s.Entries()
		ts = append(ts,
			safetensors.Tensor{Name: s.Target + ".shape", DType: "I32", Shape: []int64{2}, Data: i32Bytes([]int32{int32(s.Out), int32(s.In)})},
			safetensors.Tensor{Name: s.Target + ".indices", DType: "I32", Shape: []int64{int64(len(idx))}, Data: i32Bytes(idx)},
			safetensors.Tensor{Name: s.Target + ".values", DType: "F32", Shape: []int64{int64(len(s.Val))}, Data: f32Bytes(s.Val)})
	}
	if err := safetensors.WriteFile(path, ts, md); err != nil {
		return fmt.Errorf("loho: %w", err)
	}
	return nil
}

// ReadSparse reads a file written by WriteSparse.
func ReadSparse(path string, pool *kernels.Pool, shape func(target string) (out, in int, err error)) ([]*Sparse, map[string]string, error) {
	b, err := fsx.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("loho: %w", err)
	}
	f, err := safetensors.Parse(b)
	if err != nil {
		return nil, nil, fmt.Errorf("loho: %s: %w", path, err)
	}
	if f.Metadata["format"] != sparseFormat {
		return nil, nil, fmt.Errorf("loho: %s: not a sparse-delta file (format %q)", path, f.Metadata["format"])
	}
	// Every tensor belongs to a complete entry: one that does not would be
	// skipped unread (its values never checked), and a file of none applies
	// nothing.
	for _, t := range f.Tensors {
		target, ok := "", false
		for _, suf := range []string{".shape", ".indices", ".values"} {
			if target, ok = strings.CutSuffix(t.Name, suf); ok {
				break
			}
		}
		if _, has := f.Tensor(target + ".shape"); !ok || !has {
			return nil, nil, fmt.Errorf("loho: %s: tensor %q is not part of a sparse delta (T.shape, T.indices, T.values)", path, t.Name)
		}
	}
	if len(f.Tensors) == 0 {
		return nil, nil, fmt.Errorf("loho: %s holds no sparse deltas", path)
	}
	var ds []*Sparse
	for _, t := range f.Tensors {
		target, ok := strings.CutSuffix(t.Name, ".shape")
		if !ok {
			continue
		}
		it, ok1 := f.Tensor(target + ".indices")
		vt, ok2 := f.Tensor(target + ".values")
		if !ok1 || !ok2 || t.DType != "I32" || len(t.Data) != 8 || it.DType != "I32" || vt.DType != "F32" {
			return nil, nil, fmt.Errorf("loho: %s: entry %q is incomplete or mistyped", path, target)
		}
		dims := i32s(t.Data)
		if dims[0] <= 0 || dims[1] <= 0 {
			return nil, nil, fmt.Errorf("loho: %s: %s has shape %v", path, target, dims)
		}
		// The model says what the shape must be, before anything is sized
		// by the file's numbers ([2^30, 2^30] allocated 4 GB first).
		if shape != nil {
			out, in, err := shape(target)
			if err != nil {
				return nil, nil, fmt.Errorf("loho: %s: %w", path, err)
			}
			if int(dims[0]) != out || int(dims[1]) != in {
				return nil, nil, fmt.Errorf("loho: %s: %s is %dx%d, the model's matrix %dx%d", path, target, dims[0], dims[1], out, in)
			}
		}
		vals := f32s(vt.Data)
		for j, x := range vals {
			if f := float64(x); math.IsNaN(f) || math.IsInf(f, 0) {
				return nil, nil, fmt.Errorf("loho: %s: %s.values: value %d is %v", path, target, j, x)
			}
		}
		s, err := FromEntries(target, int(dims[0]), int(dims[1]), i32s(it.Data), vals, pool)
		if err != nil {
			return nil, nil, fmt.Errorf("%w (in %s)", err, path)
		}
		ds = append(ds, s)
	}
	return ds, f.Metadata, nil
}

func i32Bytes(v []int32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], uint32(x))
	}
	return b
}

func f32Bytes(v []float32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return b
}

func i32s(b []byte) []int32 {
	v := make([]int32, len(b)/4)
	for i := range v {
		v[i] = int32(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return v
}

func f32s(b []byte) []float32 {
	v := make([]float32, len(b)/4)
	for i := range v {
		v[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return v
}
