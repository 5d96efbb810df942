package model

import (
	"errors"
	"fmt"

	"github.com/qtune/qtune/nn"
)

// Config is the architecture of a Llama-family model.
type Config struct {
	Arch       string
	Dim        int     // C
	Hidden     int     // F, feed-forward width
	Layers     int     // L
	Heads      int     // H
	KVHeads    int     // Hkv
	HeadDim    int     // D
	Vocab      int     // V
	Context    int     // trained context length
	Eps        float32 // RMSNorm epsilon
	RopeTheta  float64
	RopeDims   int     // rotated dimensions per head
	RopeNeox   bool    // half-split pairs (HF) instead of adjacent pairs (GGUF)
	RopeLinear float64 // linear RoPE scaling factor, 0 = none
	Tied       bool    // output matrix is the token embedding
	// RopeFactors divide the RoPE frequencies (Llama 3.1 scaling, Phi-3's
	// LongRoPE short factors), when set.
	RopeFactors []float32
	RopeMscale  float64 // cos/sin multiplier (Phi-3 LongRoPE's attention factor), 0 = 1
	// RopeFactorsLong are LongRoPE's factors past RopeOrigContext (kept for
	// export; qtune runs the short ones, as llama.cpp does for a context up
	// to the original one and Hugging Face for sequences up to it).
	RopeFactorsLong []float32
	RopeOrigContext int

	// Family switches (design.md rule 11); zero values are Llama's.
	Act          nn.Activation // gated FFN nonlinearity: SiLU or Gemma's tanh GELU
	EmbedScale   float32       // input embeddings multiplied by this (Gemma: √C), 0 = 1
	AttnScale    float64       // attention logit scale, 0 = 1/√D (Gemma 3: query_pre_attn_scalar^-½)
	Window       int           // sliding-window size on the layers marked Window (Gemma 3)
	RopeThetaSWA float64       // RoPE base on sliding-window layers (Gemma 3's local base), 0 = RopeTheta

	// Set by the loader from the tensors found, for the memory estimates.
	swa       []bool // per block: sliding-window attention (Gemma 3's local blocks)
	noRope    []bool // per block: no rotary embedding (SmolLM3)
	qkNorm    bool   // per-head q/k norms (training keeps their inputs)
	postNorms bool   // post-attention and post-FFN norms (training keeps their inputs)
}

// ErrConfig marks an invalid or unsupported model configuration.
var ErrConfig = errors.New("invalid model configuration")

// maxDim bounds every size read from a file so that nothing is allocated from
// an absurd number.
const maxDim = 1 << 20

// maxLayers bounds the block count.
const maxLayers = 4096

// Validate checks sizes for sanity and consistency.
func (c *Config) Validate() error {
	bad := func(f string, a ...any) error {
		return fmt.Errorf("model: %w: %s", ErrConfig, fmt.Sprintf(f, a...))
	}
	for _, v := range []struct {
		name string
		v    int
	}{{"embedding length", c.Dim}, {"feed-forward length", c.Hidden}, {"block count", c.Layers},
		{"head count", c.Heads}, {"kv head count", c.KVHeads}, {"head size", c.HeadDim}, {"vocabulary size", c.Vocab}} {
		if v.v <= 0 || v.v > maxDim {
			return bad("%s %d out of range", v.name, v.v)
		}
	}
	if c.Layers > maxLayers {
		return bad("block count %d out of range", c.Layers)
	}
	if c.Heads%c.KVHeads != 0 {
		return bad("head count %d is not a multiple of kv head count %d", c.Heads, c.KVHeads)
	}
	if c.RopeDims <= 0 || c.RopeDims > c.HeadDim || c.RopeDims%2 != 0 {
		return bad("rope dimension count %d invalid for head size %d", c.RopeDims, c.HeadDim)
	}
	if c.Context <= 0 || c.Context > 1<<24 {
		return bad("context length %d out of range", c.Context)
	}
	if !(c.Eps > 0 && c.Eps < 1) {
		return bad("rms epsilon %g out of range", c.Eps)
	}
	if !(c.RopeTheta > 0) {
		return bad("rope theta %g out of range", c.RopeTheta)
	}
	return nil
}

// Params returns the parameter count of the weights this config implies.
func (c *Config) Params() int64 {
	C, F, V := int64(c.Dim), int64(c.Hidden), int64(c.Vocab)
	q := C * int64(c.Heads*c.HeadDim)
	kv := C * int64(c.KVHeads*c.HeadDim)
	per := 2*q + 2*kv + 3*C*F + 2*C
	n := int64(c.Layers)*per + V*C + C
	if !c.Tied {
		n += V * C
	}
	return n
}
