package adapter

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/qtune/qtune/quant"
)

func TestMLXRoundTrip(t *testing.T) {
	a := newAdapter(21, tiny, 4, []int{2, 3}, allKinds)
	a.Alpha = 8 // scale 2, exact both ways
	dir := t.TempDir()
	if err := WriteMLX(dir, a, 4, tiny.H, tiny.KV, quant.F32); err != nil {
		t.Fatal(err)
	}
	got, err := ReadMLX(dir, tiny.H, tiny.KV)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, a) {
		sameAdapter(t, got, a, 0, 0)
		t.Fatal("not identical")
	}

	// rsLoRA becomes a plain scale: same Scale(), Alpha = scale·R.
	a.UseRSLoRA = true
	if err := WriteMLX(dir, a, 4, tiny.H, tiny.KV, quant.F16); err != nil {
		t.Fatal(err)
	}
	got, err = ReadMLX(dir, tiny.H, tiny.KV)
	if err != nil {
		t.Fatal(err)
	}
	if got.UseRSLoRA || math.Abs(got.Scale()-a.Scale()) > 1e-12 {
		t.Errorf("scale %v rs %v, want %v false", got.Scale(), got.UseRSLoRA, a.Scale())
	}
	got.Alpha, got.UseRSLoRA = a.Alpha, true
	sameAdapter(t, got, a, 1.0/2048, 1e-7)
}

func TestMLXLayout(t *testing.T) {
	a := newAdapter(22, tiny, 2, []int{1}, []string{"q", "down"})
	dir := t.TempDir()
	if err := WriteMLX(dir, a, 3, tiny.H, tiny.KV, quant.F32); err != nil {
		t.Fatal(err)
	}
	f := readST(t, filepath.Join(dir, MLXWeights))
	q, down := &a.Layers[0], &a.Layers[1]
	for name, shape := range map[string][]int64{
		"model.layers.1.self_attn.q_proj.lora_a": {16, 2},
		"model.layers.1.self_attn.q_proj.lora_b": {2, 16},
		"model.layers.1.mlp.down_proj.lora_a":    {24, 2},
		"model.layers.1.mlp.down_proj.lora_b":    {2, 16},
	} {
		st, ok := f.Tensor(name)
		if !ok || !reflect.DeepEqual(st.Shape, shape) {
			t.Fatalf("%s: %v %v, want %v", name, ok, st.Shape, shape)
		}
	}
	// lora_a = Aᵀ; lora_b = Bᵀ with q's columns in HF order.
	st, _ := f.Tensor("model.layers.1.mlp.down_proj.lora_a")
	la := f32s(t, st)
	for r := 0; r < 2; r++ {
		for i := 0; i < down.In; i++ {
			if la[i*2+r] != down.A[r*down.In+i] {
				t.Fatalf("down lora_a[%d, %d] is not A[%d, %d]", i, r, r, i)
			}
		}
	}
	st, _ = f.Tensor("model.layers.1.self_attn.q_proj.lora_b")
	lb := f32s(t, st)
	D := tiny.D
	for h := 0; h < tiny.H; h++ {
		for x := 0; x < 2; x++ {
			for b := 0; b < D/2; b++ {
				g, hf := h*D+2*b+x, h*D+x*(D/2)+b
				for r := 0; r < 2; r++ {
					if lb[r*q.Out+hf] != q.B[g*2+r] {
						t.Fatalf("q lora_b[%d, %d] is not B[GGUF row %d, %d]", r, hf, g, r)
					}
				}
			}
		}
	}
	b, _ := os.ReadFile(filepath.Join(dir, MLXConfig))
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"fine_tune_type": "lora",
		"num_layers":     2.0, // blocks 1, 2 of 3
		"model":          "meta-llama/Llama-3.2-1B",
		"lora_parameters": map[string]any{
			"rank": 2.0, "scale": 8.0, "dropout": 0.05,
			"keys": []any{"self_attn.q_proj", "mlp.down_proj"},
		},
	}
	if !reflect.DeepEqual(m, want) {
		t.Errorf("config %v, want %v", m, want)
	}
	wantErr(t, WriteMLX(dir, a, 1, tiny.H, tiny.KV, quant.F32), ErrInvalid, "beyond")
}

func TestReadMLXDamaged(t *testing.T) {
	a := newAdapter(23, tiny, 2, []int{0}, []string{"v"})
	for _, c := range []struct {
		name   string
		config string
		kind   error
		sub    string
	}{
		{"dora", `{"fine_tune_type":"dora","lora_parameters":{"rank":2,"scale":1}}`, ErrUnsupported, "dora"},
		{"key", `{"lora_parameters":{"rank":2,"scale":1,"keys":["embed_tokens"]}}`, ErrUnsupported, "embed_tokens"},
		{"rank", `{"lora_parameters":{"rank":4,"scale":1}}`, ErrFormat, "rank 2, want 4"},
		{"scale", `{"lora_parameters":{"rank":2,"scale":-1}}`, ErrUnsupported, "scale"},
		{"not listed", `{"lora_parameters":{"rank":2,"scale":1,"keys":["self_attn.q_proj"]}}`, ErrFormat, "keys does not list"},
		{"json", `{`, ErrFormat, MLXConfig},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := WriteMLX(dir, a, 1, tiny.H, tiny.KV, quant.F32); err != nil {
				t.Fatal(err)
			}
			os.WriteFile(filepath.Join(dir, MLXConfig), []byte(c.config), 0o644)
			_, err := ReadMLX(dir, tiny.H, tiny.KV)
			wantErr(t, err, c.kind, c.sub)
		})
	}
	// Defaults: scale 20 when absent, rank from the tensors.
	dir := t.TempDir()
	if err := WriteMLX(dir, a, 1, tiny.H, tiny.KV, quant.F32); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, MLXConfig), []byte(`{"num_layers":16}`), 0o644)
	got, err := ReadMLX(dir, tiny.H, tiny.KV)
	if err != nil || got.Scale() != 20 || strings.Join(got.Targets, ",") != "v" {
		t.Errorf("defaults: %+v, %v", got, err)
	}
}
