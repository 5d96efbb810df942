package synth

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/qtune/qtune/format/gguf"
	"github.com/qtune/qtune/format/safetensors"
	"github.com/qtune/qtune/quant"
	"github.com/qtune/qtune/tokenizer"
)

func TestFamiliesOrderAndLookup(t *testing.T) {
	var names []string
	for _, f := range Families() {
		names = append(names, f.Name)
		g, ok := FamilyByName(f.Name)
		if !ok || g.Name != f.Name || g.Arch != f.Arch {
			t.Errorf("FamilyByName(%q) = %v, %v", f.Name, g.Name, ok)
		}
		if err := f.check(); err != nil {
			t.Errorf("preset %s: %v", f.Name, err)
		}
	}
	want := []string{"llama", "llama3", "mistral", "qwen2", "qwen3", "gemma3", "phi3", "phi4mini", "smollm3"}
	if !slices.Equal(names, want) {
		t.Errorf("Families() = %v, want %v", names, want)
	}
	if _, ok := FamilyByName("gpt2"); ok {
		t.Error("FamilyByName(gpt2) found a family")
	}
	fs := Families()
	fs[0].Tok.Specials[0] = "changed"
	if f, _ := FamilyByName("llama"); f.Tok.Specials[0] != "<unk>" {
		t.Error("Families() shares its slices with the presets")
	}
}

// ggufFile writes f's GGUF in typ and parses it back.
func ggufFile(t *testing.T, f Family, typ quant.Type, seed uint64) (*gguf.File, []byte) {
	t.Helper()
	path := filepath.Join(t.TempDir(), f.Name+".gguf")
	if err := f.WriteGGUF(path, typ, seed); err != nil {
		t.Fatalf("%s: WriteGGUF: %v", f.Name, err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	gf, err := gguf.Parse(data)
	if err != nil {
		t.Fatalf("%s: parse: %v", f.Name, err)
	}
	return gf, data
}

// wantGGUF lists the tensors llama.cpp loads for f, with their ne shapes.
func wantGGUF(f Family) map[string][]int64 {
	C, F, H, K, D, V := int64(f.Dim), int64(f.Hidden), int64(f.Heads), int64(f.KVHeads), int64(f.HeadDim), int64(f.Vocab)
	w := map[string][]int64{
		"token_embd.weight":  {C, V},
		"output_norm.weight": {C},
	}
	if !f.Tied {
		w["output.weight"] = []int64{C, V}
	}
	switch f.Rope.Type {
	case "llama3":
		w["rope_freqs.weight"] = []int64{D / 2}
	case "longrope":
		w["rope_factors_long.weight"] = []int64{int64(f.RopeDims() / 2)}
		w["rope_factors_short.weight"] = []int64{int64(f.RopeDims() / 2)}
	}
	for l := 0; l < f.Layers; l++ {
		p := fmt.Sprintf("blk.%d.", l)
		w[p+"attn_norm.weight"] = []int64{C}
		w[p+"attn_output.weight"] = []int64{H * D, C}
		w[p+"ffn_norm.weight"] = []int64{C}
		w[p+"ffn_down.weight"] = []int64{F, C}
		if f.Fused {
			w[p+"attn_qkv.weight"] = []int64{C, (H + 2*K) * D}
			w[p+"ffn_up.weight"] = []int64{C, 2 * F}
		} else {
			w[p+"attn_q.weight"] = []int64{C, H * D}
			w[p+"attn_k.weight"] = []int64{C, K * D}
			w[p+"attn_v.weight"] = []int64{C, K * D}
			w[p+"ffn_gate.weight"] = []int64{C, F}
			w[p+"ffn_up.weight"] = []int64{C, F}
		}
		if f.QKVBias {
			w[p+"attn_q.bias"] = []int64{H * D}
			w[p+"attn_k.bias"] = []int64{K * D}
			w[p+"attn_v.bias"] = []int64{K * D}
		}
		if f.QKNorm {
			w[p+"attn_q_norm.weight"] = []int64{D}
			w[p+"attn_k_norm.weight"] = []int64{D}
		}
		if f.Gemma {
			w[p+"post_attention_norm.weight"] = []int64{C}
			w[p+"post_ffw_norm.weight"] = []int64{C}
		}
	}
	return w
}

// wantKeys are metadata keys llama.cpp needs (or the converter writes) for f.
func wantKeys(f Family) []string {
	a := f.Arch + "."
	keys := []string{"general.architecture", "general.file_type", "general.quantization_version",
		a + "block_count", a + "context_length", a + "embedding_length", a + "feed_forward_length",
		a + "attention.head_count", a + "attention.head_count_kv", a + "attention.layer_norm_rms_epsilon", a + "rope.freq_base",
		"tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type",
		"tokenizer.ggml.eos_token_id", "tokenizer.ggml.add_bos_token"}
	if f.HeadDimKey {
		keys = append(keys, a+"attention.key_length", a+"attention.value_length")
	}
	if f.Arch == "llama" || f.Arch == "smollm3" || f.Fused {
		keys = append(keys, a+"rope.dimension_count")
	}
	if f.Arch == "llama" || f.Arch == "smollm3" {
		keys = append(keys, a+"vocab_size")
	}
	if f.Gemma {
		keys = append(keys, a+"attention.sliding_window", a+"rope.freq_base_swa", "tokenizer.ggml.add_space_prefix")
	}
	if f.Fused {
		keys = append(keys, a+"rope.scaling.original_context_length", a+"rope.scaling.attn_factor", a+"attention.sliding_window")
	}
	return keys
}

func f32At(b []byte, i int) float32 { return math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:])) }

