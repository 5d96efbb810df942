package model

import (
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strings"

	"github.com/qtune/qtune/format/gguf"
	"github.com/qtune/qtune/format/safetensors"
	"github.com/qtune/qtune/nn"
)

// A model family is a row of data (design.md rule 11): what its files call
// it and which switches of the one block it turns on. Features that a file
// shows by its tensors (q/k/v biases, q/k norms, post norms, fused
// projections) are found when the tensors are wired; the rest comes from
// the metadata, read by the family's GGUF and HF rules below.
type family struct {
	arch    string   // llama.cpp's general.architecture
	hfTypes []string // Hugging Face model_type values
	// ggufNeox: llama.cpp rotates half-split pairs for this architecture
	// (LLAMA_ROPE_TYPE_NEOX) and its converter keeps Hugging Face's q/k
	// row order; otherwise (llama, smollm3) the converter permutes q/k rows
	// and llama.cpp rotates adjacent pairs.
	ggufNeox bool
	// hfNormOffset: Hugging Face stores RMSNorm weights as w with the norm
	// computing x·(1+w) (Gemma); llama.cpp's converter writes w+1.
	hfNormOffset bool
}

var families = []family{
	{arch: "llama", hfTypes: []string{"llama", "mistral"}},
	{arch: "qwen2", hfTypes: []string{"qwen2"}, ggufNeox: true},
	{arch: "qwen3", hfTypes: []string{"qwen3"}, ggufNeox: true},
	{arch: "gemma3", hfTypes: []string{"gemma3_text"}, ggufNeox: true, hfNormOffset: true},
	{arch: "phi3", hfTypes: []string{"phi3"}, ggufNeox: true},
	{arch: "smollm3", hfTypes: []string{"smollm3"}},
}

// SupportedArchs lists the architectures qtune loads, for messages.
func SupportedArchs() string {
	var a []string
	for _, f := range families {
		a = append(a, f.arch)
	}
	return strings.Join(a, ", ")
}

func familyOf(arch string) (family, bool) {
	for _, f := range families {
		if f.arch == arch {
			return f, true
		}
	}
	return family{}, false
}

// hfFamily maps a config.json's model_type (or, without one, its
// architectures) to a family.
func hfFamily(modelType string, archs []string) (family, bool) {
	if modelType == "" && len(archs) == 1 {
		switch archs[0] {
		case "LlamaForCausalLM", "MistralForCausalLM":
			modelType = "llama"
		}
	}
	for _, f := range families {
		for _, t := range f.hfTypes {
			if t == modelType {
				return f, true
			}
		}
	}
	return family{}, false
}

// hfTypes lists the accepted model_type values, for messages.
func hfTypes() string {
	var a []string
	for _, f := range families {
		a = append(a, f.hfTypes...)
	}
	return strings.Join(a, ", ")
}

