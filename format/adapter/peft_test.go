package adapter

import (
	"encoding/binary"
	"encoding/json"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/qtune/qtune/format/safetensors"
	"github.com/qtune/qtune/quant"
)

var allKinds = []string{"q", "k", "v", "o", "gate", "up", "down"}

func TestPEFTRoundTrip(t *testing.T) {
	for _, c := range []struct {
		dtype    quant.Type
		rel, abs float64
	}{
		{quant.F32, 0, 0},
		{quant.F16, 1.0 / 2048, 1e-7}, // half an ulp of an 11-bit significand; subnormals below 6e-5
		{quant.BF16, 1.0 / 256, 1e-38},
	} {
		t.Run(c.dtype.String(), func(t *testing.T) {
			for _, rs := range []bool{false, true} {
				a := newAdapter(2, tiny, 4, []int{0, 1, 2}, allKinds)
				a.UseRSLoRA = rs
				dir := t.TempDir()
				if err := WritePEFT(dir, a, tiny.H, tiny.KV, c.dtype); err != nil {
					t.Fatal(err)
				}
				got, err := ReadPEFT(dir, tiny.H, tiny.KV)
				if err != nil {
					t.Fatal(err)
				}
				sameAdapter(t, got, a, c.rel, c.abs)
				if c.dtype == quant.F32 && !reflect.DeepEqual(got, a) {
					t.Fatalf("F32 round trip not identical")
				}
			}
		})
	}
}