func f32sOf(b []byte) []float32 {
	out := make([]float32, len(b)/4)
	for i := range out {
		out[i] = f32At(b, i)
	}
	return out
}

// TestWriteGGUF: every family's GGUF parses, holds exactly the tensors
// llama.cpp loads with their shapes and types, and the metadata it needs.
func TestWriteGGUF(t *testing.T) {
	for _, f := range Families() {
		for _, typ := range []quant.Type{quant.F32, quant.F16, quant.Q8_0, quant.Q4_0, quant.Q4_K, quant.Q6_K} {
			gf, _ := ggufFile(t, f, typ, 7)
			want := wantGGUF(f)
			var got []string
			for _, ti := range gf.Tensors {
				got = append(got, ti.Name)
				shape, ok := want[ti.Name]
				if !ok {
					t.Errorf("%s %s: unexpected tensor %s", f.Name, typ, ti.Name)
					continue
				}
				if !slices.Equal(ti.Shape, shape) {
					t.Errorf("%s %s: %s shape %v, want %v", f.Name, typ, ti.Name, ti.Shape, shape)
				}
				in, _ := quant.Lookup(typ)
				wantType := typ
				if len(shape) == 1 || strings.HasSuffix(ti.Name, "norm.weight") || shape[0]%int64(in.BlockSize) != 0 {
					wantType = quant.F32
				}
				if ti.Type != wantType {
					t.Errorf("%s %s: %s type %s, want %s", f.Name, typ, ti.Name, ti.Type, wantType)
				}
			}
			if len(got) != len(want) {
				t.Errorf("%s %s: %d tensors %v, want %d", f.Name, typ, len(got), got, len(want))
			}
			for _, k := range wantKeys(f) {
				if _, ok := gf.Get(k); !ok {
					t.Errorf("%s %s: no metadata %s", f.Name, typ, k)
				}
			}
			if a, _ := gf.String("general.architecture"); a != f.Arch {
				t.Errorf("%s: architecture %q, want %q", f.Name, a, f.Arch)
			}
			if n, _ := gf.Uint(f.Arch + ".block_count"); n != uint64(f.Layers) {
				t.Errorf("%s: block_count %d", f.Name, n)
			}
			toks, _ := gf.Strings("tokenizer.ggml.tokens")
			if len(toks) != f.Vocab {
				t.Errorf("%s: %d tokens, want %d", f.Name, len(toks), f.Vocab)
			}
			if b, _ := gf.Get("tokenizer.ggml.add_bos_token"); b.Value != f.Tok.AddBOS {
				t.Errorf("%s: add_bos_token %v, want %v", f.Name, b.Value, f.Tok.AddBOS)
			}
		}
	}
}