// ggufFamilyConfig reads the family's own metadata into c (after the keys
// every family shares). arch's prefix is c.Arch.
func ggufFamilyConfig(f *gguf.File, c *Config, fam family) error {
	a := c.Arch
	u := func(k string) (int, bool) {
		v, ok := f.Uint(a + "." + k)
		if !ok || v > math.MaxInt32 {
			return 0, false
		}
		return int(v), true
	}
	c.RopeNeox = fam.ggufNeox
	// Per-block tables below are sized by the block count: bound it first.
	if c.Layers <= 0 || c.Layers > maxLayers {
		return fmt.Errorf("%w: block count %d out of range", ErrConfig, c.Layers)
	}
	if n, ok := u("expert_count"); ok && n > 0 {
		return unsupported(fmt.Errorf("%w: %s.expert_count = %d: mixture-of-experts models are not supported", ErrConfig, a, n))
	}
	if _, ok := f.Get(a + ".classifier.output_labels"); ok {
		return unsupported(fmt.Errorf("%w: a %s classifier/reranker head is not supported (causal language models are)", ErrConfig, a))
	}
	if v, ok := f.Float(a + ".final_logit_softcapping"); ok && v > 0 {
		return unsupported(fmt.Errorf("%w: final logit soft-capping (%s.final_logit_softcapping) is not supported", ErrConfig, a))
	}
	if v, ok := f.Float(a + ".attn_logit_softcapping"); ok && v > 0 {
		return unsupported(fmt.Errorf("%w: attention logit soft-capping is not supported", ErrConfig))
	}
	switch a {
	case "gemma3":
		c.Act = nn.GELUTanh
		c.EmbedScale = float32(math.Sqrt(float64(c.Dim)))
		// llama.cpp's rule (src/models/gemma3.cpp): 1/√head_dim, except the
		// 62-layer 27B, which uses 1/√(n_embd/n_head).
		if c.Layers == 62 && c.Heads > 0 {
			c.AttnScale = 1 / math.Sqrt(float64(c.Dim/c.Heads))
		}
		if w, ok := u("attention.sliding_window"); ok && w > 0 {
			c.Window = w
			c.RopeThetaSWA = 10000
			if th, ok := f.Float(a + ".rope.freq_base_swa"); ok {
				c.RopeThetaSWA = th
			}
			swa, err := ggufSWAPattern(f, a, c.Layers)
			if err != nil {
				return err
			}
			c.swa = swa
		}
	case "phi3":
		// LongRoPE: llama.cpp picks rope_factors_long when the context
		// exceeds rope.scaling.original_context_length, else the short
		// ones (build reads the tensors); attn_factor scales cos and sin
		// either way. Its sliding_window key is read and ignored.
		if v, ok := f.Float(a + ".rope.scaling.attn_factor"); ok && v > 0 {
			c.RopeMscale = v
		}
		if v, ok := u("rope.scaling.original_context_length"); ok {
			c.RopeOrigContext = v
		}
	case "smollm3":
		// llama.cpp: hparams.n_no_rope_layer_step = 4; block il has no RoPE
		// when (il+1) % 4 == 0.
		c.noRope = make([]bool, c.Layers)
		for i := range c.noRope {
			c.noRope[i] = (i+1)%4 == 0
		}
	}
	return nil
}

// ggufSWAPattern reads which blocks use the sliding window: an array of
// bools, or a period n (llama.cpp's default 6) where block il is local
// when il % n < n−1 (every n-th block global).
func ggufSWAPattern(f *gguf.File, a string, layers int) ([]bool, error) {
	out := make([]bool, layers)
	key := a + ".attention.sliding_window_pattern"
	if kv, ok := f.Get(key); ok {
		if a, ok := kv.Value.(gguf.Array); ok {
			arr, ok := a.Data.([]bool)
			if !ok || a.Len() < 0 {
				return nil, fmt.Errorf("%w: %s is an array but not of bools", ErrConfig, key)
			}
			if len(arr) != layers {
				return nil, fmt.Errorf("%w: %s has %d entries for %d blocks", ErrConfig, key, len(arr), layers)
			}
			copy(out, arr)
			return out, nil
		}
	}
	n := 6
	if v, ok := f.Uint(key); ok {
		if v > 1<<20 {
			return nil, fmt.Errorf("%w: %s = %d out of range", ErrConfig, key, v)
		}
		n = int(v)
	}
	for i := range out {
		out[i] = n == 0 || i%n < n-1
	}
	return out, nil
}

