package synth

import (
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"strings"

	"github.com/qtune/qtune/format/safetensors"
)

// Weight scales. Matrices are N(0, 1/cols), so activations keep unit scale
// through every projection; the output projection is sized so that logits
// have a standard deviation near logitStd and next-token distributions are
// peaked (top probability far above 1/V) without being one-hot. On a
// 12-token prompt llama.cpp gives top probabilities 0.15 to 0.77 (1/V =
// 0.002); in a float64 transformers-style forward pass that matches
// llama.cpp's logits to 1e-5, switching off any family feature (rope
// scaling, window, local base, q/k norms, biases, Gemma's +1 or post norms,
// no-RoPE layers, partial rotary) moves some logit by 0.8 to 16.
const (
	logitStd = 4.0 // std of the final logits for a unit-RMS normalized state
	normStd  = 0.2 // norm weights are 1 + normStd·N(0,1) (Gemma: HF stores normStd·N(0,1))
	biasStd  = 0.5 // q/k/v biases

	// qkGain sharpens attention, so that positions (RoPE, its scaling, the
	// window) change the output visibly: W_q and W_k are N(0, qkGain²/cols)
	// and q/k norm weights are centred on qkGain.
	qkGain = 2.0

	// tiedEmbedRMS is the RMS of a tied model's embeddings as they enter the
	// residual stream (after Gemma's sqrt(C) scale). Small, so that the
	// blocks' outputs dominate the final state: the output projection is the
	// embedding, and a large input embedding would make every model predict
	// its last input token. The final norm's weights are centred so that
	// logits still have std logitStd.
	tiedEmbedRMS = 0.25
)

// hfTensor is one tensor in Hugging Face layout: row-major, Shape as torch
// writes it ((out, in) for a linear layer's weight).
type hfTensor struct {
	name  string
	shape []int
	data  []float32
}

// kind says how a tensor's values are drawn.
type kind int

const (
	kMatrix kind = iota // N(0, gain²/cols)
	kEmbed              // N(0, gain²)
	kNorm               // gain·(1 + normStd·N) (Gemma: the same less 1)
	kBias               // N(0, biasStd²)
)

// draw fills a tensor from a generator seeded by seed and the tensor's HF
// name, so each tensor is the same whatever else the family holds.
func draw(name string, shape []int, k kind, gain float64, gemma bool, seed uint64) hfTensor {
	h := fnv.New64a()
	h.Write([]byte(name))
	r := rand.New(rand.NewPCG(seed, h.Sum64()))
	n := 1
	for _, d := range shape {
		n *= d
	}
	v := make([]float32, n)
	for i := range v {
		z := r.NormFloat64()
		switch k {
		case kMatrix:
			v[i] = float32(z * gain / math.Sqrt(float64(shape[len(shape)-1])))
		case kEmbed:
			v[i] = float32(z * gain)
		case kNorm:
			if gemma {
				v[i] = float32(gain*(1+normStd*z) - 1)
			} else {
				v[i] = float32(gain * (1 + normStd*z))
			}
		case kBias:
			v[i] = float32(biasStd * z)
		}
	}
	return hfTensor{name, shape, v}
}

