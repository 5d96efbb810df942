package safetensors

import (
	"encoding/json"
	"path"
	"sort"
	"strconv"
	"strings"
)

// Index is a shard index (model.safetensors.index.json).
type Index struct {
	WeightMap map[string]string // tensor name -> shard file name
	TotalSize int64             // metadata.total_size; 0 when absent
}

// ParseIndex reads a model.safetensors.index.json. Shard names must be plain
// file names (no directories, no ".."), so they can be joined to the folder.
func ParseIndex(data []byte) (*Index, error) {
	if err := checkJSON(data); err != nil {
		return nil, errf("index: %w", err)
	}
	var raw struct {
		Metadata  map[string]any     `json:"metadata"`
		WeightMap *map[string]string `json:"weight_map"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, errf("index: %w", err)
	}
	if raw.WeightMap == nil {
		return nil, errf("index: no weight_map")
	}
	ix := &Index{WeightMap: *raw.WeightMap}
	for name, file := range ix.WeightMap {
		if file == "" || file != path.Base(file) || file == ".." || file == "." || strings.ContainsAny(file, `/\`) {
			return nil, errf("index: tensor %q: shard %q is not a plain file name", name, file)
		}
	}
	if v, ok := raw.Metadata["total_size"]; ok {
		// Written as a number, sometimes as a string.
		switch x := v.(type) {
		case float64:
			ix.TotalSize = int64(x)
		case string:
			ix.TotalSize, _ = strconv.ParseInt(x, 10, 64)
		}
		if ix.TotalSize < 0 {
			return nil, errf("index: negative total_size %v", v)
		}
	}
	return ix, nil
}

// Shards returns the distinct shard file names, sorted.
func (ix *Index) Shards() []string {
	seen := map[string]bool{}
	var out []string
	for _, f := range ix.WeightMap {
		if !seen[f] {
			seen[f] = true
			out = append(out, f)
		}
	}
	sort.Strings(out)
	return out
}

// HFConfig is the part of a Hugging Face config.json that qtune uses.
type HFConfig struct {
	Architectures         []string       `json:"architectures"`
	ModelType             string         `json:"model_type"`
	HiddenSize            int            `json:"hidden_size"`
	IntermediateSize      int            `json:"intermediate_size"`
	NumHiddenLayers       int            `json:"num_hidden_layers"`
	NumAttentionHeads     int            `json:"num_attention_heads"`
	NumKeyValueHeads      int            `json:"num_key_value_heads"`
	HeadDim               int            `json:"head_dim"`
	VocabSize             int            `json:"vocab_size"`
	MaxPositionEmbeddings int            `json:"max_position_embeddings"`
	RMSNormEps            float64        `json:"rms_norm_eps"`
	RopeTheta             float64        `json:"rope_theta"`
	TieWordEmbeddings     bool           `json:"tie_word_embeddings"`
	RopeScaling           map[string]any `json:"rope_scaling"`
	BOSTokenID            any            `json:"bos_token_id"` // a number, a list of numbers, or nil
	EOSTokenID            any            `json:"eos_token_id"`
	TorchDType            string         `json:"torch_dtype"`

	// Family keys (Gemma 3, Phi-3, SmolLM3, Qwen).
	QueryPreAttnScalar    float64   `json:"query_pre_attn_scalar"`
	SlidingWindow         *int      `json:"sliding_window"`
	SlidingWindowPattern  int       `json:"sliding_window_pattern"`
	LayerTypes            []string  `json:"layer_types"`
	RopeLocalBaseFreq     float64   `json:"rope_local_base_freq"`
	NoRopeLayers          []int     `json:"no_rope_layers"`
	NoRopeLayerInterval   int       `json:"no_rope_layer_interval"`
	PartialRotaryFactor   float64   `json:"partial_rotary_factor"`
	FinalLogitSoftcapping *float64  `json:"final_logit_softcapping"`
	AttnLogitSoftcapping  *float64  `json:"attn_logit_softcapping"`
	UseSlidingWindow      bool      `json:"use_sliding_window"`
	HiddenActivation      string    `json:"hidden_activation"`
	HiddenAct             string    `json:"hidden_act"`
	OriginalMaxPosition   int       `json:"original_max_position_embeddings"`
	NumExperts            int       `json:"num_experts"`
	NumLocalExperts       int       `json:"num_local_experts"`
	TextConfig            *struct{} `json:"text_config"`
	VisionConfig          *struct{} `json:"vision_config"`
}

// Upper bounds ParseConfig accepts; far above any real Llama.
const (
	maxHidden  = 1 << 20
	maxLayers  = 1 << 12
	maxHeads   = 1 << 12
	maxHeadDim = 1 << 12
	maxVocab   = 1 << 24
	maxContext = 1 << 26
)

// ParseConfig reads config.json. Defaults as in transformers' LlamaConfig:
// num_key_value_heads = num_attention_heads, head_dim = hidden_size /
// num_attention_heads, rms_norm_eps = 1e-6, rope_theta = 10000; torch_dtype
// falls back to the newer "dtype" key. It checks that the sizes are positive
// and bounded, that heads divide hidden_size (when head_dim is not given),
// that kv heads divide heads, and that head_dim is even.
func ParseConfig(data []byte) (*HFConfig, error) {
	if err := checkJSON(data); err != nil {
		return nil, errf("config: %w", err)
	}
	var c HFConfig
	if err := json.Unmarshal(data, &c); err != nil {
		return nil, errf("config: %w", err)
	}
	if c.TorchDType == "" {
		var d struct {
			DType any `json:"dtype"`
		}
		_ = json.Unmarshal(data, &d) // already known to be valid
		if s, ok := d.DType.(string); ok {
			c.TorchDType = s
		}
	}
	for _, f := range []struct {
		name string
		v    int
		max  int
	}{
		{"hidden_size", c.HiddenSize, maxHidden},
		{"intermediate_size", c.IntermediateSize, maxHidden},
		{"num_hidden_layers", c.NumHiddenLayers, maxLayers},
		{"num_attention_heads", c.NumAttentionHeads, maxHeads},
		{"vocab_size", c.VocabSize, maxVocab},
	} {
		if f.v <= 0 || f.v > f.max {
			return nil, errf("config: %s = %d, want 1..%d", f.name, f.v, f.max)
		}
	}
	for _, f := range []struct {
		name string
		v    int
		max  int
	}{
		{"num_key_value_heads", c.NumKeyValueHeads, maxHeads},
		{"head_dim", c.HeadDim, maxHeadDim},
		{"max_position_embeddings", c.MaxPositionEmbeddings, maxContext},
	} {
		if f.v < 0 || f.v > f.max {
			return nil, errf("config: %s = %d, want 0..%d", f.name, f.v, f.max)
		}
	}
	if c.NumKeyValueHeads == 0 {
		c.NumKeyValueHeads = c.NumAttentionHeads
	}
	if c.HeadDim == 0 {
		if c.HiddenSize%c.NumAttentionHeads != 0 {
			return nil, errf("config: hidden_size %d is not a multiple of num_attention_heads %d", c.HiddenSize, c.NumAttentionHeads)
		}
		c.HeadDim = c.HiddenSize / c.NumAttentionHeads
	}
	if c.HeadDim%2 != 0 {
		return nil, errf("config: head_dim %d is odd", c.HeadDim)
	}
	if c.NumAttentionHeads%c.NumKeyValueHeads != 0 {
		return nil, errf("config: num_attention_heads %d is not a multiple of num_key_value_heads %d", c.NumAttentionHeads, c.NumKeyValueHeads)
	}
	if c.RMSNormEps == 0 {
		c.RMSNormEps = 1e-6
	}
	if c.RopeTheta == 0 {
		c.RopeTheta = 10000
	}
	if !(c.RMSNormEps > 0 && c.RMSNormEps < 1) {
		return nil, errf("config: rms_norm_eps %v out of range (0, 1)", c.RMSNormEps)
	}
	if !(c.RopeTheta > 0 && c.RopeTheta < 1e12) {
		return nil, errf("config: rope_theta %v out of range", c.RopeTheta)
	}
	return &c, nil
}

// Per-layer names: HF "model.layers.N.<hf>" <-> GGUF "blk.N.<gguf>".
var layerNames = []struct{ hf, gguf string }{
	{"input_layernorm", "attn_norm"},
	{"self_attn.q_proj", "attn_q"},
	{"self_attn.k_proj", "attn_k"},
	{"self_attn.v_proj", "attn_v"},
	{"self_attn.o_proj", "attn_output"},
	{"post_attention_layernorm", "ffn_norm"},
	{"mlp.gate_proj", "ffn_gate"},
	{"mlp.up_proj", "ffn_up"},
	{"mlp.down_proj", "ffn_down"},
}

// Per-family names, checked before layerNames: Gemma 3's sandwich norms
// (its post_attention_layernorm is a post norm, not the FFN's pre norm),
// q/k norms (Qwen3, Gemma 3), Phi-3's fused projections.
var familyLayerNames = map[string][]struct{ hf, gguf string }{
	"gemma3": {
		{"post_attention_layernorm", "post_attention_norm"},
		{"pre_feedforward_layernorm", "ffn_norm"},
		{"post_feedforward_layernorm", "post_ffw_norm"},
		{"self_attn.q_norm", "attn_q_norm"},
		{"self_attn.k_norm", "attn_k_norm"},
	},
	"qwen3": {
		{"self_attn.q_norm", "attn_q_norm"},
		{"self_attn.k_norm", "attn_k_norm"},
	},
	"phi3": {
		{"self_attn.qkv_proj", "attn_qkv"},
		{"mlp.gate_up_proj", "ffn_up"},
	},
}

// Whole-model names.
var modelNames = []struct{ hf, gguf string }{
	{"model.embed_tokens", "token_embd"},
	{"model.norm", "output_norm"},
	{"lm_head", "output"},
}

// splitSuffix splits off ".weight" or ".bias".
func splitSuffix(s string) (string, string, bool) {
	for _, suf := range []string{".weight", ".bias"} {
		if strings.HasSuffix(s, suf) {
			return s[:len(s)-len(suf)], suf, true
		}
	}
	return "", "", false
}

// layerIndex splits "N.rest" with N a canonical decimal (no sign, no leading zero).
func layerIndex(s string) (string, string, bool) {
	i := strings.IndexByte(s, '.')
	if i <= 0 || i > 6 || (s[0] == '0' && i > 1) {
		return "", "", false
	}
	for _, c := range s[:i] {
		if c < '0' || c > '9' {
			return "", "", false
		}
	}
	return s[:i], s[i+1:], true
}

// GGUFNameFor is GGUFName with the per-layer names of family arch (a
// llama.cpp architecture string, familyLayerNames) first.
func GGUFNameFor(arch, hf string) (string, bool) {
	base, suf, ok := splitSuffix(hf)
	if rest, ok2 := strings.CutPrefix(base, "model.layers."); ok && ok2 {
		if n, part, ok := layerIndex(rest); ok {
			for _, m := range familyLayerNames[arch] {
				if part == m.hf {
					return "blk." + n + "." + m.gguf + suf, true
				}
			}
		}
	}
	return GGUFName(hf)
}

// GGUFName maps an HF llama tensor name to its GGUF name (formats.md §3.1):
// "model.layers.3.self_attn.q_proj.weight" -> "blk.3.attn_q.weight". Names
// ending in ".weight" or ".bias" are mapped; others (rotary_emb.inv_freq, …)
// give false.
func GGUFName(hf string) (string, bool) {
	base, suf, ok := splitSuffix(hf)
	if !ok {
		return "", false
	}
	for _, m := range modelNames {
		if base == m.hf {
			return m.gguf + suf, true
		}
	}
	rest, ok := strings.CutPrefix(base, "model.layers.")
	if !ok {
		return "", false
	}
	n, part, ok := layerIndex(rest)
	if !ok {
		return "", false
	}
	for _, m := range layerNames {
		if part == m.hf {
			return "blk." + n + "." + m.gguf + suf, true
		}
	}
	return "", false
}

// HFName is the inverse of GGUFName.
func HFName(gguf string) (string, bool) {
	base, suf, ok := splitSuffix(gguf)
	if !ok {
		return "", false
	}
	for _, m := range modelNames {
		if base == m.gguf {
			return m.hf + suf, true
		}
	}
	rest, ok := strings.CutPrefix(base, "blk.")
	if !ok {
		return "", false
	}
	n, part, ok := layerIndex(rest)
	if !ok {
		return "", false
	}
	for _, m := range layerNames {
		if part == m.gguf {
			return "model.layers." + n + "." + m.hf + suf, true
		}
	}
	return "", false
}