// hfFamilyConfig reads the family's config.json keys into c.
func hfFamilyConfig(hc *safetensors.HFConfig, c *Config, fam family) error {
	if c.Layers <= 0 || c.Layers > maxLayers {
		return fmt.Errorf("%w: num_hidden_layers %d out of range", ErrConfig, c.Layers)
	}
	if hc.NumExperts > 0 || hc.NumLocalExperts > 0 {
		return unsupported(fmt.Errorf("%w: mixture-of-experts models are not supported", ErrConfig))
	}
	if len(hc.Architectures) == 1 && !strings.HasSuffix(hc.Architectures[0], "ForCausalLM") {
		return fmt.Errorf("%w: %s is not a causal language model (…ForCausalLM is)", ErrConfig, hc.Architectures[0])
	}
	if hc.FinalLogitSoftcapping != nil && *hc.FinalLogitSoftcapping > 0 {
		return unsupported(fmt.Errorf("%w: final_logit_softcapping is not supported", ErrConfig))
	}
	if hc.AttnLogitSoftcapping != nil && *hc.AttnLogitSoftcapping > 0 {
		return unsupported(fmt.Errorf("%w: attn_logit_softcapping is not supported", ErrConfig))
	}
	switch fam.arch {
	case "qwen2", "qwen3":
		if hc.UseSlidingWindow {
			return unsupported(fmt.Errorf("%w: use_sliding_window is true; Qwen's sliding window is not supported (llama.cpp ignores it too)", ErrConfig))
		}
	case "gemma3":
		c.Act = nn.GELUTanh
		if act := hc.HiddenActivation; act != "" && act != "gelu_pytorch_tanh" {
			return unsupported(fmt.Errorf("%w: hidden_activation %q is not supported (gelu_pytorch_tanh is)", ErrConfig, act))
		}
		// Hugging Face multiplies by √hidden_size in the activations' dtype;
		// for float32 weights that is float32(√C), llama.cpp's value.
		c.EmbedScale = float32(math.Sqrt(float64(c.Dim)))
		if q := hc.QueryPreAttnScalar; q > 0 {
			c.AttnScale = 1 / math.Sqrt(q)
		}
		c.RopeThetaSWA = 10000
		if hc.RopeLocalBaseFreq > 0 {
			c.RopeThetaSWA = hc.RopeLocalBaseFreq
		}
		if hc.SlidingWindow != nil && *hc.SlidingWindow > 0 {
			c.Window = *hc.SlidingWindow
			c.swa = make([]bool, c.Layers)
			switch {
			case len(hc.LayerTypes) > 0:
				if len(hc.LayerTypes) != c.Layers {
					return fmt.Errorf("%w: layer_types has %d entries for %d layers", ErrConfig, len(hc.LayerTypes), c.Layers)
				}
				for i, t := range hc.LayerTypes {
					switch t {
					case "sliding_attention":
						c.swa[i] = true
					case "full_attention":
					default:
						return fmt.Errorf("%w: layer_types[%d] = %q", ErrConfig, i, t)
					}
				}
			default:
				n := hc.SlidingWindowPattern
				if n == 0 {
					n = 6
				}
				for i := range c.swa {
					c.swa[i] = (i+1)%n != 0
				}
			}
		}
	case "phi3":
		if rs := hc.RopeScaling; rs != nil {
			t, _ := rs["type"].(string)
			if t == "" {
				t, _ = rs["rope_type"].(string)
			}
			if t != "longrope" && t != "su" {
				return unsupported(fmt.Errorf("%w: Phi-3 rope_scaling type %q is not supported (longrope is)", ErrConfig, t))
			}
			orig := hc.OriginalMaxPosition
			if v, ok := rs["original_max_position_embeddings"].(float64); ok && v > 0 {
				orig = int(v)
			}
			if orig <= 0 {
				return fmt.Errorf("%w: longrope needs original_max_position_embeddings", ErrConfig)
			}
			short, err1 := floatList(rs["short_factor"], c.RopeDims/2)
			long, err2 := floatList(rs["long_factor"], c.RopeDims/2)
			if err1 != nil || err2 != nil {
				return fmt.Errorf("%w: longrope short_factor/long_factor must list %d positive numbers (rotary dims / 2)", ErrConfig, c.RopeDims/2)
			}
			c.RopeFactors, c.RopeFactorsLong, c.RopeOrigContext = short, long, orig
			// The converter's and transformers' attention factor.
			if scale := float64(c.Context) / float64(orig); scale > 1 {
				c.RopeMscale = math.Sqrt(1 + math.Log(scale)/math.Log(float64(orig)))
			}
		}
	case "smollm3":
		c.noRope = make([]bool, c.Layers)
		switch {
		case len(hc.NoRopeLayers) > 0:
			if len(hc.NoRopeLayers) != c.Layers {
				return fmt.Errorf("%w: no_rope_layers has %d entries for %d layers", ErrConfig, len(hc.NoRopeLayers), c.Layers)
			}
			for i, v := range hc.NoRopeLayers {
				c.noRope[i] = v == 0 // 1 = use RoPE
			}
		default:
			n := hc.NoRopeLayerInterval
			if n == 0 {
				n = 4
			}
			for i := range c.noRope {
				c.noRope[i] = (i+1)%n == 0
			}
		}
	}
	return nil
}