// TestWriteHF: every family's folder has a config.json with the family's
// keys, F32 safetensors with HF names and (out, in) shapes, and a tokenizer
// FromHFDir reads with the same ids and flags as the GGUF's.
func TestWriteHF(t *testing.T) {
	for _, f := range Families() {
		dir := t.TempDir()
		if err := f.WriteHF(dir, 7); err != nil {
			t.Fatalf("%s: WriteHF: %v", f.Name, err)
		}
		cb, err := os.ReadFile(filepath.Join(dir, "config.json"))
		if err != nil {
			t.Fatal(err)
		}
		var cfg map[string]any
		if err := json.Unmarshal(cb, &cfg); err != nil {
			t.Fatalf("%s: config.json: %v", f.Name, err)
		}
		pc, err := safetensors.ParseConfig(cb)
		if err != nil {
			t.Fatalf("%s: ParseConfig: %v", f.Name, err)
		}
		if pc.HiddenSize != f.Dim || pc.NumHiddenLayers != f.Layers || pc.NumKeyValueHeads != f.KVHeads || pc.HeadDim != f.HeadDim ||
			pc.VocabSize != f.Vocab || pc.TieWordEmbeddings != f.Tied || pc.ModelType != f.ModelType || pc.Architectures[0] != f.HFClass {
			t.Errorf("%s: config %+v", f.Name, pc)
		}
		need := []string{"rope_theta", "rms_norm_eps", "max_position_embeddings", "intermediate_size", "num_attention_heads"}
		if f.HeadDimKey {
			need = append(need, "head_dim")
		}
		switch {
		case f.Gemma:
			need = append(need, "sliding_window", "layer_types", "sliding_window_pattern", "rope_local_base_freq", "query_pre_attn_scalar", "hidden_activation")
		case f.NoRopeInterval > 0:
			need = append(need, "no_rope_layers")
		case f.Fused:
			need = append(need, "original_max_position_embeddings")
		}
		if f.PartialRotary > 0 {
			need = append(need, "partial_rotary_factor")
		}
		for _, k := range need {
			if _, ok := cfg[k]; !ok {
				t.Errorf("%s: config.json has no %s", f.Name, k)
			}
		}
		if rs, _ := cfg["rope_scaling"].(map[string]any); f.Rope.Type != "" {
			typ, _ := rs["rope_type"].(string)
			if typ == "" {
				typ, _ = rs["type"].(string)
			}
			if typ != f.Rope.Type {
				t.Errorf("%s: rope_scaling %v", f.Name, cfg["rope_scaling"])
			}
		}

		sb, err := os.ReadFile(filepath.Join(dir, "model.safetensors"))
		if err != nil {
			t.Fatal(err)
		}
		sf, err := safetensors.Parse(sb)
		if err != nil {
			t.Fatalf("%s: safetensors: %v", f.Name, err)
		}
		want := map[string][]int64{}
		for name, ne := range wantGGUF(f) {
			if strings.HasPrefix(name, "rope_") {
				continue // generated by the converter, not in the checkpoint
			}
			hf := hfNameOf(t, f, name)
			shape := slices.Clone(ne)
			slices.Reverse(shape)
			want[hf] = shape
		}
		for _, st := range sf.Tensors {
			shape, ok := want[st.Name]
			if !ok {
				t.Errorf("%s: unexpected HF tensor %s", f.Name, st.Name)
				continue
			}
			if st.DType != "F32" || !slices.Equal(st.Shape, shape) {
				t.Errorf("%s: %s %s %v, want F32 %v", f.Name, st.Name, st.DType, st.Shape, shape)
			}
			delete(want, st.Name)
		}
		for n := range want {
			t.Errorf("%s: HF folder lacks %s", f.Name, n)
		}

		ht, err := tokenizer.FromHFDir(dir)
		if err != nil {
			t.Fatalf("%s: FromHFDir: %v", f.Name, err)
		}
		gf, _ := ggufFile(t, f, quant.F32, 7)
		gt, err := tokenizer.FromGGUF(gf)
		if err != nil {
			t.Fatalf("%s: FromGGUF: %v", f.Name, err)
		}
		if ht.VocabSize() != f.Vocab || ht.BOS() != gt.BOS() || ht.EOS() != gt.EOS() || ht.UNK() != gt.UNK() || ht.AddBOS() != f.Tok.AddBOS || gt.AddBOS() != f.Tok.AddBOS {
			t.Errorf("%s: HF tokenizer vocab %d bos %d eos %d unk %d addBOS %v; GGUF bos %d eos %d unk %d addBOS %v",
				f.Name, ht.VocabSize(), ht.BOS(), ht.EOS(), ht.UNK(), ht.AddBOS(), gt.BOS(), gt.EOS(), gt.UNK(), gt.AddBOS())
		}
		text := "the cat sat on a mat, 42 times!"
		if a, b := ht.Encode(text, true), gt.Encode(text, true); !slices.Equal(a, b) {
			t.Errorf("%s: %q encodes to %v from HF, %v from GGUF", f.Name, text, a, b)
		}
	}
}

