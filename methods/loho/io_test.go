package loho

import (
	"encoding/binary"
	"math"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qtune/qtune/format/safetensors"
)

// TestSparseFileDamaged: a sparse-delta file with no deltas, or with tensors
// that belong to no complete entry (an orphan .values holding NaN, say), is
// refused naming the file and the tensor. Both were accepted: the first
// applied nothing, the second skipped the tensor without reading it.
func TestSparseFileDamaged(t *testing.T) {
	f32 := func(v ...float32) []byte {
		b := make([]byte, 4*len(v))
		for i, x := range v {
			binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
		}
		return b
	}
	i32 := func(v ...int32) []byte {
		b := make([]byte, 4*len(v))
		for i, x := range v {
			binary.LittleEndian.PutUint32(b[4*i:], uint32(x))
		}
		return b
	}
	meta := map[string]string{"format": sparseFormat, "version": "1"}
	entry := []safetensors.Tensor{
		{Name: "blk.0.attn_q.weight.shape", DType: "I32", Shape: []int64{2}, Data: i32(2, 2)},
		{Name: "blk.0.attn_q.weight.indices", DType: "I32", Shape: []int64{1}, Data: i32(3)},
		{Name: "blk.0.attn_q.weight.values", DType: "F32", Shape: []int64{1}, Data: f32(0.5)},
	}
	for _, c := range []struct {
		name string
		ts   []safetensors.Tensor
		want string
	}{
		{"no tensors", nil, "no sparse deltas"},
		{"orphan values", []safetensors.Tensor{
			{Name: "blk.1.attn_q.weight.values", DType: "F32", Shape: []int64{1}, Data: f32(float32(math.NaN()))},
		}, "blk.1.attn_q.weight.values"},
		{"entry and an orphan", append(append([]safetensors.Tensor(nil), entry...),
			safetensors.Tensor{Name: "blk.1.ffn_up.weight.indices", DType: "I32", Shape: []int64{1}, Data: i32(0)}),
			"blk.1.ffn_up.weight.indices"},
		{"unknown tensor", append(append([]safetensors.Tensor(nil), entry...),
			safetensors.Tensor{Name: "blk.0.attn_q.weight.scale", DType: "F32", Shape: []int64{1}, Data: f32(1)}),
			"blk.0.attn_q.weight.scale"},
	} {
		p := filepath.Join(t.TempDir(), SparseFile)
		if err := safetensors.WriteFile(p, c.ts, meta); err != nil {
			t.Fatal(err)
		}
		_, _, err := ReadSparse(p, nil, nil)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), p) {
			t.Errorf("%s: %v", c.name, err)
		}
	}
	p := filepath.Join(t.TempDir(), SparseFile)
	if err := safetensors.WriteFile(p, entry, meta); err != nil {
		t.Fatal(err)
	}
	if ds, _, err := ReadSparse(p, nil, nil); err != nil || len(ds) != 1 {
		t.Errorf("a complete entry: %d deltas, %v", len(ds), err)
	}
}