// readST parses a safetensors file of a written folder.
func readST(t *testing.T, path string) *safetensors.File {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	f, err := safetensors.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func f32s(t *testing.T, st safetensors.Tensor) []float32 {
	t.Helper()
	if st.DType != "F32" {
		t.Fatalf("%s: dtype %s", st.Name, st.DType)
	}
	v := make([]float32, len(st.Data)/4)
	for i := range v {
		v[i] = math.Float32frombits(binary.LittleEndian.Uint32(st.Data[4*i:]))
	}
	return v
}

// TestPEFTPermutationTiny checks lora_B of q on a hand-made case: 2 heads of
// head size D = 4, rank 2. Row g of B (GGUF order) holds the values
// 10·g + r, so each HF row shows which GGUF row it came from.
func TestPEFTPermutationTiny(t *testing.T) {
	const heads, D, R, C = 2, 4, 2, 3
	rows := heads * D
	q := LoRA{Target: "blk.0.attn_q.weight", In: C, Out: rows, Rank: R, A: make([]float32, R*C), B: make([]float32, rows*R)}
	for g := 0; g < rows; g++ {
		for r := 0; r < R; r++ {
			q.B[g*R+r] = float32(10*g + r)
		}
	}
	for i := range q.A {
		q.A[i] = float32(i) + 0.5
	}
	v := LoRA{Target: "blk.0.attn_v.weight", In: C, Out: rows, Rank: R, A: q.A, B: q.B}
	a := &Adapter{Rank: R, Alpha: 4, Targets: []string{"q", "v"}, Layers: []LoRA{q, v}}
	dir := t.TempDir()
	if err := WritePEFT(dir, a, heads, heads, quant.F32); err != nil {
		t.Fatal(err)
	}
	f := readST(t, filepath.Join(dir, PEFTWeights))
	get := func(name string) []float32 {
		st, ok := f.Tensor(name)
		if !ok {
			t.Fatalf("no tensor %s", name)
		}
		return f32s(t, st)
	}
	hfB := get("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight")

	// Literally: HF rows 0..7 hold GGUF rows 0, 2, 1, 3 | 4, 6, 5, 7.
	wantFrom := []int{0, 2, 1, 3, 4, 6, 5, 7}
	for h, g := range wantFrom {
		for r := 0; r < R; r++ {
			if got := hfB[h*R+r]; got != float32(10*g+r) {
				t.Fatalf("HF row %d col %d = %v, want GGUF row %d (%v)", h, r, got, g, 10*g+r)
			}
		}
	}
	// By the formula of formats.md §3.2: GGUF row 2b + a = HF row a·(D/2) + b, per head.
	for hd := 0; hd < heads; hd++ {
		for a := 0; a < 2; a++ {
			for b := 0; b < D/2; b++ {
				g, h := hd*D+2*b+a, hd*D+a*(D/2)+b
				if hfB[h*R] != float32(10*g) {
					t.Fatalf("head %d a %d b %d: HF row %d holds %v, want GGUF row %d", hd, a, b, h, hfB[h*R], g)
				}
			}
		}
	}
	// lora_A of q and everything of v are unchanged.
	closeSlices(t, "q lora_A", get("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"), q.A, 0, 0)
	closeSlices(t, "v lora_A", get("base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight"), v.A, 0, 0)
	closeSlices(t, "v lora_B", get("base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"), v.B, 0, 0)

	back, err := ReadPEFT(dir, heads, heads)
	if err != nil {
		t.Fatal(err)
	}
	closeSlices(t, "q B back", back.Layers[0].B, q.B, 0, 0)
}

// TestPEFTGQA checks that k is permuted with the kv head count: heads 4,
// kvHeads 2, D 4, so k has 8 rows in 2 heads.
func TestPEFTGQA(t *testing.T) {
	a := newAdapter(3, tiny, 2, []int{0}, []string{"q", "k"})
	dir := t.TempDir()
	if err := WritePEFT(dir, a, tiny.H, tiny.KV, quant.F32); err != nil {
		t.Fatal(err)
	}
	f := readST(t, filepath.Join(dir, PEFTWeights))
	for _, c := range []struct {
		name  string
		l     *LoRA
		heads int
	}{
		{"base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", &a.Layers[0], tiny.H},
		{"base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight", &a.Layers[1], tiny.KV},
	} {
		st, _ := f.Tensor(c.name)
		if want := []int64{int64(c.heads * tiny.D), 2}; !reflect.DeepEqual(st.Shape, want) {
			t.Fatalf("%s shape %v, want %v", c.name, st.Shape, want)
		}
		hf := f32s(t, st)
		D := tiny.D
		for hd := 0; hd < c.heads; hd++ {
			for x := 0; x < 2; x++ {
				for b := 0; b < D/2; b++ {
					g, h := hd*D+2*b+x, hd*D+x*(D/2)+b
					closeSlices(t, c.name, hf[h*2:h*2+2], c.l.B[g*2:g*2+2], 0, 0)
				}
			}
		}
	}
	// Swapped head counts are caught by the head size check.
	err := WritePEFT(t.TempDir(), a, tiny.KV, tiny.H, quant.F32)
	wantErr(t, err, ErrInvalid, "head size")
	_, err = ReadPEFT(dir, tiny.KV, tiny.H)
	wantErr(t, err, ErrInvalid, "head size")
	// Heads that do not divide the rows.
	err = WritePEFT(t.TempDir(), a, 3, 1, quant.F32)
	wantErr(t, err, ErrInvalid, "heads = 3")
	// No head counts: a family whose GGUF and HF orders agree (qwen2,
	// gemma3, …) writes and reads B rows as they are.
	d0 := t.TempDir()
	if err := WritePEFT(d0, a, 0, 0, quant.F32); err != nil {
		t.Fatal(err)
	}
	b0, err := ReadPEFT(d0, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := range a.Layers {
		closeSlices(t, "unpermuted "+a.Layers[i].Target, b0.Layers[i].B, a.Layers[i].B, 0, 0)
	}
}

// TestPEFTNamesShapes checks the names, shapes and dtype PEFT expects, and
// the safetensors metadata.
func TestPEFTNamesShapes(t *testing.T) {
	a := newAdapter(4, tiny, 8, []int{0, 1}, allKinds)
	dir := t.TempDir()
	if err := WritePEFT(dir, a, tiny.H, tiny.KV, quant.F16); err != nil {
		t.Fatal(err)
	}
	f := readST(t, filepath.Join(dir, PEFTWeights))
	want := map[string][]int64{
		"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": {8, 16},
		"base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": {16, 8},
		"base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight": {8, 16},
		"base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight": {8, 8},
		"base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight": {8, 16},
		"base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight": {8, 8},
		"base_model.model.model.layers.0.self_attn.o_proj.lora_A.weight": {8, 16},
		"base_model.model.model.layers.0.self_attn.o_proj.lora_B.weight": {16, 8},
		"base_model.model.model.layers.0.mlp.gate_proj.lora_A.weight":    {8, 16},
		"base_model.model.model.layers.0.mlp.gate_proj.lora_B.weight":    {24, 8},
		"base_model.model.model.layers.0.mlp.up_proj.lora_A.weight":      {8, 16},
		"base_model.model.model.layers.0.mlp.up_proj.lora_B.weight":      {24, 8},
		"base_model.model.model.layers.0.mlp.down_proj.lora_A.weight":    {8, 24},
		"base_model.model.model.layers.0.mlp.down_proj.lora_B.weight":    {16, 8},
	}
	for name, shape := range want {
		for _, n := range []string{name, strings.Replace(name, "layers.0.", "layers.1.", 1)} {
			st, ok := f.Tensor(n)
			if !ok {
				t.Fatalf("no tensor %s", n)
			}
			if !reflect.DeepEqual(st.Shape, shape) || st.DType != "F16" {
				t.Errorf("%s: %s %v, want F16 %v", n, st.DType, st.Shape, shape)
			}
		}
	}
	if len(f.Tensors) != 2*len(want) {
		t.Errorf("%d tensors, want %d", len(f.Tensors), 2*len(want))
	}
	if f.Metadata["format"] != "pt" {
		t.Errorf("metadata %v, want format pt", f.Metadata)
	}
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if strings.Join(names, ",") != "adapter_config.json,adapter_model.safetensors" {
		t.Errorf("folder holds %v (temporary files left?)", names)
	}
}

func TestPEFTConfigKeys(t *testing.T) {
	a := newAdapter(5, tiny, 8, []int{0, 1}, []string{"v", "q"}) // Targets out of order on purpose
	a.Alpha, a.Dropout = 16, 0.05
	dir := t.TempDir()
	if err := WritePEFT(dir, a, tiny.H, tiny.KV, quant.F32); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, PEFTConfig))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"peft_type":               "LORA",
		"task_type":               "CAUSAL_LM",
		"r":                       8.0,
		"lora_alpha":              16.0,
		"target_modules":          []any{"q_proj", "v_proj"},
		"lora_dropout":            0.05,
		"bias":                    "none",
		"fan_in_fan_out":          false,
		"inference_mode":          true,
		"base_model_name_or_path": "meta-llama/Llama-3.2-1B",
		"use_rslora":              false,
		"use_dora":                false,
		"init_lora_weights":       true,
		"modules_to_save":         nil,
		"layers_to_transform":     nil,
		"layers_pattern":          nil,
		"rank_pattern":            map[string]any{},
		"alpha_pattern":           map[string]any{},
	}
	for k, v := range want {
		got, ok := m[k]
		if !ok {
			t.Errorf("adapter_config.json lacks %q", k)
		} else if !reflect.DeepEqual(got, v) {
			t.Errorf("%s = %#v, want %#v", k, got, v)
		}
	}
	// Alpha written as an integer when it is one (PEFT's type hint is int).
	if !strings.Contains(string(b), `"lora_alpha": 16,`) || !strings.Contains(string(b), `"r": 8,`) {
		t.Errorf("config:\n%s", b)
	}

	// A subset of layers gets layers_to_transform.
	a = newAdapter(5, tiny, 2, []int{2, 5}, []string{"q"})
	if err := WritePEFT(dir, a, tiny.H, tiny.KV, quant.F32); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(filepath.Join(dir, PEFTConfig))
	m = nil
	json.Unmarshal(b, &m)
	if !reflect.DeepEqual(m["layers_to_transform"], []any{2.0, 5.0}) {
		t.Errorf("layers_to_transform = %v, want [2 5]", m["layers_to_transform"])
	}
}