// hfNameOf is the HF name of a GGUF tensor of f (the inverse of ggufName).
func hfNameOf(t *testing.T, f Family, gg string) string {
	t.Helper()
	for _, ht := range f.hfTensors(1) {
		n, err := f.ggufName(ht.name)
		if err != nil {
			t.Fatal(err)
		}
		if n == gg {
			return ht.name
		}
	}
	t.Fatalf("%s: no HF tensor for %s", f.Name, gg)
	return ""
}

// TestSameModel: the F32 GGUF holds exactly the HF tensors under the
// converter's transforms, undone here independently: Q/K rows back to
// rotate-half order, Gemma's +1, names, shapes.
func TestSameModel(t *testing.T) {
	for _, f := range Families() {
		dir := t.TempDir()
		if err := f.WriteHF(dir, 3); err != nil {
			t.Fatal(err)
		}
		sb, err := os.ReadFile(filepath.Join(dir, "model.safetensors"))
		if err != nil {
			t.Fatal(err)
		}
		sf, err := safetensors.Parse(sb)
		if err != nil {
			t.Fatal(err)
		}
		gf, data := ggufFile(t, f, quant.F32, 3)
		for _, ti := range gf.Tensors {
			if strings.HasPrefix(ti.Name, "rope_") {
				continue
			}
			st, ok := sf.Tensor(hfNameOf(t, f, ti.Name))
			if !ok {
				t.Fatalf("%s: no HF tensor for %s", f.Name, ti.Name)
			}
			g := f32sOf(gf.Data(data, ti))
			h := f32sOf(st.Data)
			heads := 0
			if f.PermuteQK && strings.HasSuffix(ti.Name, "attn_q.weight") {
				heads = f.Heads
			}
			if f.PermuteQK && strings.HasSuffix(ti.Name, "attn_k.weight") {
				heads = f.KVHeads
			}
			if heads > 0 {
				rows, cols := int(ti.Shape[1]), int(ti.Shape[0])
				D := rows / heads
				back := make([]float32, len(g))
				for r := 0; r < rows; r++ { // GGUF row h·D + 2b + a holds HF row h·D + a·D/2 + b
					hd, i := r/D, r%D
					hr := hd*D + (i%2)*(D/2) + i/2
					copy(back[hr*cols:(hr+1)*cols], g[r*cols:(r+1)*cols])
				}
				g = back
			}
			if f.Gemma && strings.HasSuffix(ti.Name, "norm.weight") {
				for i := range h {
					h[i] += 1
				}
			}
			if !slices.Equal(g, h) {
				t.Errorf("%s: %s differs from %s", f.Name, ti.Name, st.Name)
			}
		}
	}
}

