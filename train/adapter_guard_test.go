package train

import (
	"bytes"
	"encoding/binary"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unsafe"

	"github.com/qtune/qtune/data"
	"github.com/qtune/qtune/format/adapter"
	"github.com/qtune/qtune/format/safetensors"
	"github.com/qtune/qtune/internal/shared"
	"github.com/qtune/qtune/methods/loho"
	"github.com/qtune/qtune/methods/lora"
	"github.com/qtune/qtune/methods/loreml"
	"github.com/qtune/qtune/methods/mezo"
	"github.com/qtune/qtune/model"
	"github.com/qtune/qtune/quant"
)

func f32le(v ...float32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return b
}

// Adapters of every kind holding NaN or infinity (or an alpha that
// overflows) are refused at load with the tensor's name; they used to be
// applied (eval printed loss NaN, exit 0). Empty ZO and LoReML files are
// refused; a sparse delta's declared shape is checked against the model
// before anything is sized by it.
func TestDamagedAdaptersRefused(t *testing.T) {
	m := openStories(t)
	dir := t.TempDir()
	// A real LoRA adapter of stories260K, then damaged copies.
	cfg := smallRun(t, dir)
	cfg.Iters, cfg.StepsPerEval, cfg.SaveEvery = 1, 0, 0
	if _, err := Run(t.Context(), cfg, nil, nil); err != nil {
		t.Fatal(err)
	}
	good, err := adapter.ReadGGUFFile(filepath.Join(dir, lora.GGUFFile))
	if err != nil {
		t.Fatal(err)
	}
	for name, damage := range map[string]func(a *adapter.Adapter) string{
		"NaN in A":    func(a *adapter.Adapter) string { a.Layers[1].A[3] = float32(math.NaN()); return "lora_a" },
		"Inf in B":    func(a *adapter.Adapter) string { a.Layers[0].B[0] = float32(math.Inf(-1)); return "lora_b" },
		"alpha 1e308": func(a *adapter.Adapter) string { a.Alpha = 1e308; return "overflows" },
	} {
		a := *good
		a.Layers = append([]adapter.LoRA(nil), good.Layers...)
		for i := range a.Layers {
			a.Layers[i].A = append([]float32(nil), a.Layers[i].A...)
			a.Layers[i].B = append([]float32(nil), a.Layers[i].B...)
		}
		want := damage(&a)
		p := t.TempDir() // PEFT: alpha is a JSON number (GGUF's f32 cannot hold 1e308)
		heads, kvHeads := m.AdapterHeads()
		if err := adapter.WritePEFT(p, &a, heads, kvHeads, quant.F32); err != nil {
			t.Fatal(err)
		}
		if _, err := lora.Load(m, p); err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "blk.") {
			t.Errorf("%s: %v", name, err)
		}
	}
	// Zeroth-order tensors and LoReML deltas.
	zo := filepath.Join(t.TempDir(), "zo.safetensors")
	mezo.WriteTensors(zo, []mezo.Tensor{{Name: "blk.0.attn_norm.weight", Data: []float32{1, float32(math.NaN())}, Shape: []int{2}}}, nil)
	if _, _, err := mezo.ReadTensors(zo); err == nil || !strings.Contains(err.Error(), "blk.0.attn_norm.weight") {
		t.Errorf("NaN in a ZO tensor: %v", err)
	}
	empty := filepath.Join(t.TempDir(), "empty.safetensors")
	safetensors.WriteFile(empty, nil, map[string]string{"format": "qtune"})
	if _, _, err := mezo.ReadTensors(empty); err == nil || !strings.Contains(err.Error(), "no tensors") {
		t.Errorf("empty ZO file: %v", err)
	}
	if _, err := loreml.Parse(m, mustRead(t, empty)); err == nil {
		t.Error("empty LoReML file accepted")
	}
	lr := filepath.Join(t.TempDir(), loreml.FileName)
	safetensors.WriteFile(lr, []safetensors.Tensor{
		{Name: "blk.0.attn_q.weight.delta.indices", DType: "I32", Shape: []int64{1}, Data: make([]byte, 4)},
		{Name: "blk.0.attn_q.weight.delta.values", DType: "F32", Shape: []int64{1}, Data: f32le(float32(math.Inf(1)))},
	}, map[string]string{"format": "qtune-loreml", "version": "1", "warm_start": "1", "rank": "0", "alpha": "0", "keep_ratio": "0.01"})
	if _, err := loreml.Parse(m, mustRead(t, lr)); err == nil || !strings.Contains(err.Error(), "delta.values") {
		t.Errorf("Inf in a LoReML delta: %v", err)
	}
	// A sparse delta declaring [2^30, 2^30]: refused against the model's
	// shape, not allocated.
	sp := filepath.Join(t.TempDir(), loho.SparseFile)
	safetensors.WriteFile(sp, []safetensors.Tensor{
		{Name: "blk.0.attn_q.weight.shape", DType: "I32", Shape: []int64{2}, Data: f32le(math.Float32frombits(1<<30), math.Float32frombits(1<<30))},
		{Name: "blk.0.attn_q.weight.indices", DType: "I32", Shape: []int64{1}, Data: make([]byte, 4)},
		{Name: "blk.0.attn_q.weight.values", DType: "F32", Shape: []int64{1}, Data: f32le(0.5)},
	}, map[string]string{"format": "qtune-sparse-delta"})
	shape := func(target string) (int, int, error) {
		w, err := matrixOf(m, target)
		if err != nil {
			return 0, 0, err
		}
		return w.Rows, w.Cols, nil
	}
	if _, _, err := loho.ReadSparse(sp, nil, shape); err == nil || !strings.Contains(err.Error(), "1073741824x1073741824") {
		t.Errorf("huge sparse shape: %v", err)
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A NaN in a base model's weights is refused by quantize (Q8_0 used to
// swallow it) and by eval (loss NaN, exit 0), naming what it found.
func TestNaNBaseWeightsRefused(t *testing.T) {
	src := filepath.Join(t.TempDir(), "m.gguf")
	b, err := os.ReadFile(shared.Path(t, "assets", "models", "stories260K.gguf"))
	if err != nil {
		t.Fatal(err)
	}
	m0, err := model.Open(shared.Path(t, "assets", "models", "stories260K.gguf"), model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var off int
	for _, tt := range m0.Tensors {
		if tt.Name == "blk.1.attn_q.weight" && tt.Type == quant.F32 {
			off = int(uintptr(unsafe.Pointer(&tt.Data[40])) - uintptr(unsafe.Pointer(&m0.Tensors[0].Data[0]))) // relative to the first tensor
			break
		}
	}
	first := m0.Tensors[0]
	base := bytes.Index(b, first.Data[:64])
	m0.Close()
	if off == 0 || base < 0 {
		t.Skip("stories260K's layout changed")
	}
	binary.LittleEndian.PutUint32(b[base+off:], math.Float32bits(float32(math.NaN())))
	os.WriteFile(src, b, 0o644)
	m, err := model.Open(src, model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if _, err := model.Quantize(m, io.Discard, quant.Q8_0); err == nil || !strings.Contains(err.Error(), "blk.1.attn_q.weight") || !strings.Contains(err.Error(), "NaN") {
		t.Errorf("quantize: %v", err)
	}
	recs := []data.Record{{Text: "Once upon a time, there was a little girl named Lily."}}
	if _, err := EvalLM(t.Context(), m, recs, data.Text, EvalOptions{}); err == nil || !strings.Contains(err.Error(), "non-finite") {
		t.Errorf("eval: %v", err)
	}
}