// A config as PEFT 0.13 writes it (keys it has and qtune ignores included),
// targets in set order.
const realPEFTConfig = `{
  "alpha_pattern": {},
  "auto_mapping": null,
  "base_model_name_or_path": "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
  "bias": "none",
  "fan_in_fan_out": false,
  "inference_mode": true,
  "init_lora_weights": true,
  "layer_replication": null,
  "layers_pattern": null,
  "layers_to_transform": null,
  "loftq_config": {},
  "lora_alpha": 32,
  "lora_dropout": 0.1,
  "megatron_config": null,
  "megatron_core": "megatron.core",
  "modules_to_save": null,
  "peft_type": "LORA",
  "r": 4,
  "rank_pattern": {},
  "revision": null,
  "target_modules": [
    "v_proj",
    "q_proj"
  ],
  "task_type": "CAUSAL_LM",
  "use_dora": false,
  "use_rslora": true
}`

func TestParsePEFTConfigReal(t *testing.T) {
	c, err := parsePEFTConfig([]byte(realPEFTConfig))
	if err != nil {
		t.Fatal(err)
	}
	want := &peftConfig{rank: 4, alpha: 32, dropout: 0.1, targets: []int{0, 2}, baseModel: "TinyLlama/TinyLlama-1.1B-Chat-v1.0", rsLoRA: true}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("got %+v, want %+v", c, want)
	}
	// The minimal set, with PEFT's defaults for the rest.
	c, err = parsePEFTConfig([]byte(`{"peft_type":"LORA","base_model_name_or_path":null,"target_modules":"all-linear","task_type":"CAUSAL_LM"}`))
	if err != nil {
		t.Fatal(err)
	}
	want = &peftConfig{rank: 8, alpha: 8, targets: []int{0, 1, 2, 3, 4, 5, 6}}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("got %+v, want %+v", c, want)
	}
	for _, c := range []struct {
		json string
		kind error
		sub  string
	}{
		{`[]`, ErrFormat, "adapter_config.json"},
		{`null`, ErrFormat, "not a JSON object"},
		{`{"peft_type":"LORA"} {}`, ErrFormat, "after"},
		{`{"r":8}`, ErrFormat, "no peft_type"},
		{`{"peft_type":"IA3"}`, ErrUnsupported, "IA3"},
		{`{"peft_type":"LORA","task_type":"SEQ_CLS"}`, ErrUnsupported, "SEQ_CLS"},
		{`{"peft_type":"LORA","r":0}`, ErrFormat, "r = 0"},
		{`{"peft_type":"LORA","r":4.5}`, ErrFormat, "r = 4.5"},
		{`{"peft_type":"LORA","r":"x"}`, ErrFormat, "r:"},
		{`{"peft_type":"LORA","lora_alpha":-1}`, ErrUnsupported, "lora_alpha"},
		{`{"peft_type":"LORA","lora_dropout":2}`, ErrFormat, "lora_dropout"},
		{`{"peft_type":"LORA","bias":"all"}`, ErrUnsupported, `bias "all"`},
		{`{"peft_type":"LORA","use_dora":true}`, ErrUnsupported, "DoRA"},
		{`{"peft_type":"LORA","fan_in_fan_out":true}`, ErrUnsupported, "fan_in_fan_out"},
		{`{"peft_type":"LORA","rank_pattern":{"q_proj":4}}`, ErrUnsupported, "rank_pattern"},
		{`{"peft_type":"LORA","modules_to_save":["lm_head"]}`, ErrUnsupported, "modules_to_save"},
		{`{"peft_type":"LORA","target_modules":["q_proj","embed_tokens"]}`, ErrUnsupported, `"embed_tokens": LoRA on the embeddings`},
		{`{"peft_type":"LORA","target_modules":["lm_head"]}`, ErrUnsupported, `"lm_head"`},
		{`{"peft_type":"LORA","target_modules":["c_attn"]}`, ErrUnsupported, `"c_attn"`},
		{`{"peft_type":"LORA","target_modules":7}`, ErrFormat, "target_modules"},
	} {
		_, err := parsePEFTConfig([]byte(c.json))
		wantErr(t, err, c.kind, c.sub)
	}
}