// TestWeightsDeterministicAndScaled: the same seed gives the same bytes, a
// different seed different ones; weights have the documented scales.
func TestWeightsDeterministicAndScaled(t *testing.T) {
	f, _ := FamilyByName("gemma3")
	_, a := ggufFile(t, f, quant.Q8_0, 11)
	_, b := ggufFile(t, f, quant.Q8_0, 11)
	_, c := ggufFile(t, f, quant.Q8_0, 12)
	if !bytes.Equal(a, b) {
		t.Error("same seed, different files")
	}
	if bytes.Equal(a, c) {
		t.Error("different seeds, same file")
	}
	for _, ht := range f.hfTensors(1) {
		var s, s2 float64
		for _, v := range ht.data {
			s += float64(v)
			s2 += float64(v) * float64(v)
		}
		n := float64(len(ht.data))
		mean, std := s/n, math.Sqrt(s2/n-(s/n)*(s/n))
		qk := strings.HasSuffix(ht.name, "q_proj.weight") || strings.HasSuffix(ht.name, "k_proj.weight") ||
			strings.HasSuffix(ht.name, "q_norm.weight") || strings.HasSuffix(ht.name, "k_norm.weight")
		gain := 1.0
		if qk {
			gain = qkGain
		}
		switch {
		case strings.HasSuffix(ht.name, "_proj.weight"): // N(0, gain²/cols)
			want := gain / math.Sqrt(float64(ht.shape[1]))
			if math.Abs(std-want) > 0.1*want || math.Abs(mean) > 0.1*want {
				t.Errorf("%s: mean %.3g std %.3g, want N(0, %.3g²)", ht.name, mean, std, want)
			}
		case strings.HasSuffix(ht.name, "layernorm.weight"), strings.HasSuffix(ht.name, "_norm.weight"):
			// Gemma: HF stores w, the multiplier 1+w is gain·(1 + 0.2·N(0,1)).
			if math.Abs(mean-(gain-1)) > 0.15*gain || math.Abs(std-0.2*gain) > 0.1*gain {
				t.Errorf("%s: mean %.3g std %.3g, want %g·(1+0.2·N(0,1)) - 1", ht.name, mean, std, gain)
			}
		}
	}
}

func TestLlama3AndLongropeFactors(t *testing.T) {
	f, _ := FamilyByName("llama3")
	fs := f.llama3Factors()
	var one, full, mid int
	for _, v := range fs {
		switch {
		case v == 1:
			one++
		case v == float32(f.Rope.Factor):
			full++
		case v > 1 && v < float32(f.Rope.Factor):
			mid++
		default:
			t.Errorf("factor %v outside [1, %v]", v, f.Rope.Factor)
		}
	}
	if one == 0 || full == 0 || mid == 0 {
		t.Errorf("llama3 factors %v: want some 1, some %v and some between", fs, f.Rope.Factor)
	}
	p, _ := FamilyByName("phi4mini")
	long, short := p.longropeFactors()
	if len(long) != 6 || len(short) != 6 || p.RopeDims() != 12 {
		t.Errorf("phi4mini: %d rotated dims, %d/%d factors; want 12, 6/6", p.RopeDims(), len(long), len(short))
	}
	if a := p.longropeAttnFactor(); !(a > 1 && a < 1.2) {
		t.Errorf("phi4mini: attn factor %v", a)
	}
}

func TestCheckRefuses(t *testing.T) {
	g, _ := FamilyByName("gemma3")
	g.QueryPreAttnScalar = 48
	s, _ := FamilyByName("smollm3")
	s.NoRopeInterval = 3
	q, _ := FamilyByName("qwen2")
	q.PermuteQK = true
	m, _ := FamilyByName("mistral")
	m.HeadDimKey = false
	for _, f := range []Family{g, s, q, m} {
		err := f.WriteGGUF(filepath.Join(t.TempDir(), "x.gguf"), quant.F32, 1)
		if !errors.Is(err, ErrFamily) {
			t.Errorf("%s: WriteGGUF = %v, want ErrFamily", f.Name, err)
		}
		if err := f.WriteHF(t.TempDir(), 1); !errors.Is(err, ErrFamily) {
			t.Errorf("%s: WriteHF = %v, want ErrFamily", f.Name, err)
		}
	}
}
