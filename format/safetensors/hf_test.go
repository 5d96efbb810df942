package safetensors

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const llamaConfig = `{
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "bos_token_id": 1,
  "eos_token_id": [2, 32000],
  "hidden_act": "silu",
  "hidden_size": 64,
  "initializer_range": 0.02,
  "intermediate_size": 172,
  "max_position_embeddings": 512,
  "model_type": "llama",
  "num_attention_heads": 8,
  "num_hidden_layers": 2,
  "num_key_value_heads": 4,
  "rms_norm_eps": 1e-05,
  "rope_scaling": {"rope_type": "llama3", "factor": 8.0},
  "rope_theta": 500000.0,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.45.0",
  "vocab_size": 512
}`

func f32Bytes(vals ...float32) []byte {
	b := make([]byte, 0, 4*len(vals))
	for _, v := range vals {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(v))
	}
	return b
}

// fill returns n f32 values tagged by seed.
func fill(seed, n int) []byte {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(seed) + float32(i)/1024
	}
	return f32Bytes(v...)
}

// TestHFFolder builds a sharded checkpoint folder like the Hub's and reads it
// back the way a loader would: config, index, shards, name map.
func TestHFFolder(t *testing.T) {
	dir := t.TempDir()
	cfgBytes := []byte(llamaConfig)
	if err := os.WriteFile(filepath.Join(dir, "config.json"), cfgBytes, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := ParseConfig(cfgBytes)
	if err != nil {
		t.Fatal(err)
	}
	C, F, L, H, KV, V := cfg.HiddenSize, cfg.IntermediateSize, cfg.NumHiddenLayers, cfg.NumAttentionHeads, cfg.NumKeyValueHeads, cfg.VocabSize
	D := cfg.HeadDim
	if C != 64 || F != 172 || L != 2 || H != 8 || KV != 4 || V != 512 || D != 8 || cfg.RMSNormEps != 1e-5 || cfg.RopeTheta != 500000 ||
		cfg.TorchDType != "bfloat16" || cfg.TieWordEmbeddings || cfg.ModelType != "llama" || cfg.Architectures[0] != "LlamaForCausalLM" ||
		cfg.RopeScaling["rope_type"] != "llama3" || cfg.BOSTokenID != float64(1) || fmt.Sprint(cfg.EOSTokenID) != "[2 32000]" ||
		cfg.MaxPositionEmbeddings != 512 {
		t.Fatalf("config %+v", cfg)
	}
	// Tensors in HF names and shapes (out, in); two shards: embeddings + layer 0, then the rest.
	type spec struct {
		name  string
		shape []int64
	}
	var specs []spec
	specs = append(specs, spec{"model.embed_tokens.weight", []int64{int64(V), int64(C)}})
	for l := 0; l < L; l++ {
		p := fmt.Sprintf("model.layers.%d.", l)
		specs = append(specs,
			spec{p + "input_layernorm.weight", []int64{int64(C)}},
			spec{p + "self_attn.q_proj.weight", []int64{int64(H * D), int64(C)}},
			spec{p + "self_attn.k_proj.weight", []int64{int64(KV * D), int64(C)}},
			spec{p + "self_attn.v_proj.weight", []int64{int64(KV * D), int64(C)}},
			spec{p + "self_attn.o_proj.weight", []int64{int64(C), int64(H * D)}},
			spec{p + "post_attention_layernorm.weight", []int64{int64(C)}},
			spec{p + "mlp.gate_proj.weight", []int64{int64(F), int64(C)}},
			spec{p + "mlp.up_proj.weight", []int64{int64(F), int64(C)}},
			spec{p + "mlp.down_proj.weight", []int64{int64(C), int64(F)}},
		)
	}
	specs = append(specs, spec{"model.norm.weight", []int64{int64(C)}}, spec{"lm_head.weight", []int64{int64(V), int64(C)}})
	shards := [][]Tensor{nil, nil}
	want := map[string][]byte{}
	weightMap := map[string]string{}
	var total int64
	for i, s := range specs {
		n := int64(1)
		for _, d := range s.shape {
			n *= d
		}
		data := fill(i, int(n))
		want[s.name] = data
		k := 0
		if i > 10 {
			k = 1
		}
		shards[k] = append(shards[k], Tensor{Name: s.name, DType: "F32", Shape: s.shape, Data: data})
		weightMap[s.name] = fmt.Sprintf("model-%05d-of-00002.safetensors", k+1)
		total += int64(len(data))
	}
	for k, ts := range shards {
		var buf bytes.Buffer
		if err := Write(&buf, ts, map[string]string{"format": "pt"}); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("model-%05d-of-00002.safetensors", k+1)), buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var ib strings.Builder
	fmt.Fprintf(&ib, "{\n  \"metadata\": {\n    \"total_size\": %d\n  },\n  \"weight_map\": {\n", total)
	for i, s := range specs {
		sep := ","
		if i == len(specs)-1 {
			sep = ""
		}
		fmt.Fprintf(&ib, "    %q: %q%s\n", s.name, weightMap[s.name], sep)
	}
	ib.WriteString("  }\n}\n")
	if err := os.WriteFile(filepath.Join(dir, "model.safetensors.index.json"), []byte(ib.String()), 0o644); err != nil {
		t.Fatal(err)
	}

	// Read it back.
	idxBytes, err := os.ReadFile(filepath.Join(dir, "model.safetensors.index.json"))
	if err != nil {
		t.Fatal(err)
	}
	ix, err := ParseIndex(idxBytes)
	if err != nil {
		t.Fatal(err)
	}
	if ix.TotalSize != total || len(ix.WeightMap) != len(specs) || fmt.Sprint(ix.Shards()) != "[model-00001-of-00002.safetensors model-00002-of-00002.safetensors]" {
		t.Fatalf("index: total %d, %d entries, shards %v", ix.TotalSize, len(ix.WeightMap), ix.Shards())
	}
	files := map[string]*File{}
	for _, sh := range ix.Shards() {
		b, err := os.ReadFile(filepath.Join(dir, sh))
		if err != nil {
			t.Fatal(err)
		}
		if files[sh], err = Parse(b); err != nil {
			t.Fatal(err)
		}
	}
	ggufNames := map[string]bool{}
	for name, sh := range ix.WeightMap {
		tt, ok := files[sh].Tensor(name)
		if !ok || !bytes.Equal(tt.Data, want[name]) {
			t.Errorf("%s: not found in %s or data differs", name, sh)
		}
		g, ok := GGUFName(name)
		if !ok {
			t.Errorf("%s: no GGUF name", name)
			continue
		}
		ggufNames[g] = true
		if back, ok := HFName(g); !ok || back != name {
			t.Errorf("%s -> %s -> %s", name, g, back)
		}
	}
	for _, g := range []string{"token_embd.weight", "output_norm.weight", "output.weight", "blk.1.attn_q.weight", "blk.0.attn_output.weight",
		"blk.1.ffn_gate.weight", "blk.0.ffn_down.weight", "blk.0.ffn_up.weight", "blk.1.attn_norm.weight", "blk.1.ffn_norm.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight"} {
		if !ggufNames[g] {
			t.Errorf("no HF tensor maps to %s", g)
		}
	}
	if len(ggufNames) != len(specs) {
		t.Errorf("%d distinct GGUF names for %d tensors", len(ggufNames), len(specs))
	}
}

func TestNames(t *testing.T) {
	for hf, g := range map[string]string{
		"model.layers.3.self_attn.q_proj.weight":         "blk.3.attn_q.weight",
		"model.layers.12.self_attn.o_proj.weight":        "blk.12.attn_output.weight",
		"model.layers.0.mlp.down_proj.weight":            "blk.0.ffn_down.weight",
		"model.layers.0.self_attn.k_proj.bias":           "blk.0.attn_k.bias",
		"model.layers.7.post_attention_layernorm.weight": "blk.7.ffn_norm.weight",
		"model.embed_tokens.weight":                      "token_embd.weight",
		"lm_head.weight":                                 "output.weight",
		"model.norm.weight":                              "output_norm.weight",
	} {
		if got, ok := GGUFName(hf); !ok || got != g {
			t.Errorf("GGUFName(%q) = %q, %v; want %q", hf, got, ok, g)
		}
		if got, ok := HFName(g); !ok || got != hf {
			t.Errorf("HFName(%q) = %q, %v; want %q", g, got, ok, hf)
		}
	}
	for _, bad := range []string{"", "model.layers.3.self_attn.rotary_emb.inv_freq", "model.layers.x.mlp.up_proj.weight",
		"model.layers.01.mlp.up_proj.weight", "model.layers..mlp.up_proj.weight", "model.layers.-1.mlp.up_proj.weight",
		"model.layers.3.mlp.up_proj", "model.layers.3.mlp.foo.weight", "blk.3.attn_q.weight", "model.embed_tokens"} {
		if g, ok := GGUFName(bad); ok {
			t.Errorf("GGUFName(%q) = %q", bad, g)
		}
	}
	for _, bad := range []string{"", "blk.3.attn_qq.weight", "blk.03.attn_q.weight", "blk.3.attn_q", "token_embd", "model.norm.weight", "blk.3.attn_q.weight.lora_a"} {
		if h, ok := HFName(bad); ok {
			t.Errorf("HFName(%q) = %q", bad, h)
		}
	}
}

func TestPermutation(t *testing.T) {
	// Worked by hand: 2 heads of D = 4. Within a head, GGUF row 2b+a holds HF
	// row a·2+b: GGUF rows 0,1,2,3 hold HF rows 0,2,1,3.
	wantHFForGGUF := []int{0, 2, 1, 3, 4, 6, 5, 7}
	src := []float32{0, 1, 2, 3, 4, 5, 6, 7} // HF order, rows of one value
	dst := PermuteRowsF32(src, 8, 1, 2, false)
	if !slices.Equal(dst, []float32{0, 2, 1, 3, 4, 6, 5, 7}) {
		t.Errorf("HF→GGUF: %v", dst)
	}
	for g, hf := range wantHFForGGUF {
		if GGUFRowForHF(hf, 2, 8) != g || HFRowForGGUF(g, 2, 8) != hf {
			t.Errorf("row %d: GGUFRowForHF(%d) = %d, HFRowForGGUF(%d) = %d", g, hf, GGUFRowForHF(hf, 2, 8), g, HFRowForGGUF(g, 2, 8))
		}
	}
	if back := PermuteRowsF32(dst, 8, 1, 2, true); !slices.Equal(back, src) {
		t.Errorf("GGUF→HF: %v", back)
	}

	// Against llama.cpp's numpy recipe: reshape (H, 2, D/2, C), swap axes 1
	// and 2, reshape back; for several shapes, both directions round-trip.
	for _, c := range []struct{ heads, d, cols int }{{1, 2, 1}, {3, 8, 4}, {4, 16, 6}, {8, 64, 2}, {2, 128, 3}, {1, 6, 2}} {
		rows := c.heads * c.d
		src := make([]float32, rows*c.cols)
		for i := range src {
			src[i] = float32(i*31 + i/7)
		}
		want := make([]float32, len(src))
		for h := 0; h < c.heads; h++ {
			for a := 0; a < 2; a++ {
				for b := 0; b < c.d/2; b++ {
					from := h*c.d + a*(c.d/2) + b // index [h, a, b] of the reshaped array
					to := h*c.d + b*2 + a         // index [h, b, a] after the swap
					copy(want[to*c.cols:(to+1)*c.cols], src[from*c.cols:(from+1)*c.cols])
				}
			}
		}
		got := PermuteRowsF32(src, rows, c.cols, c.heads, false)
		if !slices.Equal(got, want) {
			t.Errorf("%+v: HF→GGUF differs from the numpy recipe", c)
		}
		if back := PermuteRowsF32(got, rows, c.cols, c.heads, true); !slices.Equal(back, src) {
			t.Errorf("%+v: round trip differs", c)
		}
		inPlace := slices.Clone(src)
		PermuteRowsInPlace(inPlace, rows, c.cols, c.heads, false)
		if !slices.Equal(inPlace, want) {
			t.Errorf("%+v: HF→GGUF in place differs from the numpy recipe", c)
		}
		if PermuteRowsInPlace(inPlace, rows, c.cols, c.heads, true); !slices.Equal(inPlace, src) {
			t.Errorf("%+v: round trip in place differs", c)
		}
		for r := 0; r < rows; r++ {
			if HFRowForGGUF(GGUFRowForHF(r, c.heads, rows), c.heads, rows) != r {
				t.Errorf("%+v: row %d does not round-trip", c, r)
			}
		}
	}
	// Bad arguments: -1 from the row maps.
	for _, a := range [][3]int{{8, 2, 8}, {-1, 2, 8}, {0, 3, 8}, {0, 0, 8}, {0, 8, 8}} {
		if GGUFRowForHF(a[0], a[1], a[2]) != -1 || HFRowForGGUF(a[0], a[1], a[2]) != -1 {
			t.Errorf("row map %v accepted", a)
		}
	}
}

func TestConfigErrors(t *testing.T) {
	set := func(kv string) []byte {
		// Replace one "key": value line of llamaConfig.
		key := kv[:strings.Index(kv, ":")]
		lines := strings.Split(llamaConfig, "\n")
		for i, l := range lines {
			if strings.HasPrefix(strings.TrimSpace(l), key+":") {
				if strings.HasSuffix(l, ",") {
					kv += ","
				}
				lines[i] = "  " + kv
				return []byte(strings.Join(lines, "\n"))
			}
		}
		return []byte("{" + kv + "," + llamaConfig[1:]) // absent: add it
	}
	for name, c := range map[string]struct {
		data []byte
		want string
	}{
		"not JSON":        {[]byte("{"), "invalid JSON"},
		"duplicate":       {[]byte(`{"hidden_size": 64, "hidden_size": 128}`), `duplicate key "hidden_size"`},
		"zero hidden":     {set(`"hidden_size": 0`), "hidden_size = 0"},
		"huge hidden":     {set(`"hidden_size": 99999999999`), "hidden_size"},
		"hidden string":   {set(`"hidden_size": "64"`), "cannot unmarshal"},
		"negative layers": {set(`"num_hidden_layers": -2`), "num_hidden_layers = -2"},
		"heads split":     {set(`"num_attention_heads": 7`), "not a multiple of num_attention_heads 7"},
		"kv split":        {set(`"num_key_value_heads": 3`), "not a multiple of num_key_value_heads 3"},
		"zero vocab":      {set(`"vocab_size": 0`), "vocab_size"},
		"eps":             {set(`"rms_norm_eps": 2`), "rms_norm_eps"},
		"negative theta":  {set(`"rope_theta": -1`), "rope_theta"},
		"odd head dim":    {set(`"head_dim": 7`), "odd"},
		"negative ctx":    {set(`"max_position_embeddings": -1`), "max_position_embeddings"},
	} {
		_, err := ParseConfig(c.data)
		if err == nil || !errors.Is(err, ErrFormat) || !strings.HasPrefix(err.Error(), "safetensors: config: ") || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
	}
	// Defaults: kv heads, head_dim, eps, theta; newer "dtype" key.
	c, err := ParseConfig([]byte(`{"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 10, "dtype": "float16"}`))
	if err != nil || c.NumKeyValueHeads != 4 || c.HeadDim != 16 || c.RMSNormEps != 1e-6 || c.RopeTheta != 10000 || c.TorchDType != "float16" {
		t.Errorf("defaults: %+v %v", c, err)
	}
	// An explicit head_dim need not divide hidden_size.
	if c, err := ParseConfig(set(`"head_dim": 12`)); err != nil || c.HeadDim != 12 {
		t.Errorf("explicit head_dim: %v", err)
	}
}

func TestIndexErrors(t *testing.T) {
	for name, c := range map[string]struct {
		data string
		want string
	}{
		"no weight_map": {`{"metadata": {}}`, "no weight_map"},
		"duplicate":     {`{"weight_map": {"a": "x.safetensors", "a": "y.safetensors"}}`, `duplicate key "a"`},
		"path":          {`{"weight_map": {"a": "../x.safetensors"}}`, "not a plain file name"},
		"abs":           {`{"weight_map": {"a": "/etc/passwd"}}`, "not a plain file name"},
		"backslash":     {`{"weight_map": {"a": "..\\x"}}`, "not a plain file name"},
		"empty":         {`{"weight_map": {"a": ""}}`, "not a plain file name"},
		"number":        {`{"weight_map": {"a": 1}}`, "cannot unmarshal"},
		"bad JSON":      {`{"weight_map": `, "invalid JSON"},
	} {
		_, err := ParseIndex([]byte(c.data))
		if err == nil || !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
	}
	ix, err := ParseIndex([]byte(`{"metadata": {"total_size": "123"}, "weight_map": {}}`))
	if err != nil || ix.TotalSize != 123 {
		t.Errorf("string total_size: %+v %v", ix, err)
	}
}

// FuzzParseConfig: no panic; an accepted config satisfies the checks.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(llamaConfig))
	f.Add([]byte(`{"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 10, "head_dim": 6}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConfig(data)
		if err != nil {
			return
		}
		if c.HiddenSize <= 0 || c.NumKeyValueHeads <= 0 || c.NumAttentionHeads%c.NumKeyValueHeads != 0 || c.HeadDim <= 0 || c.HeadDim%2 != 0 {
			t.Fatalf("accepted %+v", c)
		}
	})
}

// FuzzParseIndex: no panic; accepted shard names are plain file names.
func FuzzParseIndex(f *testing.F) {
	f.Add([]byte(`{"metadata": {"total_size": 16}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		ix, err := ParseIndex(data)
		if err != nil {
			return
		}
		for _, s := range ix.Shards() {
			if s == "" || strings.ContainsAny(s, `/\`) || s == ".." {
				t.Fatalf("accepted shard %q", s)
			}
		}
	})
}

func TestGGUFNameFor(t *testing.T) {
	for _, c := range []struct{ arch, hf, want string }{
		{"llama", "model.layers.3.post_attention_layernorm.weight", "blk.3.ffn_norm.weight"},
		{"gemma3", "model.layers.3.post_attention_layernorm.weight", "blk.3.post_attention_norm.weight"},
		{"gemma3", "model.layers.0.pre_feedforward_layernorm.weight", "blk.0.ffn_norm.weight"},
		{"gemma3", "model.layers.1.post_feedforward_layernorm.weight", "blk.1.post_ffw_norm.weight"},
		{"qwen3", "model.layers.2.self_attn.k_norm.weight", "blk.2.attn_k_norm.weight"},
		{"qwen2", "model.layers.2.self_attn.q_proj.bias", "blk.2.attn_q.bias"},
		{"phi3", "model.layers.5.self_attn.qkv_proj.weight", "blk.5.attn_qkv.weight"},
		{"phi3", "model.layers.5.mlp.gate_up_proj.weight", "blk.5.ffn_up.weight"},
		{"phi3", "model.embed_tokens.weight", "token_embd.weight"},
	} {
		if got, ok := GGUFNameFor(c.arch, c.hf); !ok || got != c.want {
			t.Errorf("%s %s: %q, want %q", c.arch, c.hf, got, c.want)
		}
	}
	if _, ok := GGUFNameFor("llama", "model.layers.0.self_attn.qkv_proj.weight"); ok {
		t.Error("llama took Phi-3's fused name")
	}
}