// damage writes a valid PEFT folder, lets f change its tensors or config
// and returns ReadPEFT's error.
func damagePEFT(t *testing.T, tensors func([]safetensors.Tensor) []safetensors.Tensor, config func(string) string) error {
	t.Helper()
	a := newAdapter(6, tiny, 2, []int{0}, []string{"q", "v"})
	dir := t.TempDir()
	if err := WritePEFT(dir, a, tiny.H, tiny.KV, quant.F32); err != nil {
		t.Fatal(err)
	}
	if tensors != nil {
		f := readST(t, filepath.Join(dir, PEFTWeights))
		ts := tensors(f.Tensors)
		if err := writeFileAtomic(filepath.Join(dir, PEFTWeights), func(w io.Writer) error {
			return safetensors.Write(w, ts, nil)
		}); err != nil {
			t.Fatal(err)
		}
	}
	if config != nil {
		b, _ := os.ReadFile(filepath.Join(dir, PEFTConfig))
		os.WriteFile(filepath.Join(dir, PEFTConfig), []byte(config(string(b))), 0o644)
	}
	_, err := ReadPEFT(dir, tiny.H, tiny.KV)
	return err
}

func TestReadPEFTDamaged(t *testing.T) {
	drop := func(name string) func([]safetensors.Tensor) []safetensors.Tensor {
		return func(ts []safetensors.Tensor) []safetensors.Tensor {
			var out []safetensors.Tensor
			for _, x := range ts {
				if x.Name != name {
					out = append(out, x)
				}
			}
			return out
		}
	}
	edit := func(name string, f func(*safetensors.Tensor)) func([]safetensors.Tensor) []safetensors.Tensor {
		return func(ts []safetensors.Tensor) []safetensors.Tensor {
			for i := range ts {
				if ts[i].Name == name {
					f(&ts[i])
				}
			}
			return ts
		}
	}
	add := func(x safetensors.Tensor) func([]safetensors.Tensor) []safetensors.Tensor {
		return func(ts []safetensors.Tensor) []safetensors.Tensor { return append(ts, x) }
	}
	const qA = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
	const qB = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
	four := make([]byte, 16)
	for _, c := range []struct {
		name    string
		tensors func([]safetensors.Tensor) []safetensors.Tensor
		config  func(string) string
		kind    error
		subs    []string
	}{
		{"missing B", drop(qB), nil, ErrFormat, []string{qB, "missing"}},
		{"missing A", drop(qA), nil, ErrFormat, []string{qA, "missing"}},
		{"A rank", edit(qA, func(x *safetensors.Tensor) { x.Shape = []int64{4, 8}; x.Data = x.Data[:128] }), nil, ErrFormat, []string{"do not share the rank"}},
		{"rank vs r", nil, func(s string) string { return strings.Replace(s, `"r": 2`, `"r": 4`, 1) }, ErrFormat, []string{"r = 4"}},
		{"3-d", edit(qA, func(x *safetensors.Tensor) { x.Shape = []int64{2, 16, 1} }), nil, ErrFormat, []string{"want (R, in) and (out, R)"}},
		{"unknown suffix", add(safetensors.Tensor{Name: "base_model.model.model.layers.0.self_attn.q_proj.lora_C.weight", DType: "F32", Shape: []int64{4}, Data: four}), nil, ErrFormat, []string{"unexpected suffix"}},
		{"no prefix", add(safetensors.Tensor{Name: "model.layers.0.self_attn.q_proj.lora_A.weight", DType: "F32", Shape: []int64{4}, Data: four}), nil, ErrFormat, []string{"base_model.model."}},
		{"dora", add(safetensors.Tensor{Name: "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector", DType: "F32", Shape: []int64{4}, Data: four}), nil, ErrUnsupported, []string{"DoRA"}},
		{"lm_head", add(safetensors.Tensor{Name: "base_model.model.lm_head.lora_A.weight", DType: "F32", Shape: []int64{4}, Data: four}), nil, ErrUnsupported, []string{"output head"}},
		{"embed", add(safetensors.Tensor{Name: "base_model.model.model.embed_tokens.lora_embedding_A", DType: "F32", Shape: []int64{4}, Data: four}), nil, ErrUnsupported, []string{"embeddings"}},
		{"norm", add(safetensors.Tensor{Name: "base_model.model.model.layers.0.input_layernorm.lora_A.weight", DType: "F32", Shape: []int64{4}, Data: four}), nil, ErrUnsupported, []string{"not a linear layer"}},
		{"dtype", edit(qA, func(x *safetensors.Tensor) { x.DType = "I32" }), nil, ErrUnsupported, []string{"dtype I32"}},
		{"not targeted", nil, func(s string) string { return strings.Replace(s, `"q_proj",`, ``, 1) }, ErrFormat, []string{"target_modules does not list", "q_proj"}},
		{"config", nil, func(s string) string { return s[:10] }, ErrFormat, []string{PEFTConfig}},
		{"no tensors", func([]safetensors.Tensor) []safetensors.Tensor { return nil }, nil, ErrFormat, []string{"no LoRA tensors"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := damagePEFT(t, c.tensors, c.config)
			wantErr(t, err, c.kind, c.subs...)
		})
	}

	// Broken safetensors bytes: the safetensors error stays reachable.
	dir := t.TempDir()
	if err := WritePEFT(dir, newAdapter(6, tiny, 2, []int{0}, []string{"v"}), tiny.H, tiny.KV, quant.F32); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, PEFTWeights), []byte("garbage!"), 0o644)
	_, err := ReadPEFT(dir, tiny.H, tiny.KV)
	wantErr(t, err, safetensors.ErrFormat, PEFTWeights)

	// Only a pickle.
	os.Remove(filepath.Join(dir, PEFTWeights))
	os.WriteFile(filepath.Join(dir, "adapter_model.bin"), []byte("x"), 0o644)
	_, err = ReadPEFT(dir, tiny.H, tiny.KV)
	wantErr(t, err, ErrUnsupported, "adapter_model.bin")

	// No folder.
	_, err = ReadPEFT(filepath.Join(dir, "nope"), tiny.H, tiny.KV)
	wantErr(t, err, fs.ErrNotExist)
}