// hfTensors draws the model in Hugging Face layout, in a fixed order.
func (f Family) hfTensors(seed uint64) []hfTensor {
	C, F, H, K, D, V := f.Dim, f.Hidden, f.Heads, f.KVHeads, f.HeadDim, f.Vocab
	var ts []hfTensor
	add := func(name string, k kind, gain float64, shape ...int) {
		ts = append(ts, draw(name, shape, k, gain, f.Gemma, seed))
	}
	// Tied: the embedding is also the output projection, so the logits have
	// std sqrt(C)·embStd·finalNorm for a unit-RMS state (tiedEmbedRMS's doc).
	embStd, finalNorm := 1.0, 1.0
	if f.Tied {
		embStd = tiedEmbedRMS
		if f.Gemma {
			embStd /= math.Sqrt(float64(C))
		}
		finalNorm = logitStd / (embStd * math.Sqrt(float64(C)))
	}
	add("model.embed_tokens.weight", kEmbed, embStd, V, C) // (V, C)
	for l := 0; l < f.Layers; l++ {
		p := fmt.Sprintf("model.layers.%d.", l)
		add(p+"input_layernorm.weight", kNorm, 1, C) // (C)
		if f.Fused {
			add(p+"self_attn.qkv_proj.weight", kMatrix, 1, (H+2*K)*D, C) // (H·D + 2·K·D, C): rows q, then k, then v
			qk := ts[len(ts)-1].data[:(H+K)*D*C]
			for i := range qk {
				qk[i] *= qkGain
			}
		} else {
			add(p+"self_attn.q_proj.weight", kMatrix, qkGain, H*D, C) // (H·D, C)
			add(p+"self_attn.k_proj.weight", kMatrix, qkGain, K*D, C) // (K·D, C)
			add(p+"self_attn.v_proj.weight", kMatrix, 1, K*D, C)      // (K·D, C)
			if f.QKVBias {
				add(p+"self_attn.q_proj.bias", kBias, 0, H*D) // (H·D)
				add(p+"self_attn.k_proj.bias", kBias, 0, K*D) // (K·D)
				add(p+"self_attn.v_proj.bias", kBias, 0, K*D) // (K·D)
			}
		}
		if f.QKNorm {
			add(p+"self_attn.q_norm.weight", kNorm, qkGain, D) // (D)
			add(p+"self_attn.k_norm.weight", kNorm, qkGain, D) // (D)
		}
		add(p+"self_attn.o_proj.weight", kMatrix, 1, C, H*D)  // (C, H·D)
		add(p+"post_attention_layernorm.weight", kNorm, 1, C) // (C): pre-FFN norm, Gemma: post-attention norm
		if f.Gemma {
			add(p+"pre_feedforward_layernorm.weight", kNorm, 1, C)  // (C)
			add(p+"post_feedforward_layernorm.weight", kNorm, 1, C) // (C)
		}
		if f.Fused {
			add(p+"mlp.gate_up_proj.weight", kMatrix, 1, 2*F, C) // (2F, C): rows gate, then up
		} else {
			add(p+"mlp.gate_proj.weight", kMatrix, 1, F, C) // (F, C)
			add(p+"mlp.up_proj.weight", kMatrix, 1, F, C)   // (F, C)
		}
		add(p+"mlp.down_proj.weight", kMatrix, 1, C, F) // (C, F)
	}
	add("model.norm.weight", kNorm, finalNorm, C) // (C)
	if !f.Tied {
		add("lm_head.weight", kMatrix, logitStd, V, C) // (V, C)
	}
	return ts
}

// ggufTensor is one tensor as the converter writes it: Shape in ggml's ne
// order (innermost first), data row-major.
type ggufTensor struct {
	name  string
	shape []int64
	data  []float32
	norm  bool // a norm weight: the converter keeps it F32 whatever the output type
}

// hfToGGUFLayer maps HF per-layer names (after "model.layers.N.", before
// ".weight"/".bias") to llama.cpp's (after "blk.N."). post_attention_layernorm
// is the pre-FFN norm except in Gemma's block, where it follows attention.
var hfToGGUFLayer = []struct{ hf, gguf string }{
	{"input_layernorm", "attn_norm"},
	{"self_attn.q_proj", "attn_q"},
	{"self_attn.k_proj", "attn_k"},
	{"self_attn.v_proj", "attn_v"},
	{"self_attn.qkv_proj", "attn_qkv"},
	{"self_attn.q_norm", "attn_q_norm"},
	{"self_attn.k_norm", "attn_k_norm"},
	{"self_attn.o_proj", "attn_output"},
	{"post_attention_layernorm", "ffn_norm"},
	{"pre_feedforward_layernorm", "ffn_norm"},
	{"post_feedforward_layernorm", "post_ffw_norm"},
	{"mlp.gate_proj", "ffn_gate"},
	{"mlp.up_proj", "ffn_up"},
	{"mlp.gate_up_proj", "ffn_up"},
	{"mlp.down_proj", "ffn_down"},
}

