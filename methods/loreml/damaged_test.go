package loreml

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/qtune/qtune/format/safetensors"
)

// TestWarmStartScaleRefused: a delta file whose warm_start γ is not finite
// (NaN, inf, or 1e308, which float32 turns into +Inf), or is so large that
// γ·U·V overflows float32, is refused at load naming warm_start. Each was
// applied: the model's outputs became NaN or infinite.
func TestWarmStartScaleRefused(t *testing.T) {
	m := openStories(t)
	li, mod, ok := locate(m, "blk.0.ffn_up.weight")
	if !ok {
		t.Fatal("stories260K has no blk.0.ffn_up.weight")
	}
	w, target := m.Layers[li].Matrix(mod), "blk.0.ffn_up.weight"
	const r = 1
	u := make([]float32, w.Rows*r)
	v := make([]float32, r*w.Cols)
	for i := range u {
		u[i] = 2
	}
	for i := range v {
		v[i] = 3
	}
	for _, ws := range []string{"NaN", "inf", "-1", "1e308", "1e38"} {
		p := filepath.Join(t.TempDir(), FileName)
		err := safetensors.WriteFile(p, []safetensors.Tensor{
			{Name: target + ".warm.U", DType: "F32", Shape: []int64{int64(w.Rows), r}, Data: f32Bytes(u)},
			{Name: target + ".warm.V", DType: "F32", Shape: []int64{r, int64(w.Cols)}, Data: f32Bytes(v)},
		}, map[string]string{"format": fileFormat, "version": "1", "warm_start": ws, "rank": "1", "alpha": "1", "keep_ratio": "0.01"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Load(m, p); err == nil || !strings.Contains(err.Error(), "warm_start") || !strings.Contains(err.Error(), p) {
			t.Errorf("warm_start %s: %v", ws, err)
		}
	}
}