// hfModelType reads model_type and architectures alone, so that a family
// is refused by name before its other keys are checked.
func hfModelType(cb []byte) (string, []string) {
	var v struct {
		ModelType     string   `json:"model_type"`
		Architectures []string `json:"architectures"`
	}
	_ = json.Unmarshal(cb, &v)
	return v.ModelType, v.Architectures
}

// Features lists what the loaded model turns on beyond a Llama 2 block, in
// words, for `qtune inspect` ("q/k/v bias", "NEOX rope θ=1e+06", …).
func (m *Model) Features() []string {
	c := &m.Config
	var out []string
	l0 := func(f func(*Layer) bool) bool {
		for i := range m.Layers {
			if f(&m.Layers[i]) {
				return true
			}
		}
		return false
	}
	if l0(func(l *Layer) bool { return l.BQ != nil || l.BK != nil || l.BV != nil }) {
		out = append(out, "q/k/v bias")
	}
	if l0(func(l *Layer) bool { return l.QNorm != nil }) {
		out = append(out, "q/k norm")
	}
	// The family's rotary convention as llama.cpp names it (an HF folder of
	// a llama model runs half-split on unpermuted rows: the same model).
	rope := "rope"
	if m.fam.ggufNeox {
		rope = "NEOX rope"
	}
	rope += fmt.Sprintf(" θ=%g", c.RopeTheta)
	if c.RopeDims < c.HeadDim {
		rope += fmt.Sprintf(" on %d of %d dims", c.RopeDims, c.HeadDim)
	}
	out = append(out, rope)
	if c.RopeFactors != nil || m.ropeFromTensor {
		out = append(out, "rope frequency factors")
	}
	if c.RopeLinear > 0 {
		out = append(out, fmt.Sprintf("linear rope scaling ×%g", c.RopeLinear))
	}
	if c.RopeMscale != 0 && c.RopeMscale != 1 {
		out = append(out, fmt.Sprintf("rope attention factor %.4g", c.RopeMscale))
	}
	if c.HeadDim*c.Heads != c.Dim {
		out = append(out, fmt.Sprintf("head size %d", c.HeadDim))
	}
	if c.Act == nn.GELUTanh {
		out = append(out, "GeGLU (tanh GELU)")
	}
	if c.EmbedScale != 0 && c.EmbedScale != 1 {
		out = append(out, fmt.Sprintf("embeddings ×%.4g", c.EmbedScale))
	}
	if l0(func(l *Layer) bool { return l.PostAttnNorm != nil }) {
		out = append(out, "pre+post norms")
	}
	if c.AttnScale != 0 && math.Abs(c.AttnScale*math.Sqrt(float64(c.HeadDim))-1) > 1e-6 {
		out = append(out, fmt.Sprintf("attention scale %.4g", c.AttnScale))
	}
	var swa, norope []int
	for i := range m.Layers {
		if m.Layers[i].Window > 0 {
			swa = append(swa, i)
		}
		if m.Layers[i].NoRope {
			norope = append(norope, i)
		}
	}
	if len(swa) > 0 {
		s := fmt.Sprintf("sliding window %d on %d of %d blocks", c.Window, len(swa), len(m.Layers))
		if c.RopeThetaSWA != 0 && c.RopeThetaSWA != c.RopeTheta {
			s += fmt.Sprintf(" (local θ=%g)", c.RopeThetaSWA)
		}
		out = append(out, s)
	}
	if len(norope) > 0 {
		out = append(out, fmt.Sprintf("no RoPE on blocks %s", intList(norope)))
	}
	if m.fusedQKV {
		out = append(out, "fused qkv")
	}
	if m.fusedGateUp {
		out = append(out, "fused gate/up")
	}
	if c.Tied {
		out = append(out, "tied output")
	}
	return out
}