// ggufName is the converter's name for an HF tensor of this family.
func (f Family) ggufName(hf string) (string, error) {
	switch hf {
	case "model.embed_tokens.weight":
		return "token_embd.weight", nil
	case "model.norm.weight":
		return "output_norm.weight", nil
	case "lm_head.weight":
		return "output.weight", nil
	}
	var l int
	var rest string
	if _, err := fmt.Sscanf(hf, "model.layers.%d.%s", &l, &rest); err != nil {
		return "", fmt.Errorf("synth: no GGUF name for %q", hf)
	}
	suffix := ".weight"
	base, ok := strings.CutSuffix(rest, suffix)
	if !ok {
		suffix = ".bias"
		if base, ok = strings.CutSuffix(rest, suffix); !ok {
			return "", fmt.Errorf("synth: no GGUF name for %q", hf)
		}
	}
	if f.Gemma && base == "post_attention_layernorm" {
		return fmt.Sprintf("blk.%d.post_attention_norm%s", l, suffix), nil
	}
	for _, m := range hfToGGUFLayer {
		if m.hf == base {
			return fmt.Sprintf("blk.%d.%s%s", l, m.gguf, suffix), nil
		}
	}
	return "", fmt.Errorf("synth: no GGUF name for %q", hf)
}

// ggufTensors derives the GGUF tensors from the HF ones by the converter's
// transforms, in the converter's order (generated tensors first):
//
//   - llama3 rope scaling: rope_freqs.weight (D/2) generated from config;
//   - longrope: rope_factors_long/short.weight (RopeDims/2) from config;
//   - PermuteQK: q_proj rows permuted per head over H, k_proj over K
//     (LlamaModel.permute: GGUF row 2b+a = HF row a·D/2+b within a head);
//   - Gemma: every "*norm.weight" gets +1 (in float32);
//   - everything else is copied, shapes reversed into ne order.
func (f Family) ggufTensors(hf []hfTensor) ([]ggufTensor, error) {
	var out []ggufTensor
	switch f.Rope.Type {
	case "llama3":
		fs := f.llama3Factors()
		out = append(out, ggufTensor{"rope_freqs.weight", []int64{int64(len(fs))}, fs, false})
	case "longrope":
		long, short := f.longropeFactors()
		out = append(out,
			ggufTensor{"rope_factors_long.weight", []int64{int64(len(long))}, f32s(long), false},
			ggufTensor{"rope_factors_short.weight", []int64{int64(len(short))}, f32s(short), false})
	}
	for _, t := range hf {
		name, err := f.ggufName(t.name)
		if err != nil {
			return nil, err
		}
		data := t.data
		rows, cols := t.shape[0], 1
		if len(t.shape) == 2 {
			cols = t.shape[1]
		}
		if f.PermuteQK {
			heads := 0
			switch {
			case strings.HasSuffix(t.name, "self_attn.q_proj.weight"), strings.HasSuffix(t.name, "self_attn.q_proj.bias"):
				heads = f.Heads
			case strings.HasSuffix(t.name, "self_attn.k_proj.weight"), strings.HasSuffix(t.name, "self_attn.k_proj.bias"):
				heads = f.KVHeads
			}
			if heads > 0 {
				data = safetensors.PermuteRowsF32(data, rows, cols, heads, false)
			}
		}
		isNorm := strings.HasSuffix(t.name, "norm.weight")
		if f.Gemma && isNorm {
			d := make([]float32, len(data))
			for i, v := range data {
				d[i] = v + 1
			}
			data = d
		}
		shape := make([]int64, len(t.shape))
		for i, d := range t.shape {
			shape[len(shape)-1-i] = int64(d)
		}
		out = append(out, ggufTensor{name, shape, data, isNorm})
	}
	return out, nil
}

func f32s(v []float64) []float32 {
	out := make([]float32, len(v))
	for i, x := range v {
		out[i] = float32(x)
	}
	return out
}