func TestWritePEFTRejects(t *testing.T) {
	a := newAdapter(8, tiny, 2, []int{0}, []string{"v"})
	wantErr(t, WritePEFT(t.TempDir(), a, tiny.H, tiny.KV, quant.Q8_0), ErrInvalid, "Q8_0")
	a.Layers[0].B[3] = 1e6
	wantErr(t, WritePEFT(t.TempDir(), a, tiny.H, tiny.KV, quant.F16), ErrInvalid, "overflows F16")
	if err := WritePEFT(t.TempDir(), a, tiny.H, tiny.KV, quant.BF16); err != nil {
		t.Errorf("BF16 holds 1e6: %v", err)
	}
	// Overwriting an existing folder works and leaves no temporary files.
	dir := t.TempDir()
	for i := 0; i < 2; i++ {
		if err := WritePEFT(dir, a, tiny.H, tiny.KV, quant.F32); err != nil {
			t.Fatal(err)
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Errorf("%d entries after two writes", len(entries))
	}
}

// TestPEFTMatchesModelLoader: an adapter made for the HF model, read by
// ReadPEFT, has its q/k rows where format/safetensors' loader permutation
// puts the rows of the HF base weights, so W + scale·B·A stays consistent.
func TestPEFTMatchesModelLoader(t *testing.T) {
	a := newAdapter(9, tiny, 2, []int{0}, []string{"q", "k"})
	dir := t.TempDir()
	if err := WritePEFT(dir, a, tiny.H, tiny.KV, quant.F32); err != nil {
		t.Fatal(err)
	}
	f := readST(t, filepath.Join(dir, PEFTWeights))
	for i, c := range []struct {
		name  string
		heads int
	}{
		{"base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", tiny.H},
		{"base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight", tiny.KV},
	} {
		st, _ := f.Tensor(c.name)
		hf := f32s(t, st)
		gguf := safetensors.PermuteRowsF32(hf, int(st.Shape[0]), int(st.Shape[1]), c.heads, false)
		closeSlices(t, c.name, gguf, a.Layers[i].B, 0, 0)
	}
}

// Writing an adapter encodes it as the file is written: the PEFT and GGUF
// writers allocate a small part of the adapter's size, not a copy of it
// (an 11 MiB adapter here; rank-64 LoRA on 110M is 45 MiB).
func TestWritersStream(t *testing.T) {
	big := dims{C: 256, F: 768, H: 8, KV: 4, D: 32}
	a := newAdapter(3, big, 64, []int{0, 1, 2, 3}, allKinds)
	var size int64
	for _, l := range a.Layers {
		size += 4 * int64(len(l.A)+len(l.B))
	}
	dir := t.TempDir()
	for name, write := range map[string]func() error{
		"PEFT": func() error { return WritePEFT(dir, a, big.H, big.KV, quant.F32) },
		"GGUF": func() error { return WriteGGUFFile(dir+"/a.gguf", a, quant.F32, "llama") },
	} {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		if err := write(); err != nil {
			t.Fatal(err)
		}
		runtime.ReadMemStats(&after)
		if alloc := int64(after.TotalAlloc - before.TotalAlloc); alloc > size/4 {
			t.Errorf("%s: writing a %d-byte adapter allocated %d bytes", name, size, alloc)
		}
	}
	got, err := ReadPEFT(dir, big.H, big.KV)
	if err != nil {
		t.Fatal(err)
	}
	sameAdapter(t, got, a, 0, 0)
	g, err := ReadGGUFFile(dir + "/a.gguf")
	if err != nil {
		t.Fatal(err)
	}
	sameAdapter(t, g, a, 0, 0)
}