func intList(v []int) string {
	sort.Ints(v)
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = fmt.Sprint(x)
	}
	return strings.Join(s, ",")
}

// GGUFPermutesQK reports whether llama.cpp's converter permutes this
// family's q/k rows (llama, smollm3), so that GGUF and Hugging Face files
// order them differently; adapters written for HF tools then get their
// q/k rows permuted back.
func (m *Model) GGUFPermutesQK() bool { return !m.fam.ggufNeox }

// HoldsHFOrder reports whether m keeps q/k rows in Hugging Face order where
// its family's GGUF order differs (a llama or smollm3 HF folder): adapters
// and deltas, exchanged in GGUF order, are permuted on save and load.
func (m *Model) HoldsHFOrder() bool { return m.Format == "safetensors" && !m.fam.ggufNeox }

// AdapterHeads returns the head counts that the PEFT and MLX writers and
// readers use to permute q/k rows between GGUF and HF order, or 0, 0 for a
// family whose orders agree.
func (m *Model) AdapterHeads() (heads, kvHeads int) {
	if !m.GGUFPermutesQK() {
		return 0, 0
	}
	return m.Config.Heads, m.Config.KVHeads
}

// floatList reads a JSON list of n positive numbers.
func floatList(v any, n int) ([]float32, error) {
	l, ok := v.([]any)
	if !ok || len(l) != n {
		return nil, fmt.Errorf("want %d numbers", n)
	}
	out := make([]float32, n)
	for i, x := range l {
		f, ok := x.(float64)
		if !ok || !(f > 0) || math.IsInf(f, 0) {
			return nil, fmt.Errorf("entry %d is not a positive number", i)
		}
		out[i] = float32(f)
	}
	return out, nil
}

// FusedQKV reports whether the model's file stores q|k|v as one matrix
// (Phi-3's attn_qkv): adapters for other tools then target it as one.
func (m *Model) FusedQKV() bool { return m.fusedQKV }

// FusedGateUp reports whether the file stores gate|up as one matrix
// (Phi-3's ffn_up of 2F rows).
func (m *Model) FusedGateUp() bool { return m.fusedGateUp }

// ggufAttnScale is the attention scale llama.cpp derives for a GGUF of
// this config (gemma3: 1/√head_dim, or 1/√(C/H) for 62 blocks; others
// 1/√head_dim); 0 means 1/√head_dim.
func (c *Config) ggufAttnScale() float64 {
	if c.Arch == "gemma3" && c.Layers == 62 && c.Heads > 0 {
		return 1 / math.Sqrt(float64(c.Dim/c.Heads))
	}
	return 0
}

// checkGGUFExpressible reports a feature of m that a GGUF file cannot
// carry, so that writing one would change the model: llama.cpp reads no
// attention scale key and derives Gemma's from the shape.
func (m *Model) checkGGUFExpressible() error {
	c := &m.Config
	want, have := c.ggufAttnScale(), c.AttnScale
	norm := func(s float64) float64 {
		if s == 0 {
			return 1 / math.Sqrt(float64(c.HeadDim))
		}
		return s
	}
	if math.Abs(norm(want)-norm(have)) > 1e-6*norm(want) {
		return fmt.Errorf("model: attention scale %.6g (query_pre_attn_scalar) cannot be written to a GGUF: llama.cpp derives %.6g from the shape", norm(have), norm(want))
	}
	return nil
}
