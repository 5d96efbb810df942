package synth

import (
	"errors"
	"fmt"
	"math"
)

// Tiny random-weight models of each supported family, written twice: as the
// GGUF file llama.cpp's converter (convert_hf_to_gguf.py) would make, and as
// the Hugging Face folder it would make it from. The weights are drawn in the
// Hugging Face layout; the GGUF tensors are derived from them by the
// converter's transforms (Q/K row permutation, Gemma's +1 on norms, names,
// generated rope factor tensors), so the two are the same model by
// construction and a loader of either must produce the same logits.
//
// Dimension legend: C channels (Dim), F feed-forward width (Hidden), H heads,
// K kv heads, D head size (HeadDim), V vocabulary, L layers.

// Family is one model family's tiny preset: its shape, the switches that make
// the family what it is (house rule 11: a family is a row of data), and its
// tokenizer's special tokens.
type Family struct {
	Name      string // preset name: "llama", "gemma3", …
	Arch      string // GGUF general.architecture
	ModelType string // config.json model_type
	HFClass   string // config.json architectures[0]

	Dim, Hidden, Layers, Heads, KVHeads, HeadDim, Vocab, Context int
	Tied                                                         bool    // output projection is the embedding (no lm_head / output.weight)
	Eps                                                          float64 // rms_norm_eps
	RopeTheta                                                    float64 // rope_theta (of the global layers for gemma3)

	HeadDimKey bool // config.json states head_dim; the GGUF then has attention.key_length and value_length
	PermuteQK  bool // the GGUF holds W_q, W_k rows in llama.cpp's interleaved RoPE order (rope type NORM)
	QKVBias    bool // q, k, v projections have biases (qwen2)
	QKNorm     bool // per-head RMSNorm of q and k, before RoPE (qwen3, gemma3)

	// Gemma switches on the Gemma 3 block: norms multiply by 1+w (HF stores w,
	// the GGUF w+1), RMSNorm after attention and after the FFN as well as
	// before, GELU (tanh) gating, embeddings scaled by sqrt(Dim).
	Gemma              bool
	SlidingWindow      int     // local layers attend to this many positions, the current one included
	SWAPattern         int     // every SWAPattern-th layer (1-based) is global, the others local
	LocalRopeTheta     float64 // rope base of the local layers
	QueryPreAttnScalar float64 // attention scores are scaled by 1/sqrt(QueryPreAttnScalar)

	Fused          bool    // one qkv_proj (GGUF attn_qkv) and one gate_up_proj (GGUF ffn_up), as Phi-3
	PartialRotary  float64 // fraction of the head rotated by RoPE; 0 means all of it
	Rope           RopeScaling
	NoRopeInterval int // every NoRopeInterval-th layer (1-based) has no RoPE; 0: all have it

	Tok Tokenizer
}

// RopeScaling is config.json's rope_scaling block.
type RopeScaling struct {
	Type string // "" (none), "llama3" or "longrope"

	// llama3: frequencies with wavelength above OrigContext/LowFreqFactor are
	// divided by Factor, those below OrigContext/HighFreqFactor kept, the band
	// between interpolated. The GGUF gets them as rope_freqs.weight.
	Factor, LowFreqFactor, HighFreqFactor float64

	// OrigContext is original_max_position_embeddings (llama3 and longrope).
	// longrope uses the short factors while the context is at most
	// OrigContext, the long ones beyond (llama.cpp looks at the context
	// size n_ctx, transformers at the sequence length), and scales cos and
	// sin by sqrt(1 + ln(Context/OrigContext)/ln(OrigContext)) either way.
	OrigContext int
}

// Tokenizer describes the SentencePiece-style vocabulary written with a
// family: Specials at ids 0…, then the 256 byte pieces <0x00>…<0xFF>, then
// "▁", the letters a…z and ▁a…▁z, then unreachable filler pieces up to Vocab.
type Tokenizer struct {
	Specials           []string // control pieces (and the unknown piece) at ids 0…len-1
	UNK, BOS, EOS, PAD int      // ids into Specials; -1 for none
	AddBOS             bool     // tokenizer.ggml.add_bos_token / add_bos_token
	AddSpacePrefix     bool     // SentencePiece add_dummy_prefix; false is stated in the GGUF
	Class              string   // tokenizer_config.json tokenizer_class
}

var (
	llamaTok = Tokenizer{Specials: []string{"<unk>", "<s>", "</s>"}, UNK: 0, BOS: 1, EOS: 2, PAD: -1, AddBOS: true, AddSpacePrefix: true, Class: "LlamaTokenizer"}
	qwenTok  = Tokenizer{Specials: []string{"<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"}, UNK: 0, BOS: 1, EOS: 1, PAD: 1, AddBOS: false, AddSpacePrefix: true, Class: "LlamaTokenizer"}
	gemmaTok = Tokenizer{Specials: []string{"<pad>", "<eos>", "<bos>", "<unk>"}, UNK: 3, BOS: 2, EOS: 1, PAD: 0, AddBOS: true, AddSpacePrefix: false, Class: "GemmaTokenizer"}
	phiTok   = Tokenizer{Specials: []string{"<unk>", "<s>", "</s>", "<|endoftext|>"}, UNK: 0, BOS: 1, EOS: 3, PAD: 3, AddBOS: false, AddSpacePrefix: true, Class: "LlamaTokenizer"}
	smolTok  = Tokenizer{Specials: []string{"<unk>", "<|im_start|>", "<|im_end|>", "<|end_of_text|>"}, UNK: 0, BOS: -1, EOS: 2, PAD: 3, AddBOS: false, AddSpacePrefix: true, Class: "LlamaTokenizer"}
)

// families are the presets, in the order Families returns them. Every one is
// small (C 64, V 512) and exercises each switch of its family; F is 256 so
// that ffn_down rows fill a K-quant block of 256.
var families = []Family{
	{
		// Llama 2: untied output, full-width heads, GQA.
		Name: "llama", Arch: "llama", ModelType: "llama", HFClass: "LlamaForCausalLM",
		Dim: 64, Hidden: 256, Layers: 2, Heads: 4, KVHeads: 2, HeadDim: 16, Vocab: 512, Context: 512,
		Eps: 1e-5, RopeTheta: 10000, PermuteQK: true, Tok: llamaTok,
	},
	{
		// Llama 3.2: tied, llama3 rope scaling. With D 16, base 5e5 and
		// OrigContext 64 the factors are 1 for the fastest frequency (wave
		// 6.3 positions), 2.45 for the next (wave 32.5, so it shows within a
		// 12-token prompt) and 8 for the other six.
		Name: "llama3", Arch: "llama", ModelType: "llama", HFClass: "LlamaForCausalLM",
		Dim: 64, Hidden: 256, Layers: 2, Heads: 4, KVHeads: 2, HeadDim: 16, Vocab: 512, Context: 512,
		Tied: true, Eps: 1e-5, RopeTheta: 500000, HeadDimKey: true, PermuteQK: true,
		Rope: RopeScaling{Type: "llama3", Factor: 8, LowFreqFactor: 1, HighFreqFactor: 4, OrigContext: 64},
		Tok:  Tokenizer{Specials: []string{"<unk>", "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"}, UNK: 0, BOS: 1, EOS: 2, PAD: -1, AddBOS: true, AddSpacePrefix: true, Class: "LlamaTokenizer"},
	},
	{
		// Mistral Nemo: head_dim stated and ≠ C/H (H·D = 128 ≠ C).
		Name: "mistral", Arch: "llama", ModelType: "mistral", HFClass: "MistralForCausalLM",
		Dim: 64, Hidden: 256, Layers: 2, Heads: 4, KVHeads: 2, HeadDim: 32, Vocab: 512, Context: 1024,
		Eps: 1e-5, RopeTheta: 1e6, HeadDimKey: true, PermuteQK: true, Tok: llamaTok,
	},
	{
		// Qwen2.5: q/k/v biases, NEOX RoPE (no permutation), tied, no BOS.
		Name: "qwen2", Arch: "qwen2", ModelType: "qwen2", HFClass: "Qwen2ForCausalLM",
		Dim: 64, Hidden: 256, Layers: 2, Heads: 4, KVHeads: 2, HeadDim: 16, Vocab: 512, Context: 1024,
		Tied: true, Eps: 1e-6, RopeTheta: 1e6, QKVBias: true, Tok: qwenTok,
	},
	{
		// Qwen3: per-head q/k RMSNorm, head_dim 32 ≠ C/H.
		Name: "qwen3", Arch: "qwen3", ModelType: "qwen3", HFClass: "Qwen3ForCausalLM",
		Dim: 64, Hidden: 256, Layers: 2, Heads: 4, KVHeads: 2, HeadDim: 32, Vocab: 512, Context: 1024,
		Tied: true, Eps: 1e-6, RopeTheta: 1e6, HeadDimKey: true, QKNorm: true, Tok: qwenTok,
	},
	{
		// Gemma 3 (text): llama.cpp fixes the local/global pattern at 6 (the
		// converter writes no pattern key), so 6 layers: 0-4 local, 5 global.
		// One kv head (MQA) as Gemma 3 1B. llama.cpp scales scores by
		// 1/sqrt(head_dim) whatever query_pre_attn_scalar says (except for
		// 62-layer models, the 27B), so the scalar must equal head_dim here.
		Name: "gemma3", Arch: "gemma3", ModelType: "gemma3_text", HFClass: "Gemma3ForCausalLM",
		Dim: 64, Hidden: 256, Layers: 6, Heads: 4, KVHeads: 1, HeadDim: 32, Vocab: 512, Context: 1024,
		Tied: true, Eps: 1e-6, RopeTheta: 1e6, HeadDimKey: true, QKNorm: true,
		Gemma: true, SlidingWindow: 4, SWAPattern: 6, LocalRopeTheta: 10000, QueryPreAttnScalar: 32,
		Tok: gemmaTok,
	},
	{
		// Phi-3 (128k style): fused qkv and gate_up, longrope factors.
		// llama.cpp takes the short factors while its context size (n_ctx)
		// is at most OrigContext, transformers while the sequence is: compare
		// the two at a context of at most 512.
		Name: "phi3", Arch: "phi3", ModelType: "phi3", HFClass: "Phi3ForCausalLM",
		Dim: 64, Hidden: 256, Layers: 2, Heads: 4, KVHeads: 2, HeadDim: 16, Vocab: 512, Context: 2048,
		Eps: 1e-5, RopeTheta: 10000, Fused: true,
		Rope: RopeScaling{Type: "longrope", OrigContext: 512},
		Tok:  phiTok,
	},
	{
		// Phi-4-mini: Phi-3 block with partial rotary (12 of 16 dims), tied.
		Name: "phi4mini", Arch: "phi3", ModelType: "phi3", HFClass: "Phi3ForCausalLM",
		Dim: 64, Hidden: 256, Layers: 2, Heads: 4, KVHeads: 2, HeadDim: 16, Vocab: 512, Context: 2048,
		Tied: true, Eps: 1e-5, RopeTheta: 10000, Fused: true, PartialRotary: 0.75,
		Rope: RopeScaling{Type: "longrope", OrigContext: 512},
		Tok:  phiTok,
	},
	{
		// SmolLM3: no RoPE in every fourth layer (llama.cpp fixes the step at
		// 4 and reads no key for it), tied, no BOS. Rope base 1e4, not the
		// real 5e6, so that RoPE (and its absence) shows in a short prompt.
		Name: "smollm3", Arch: "smollm3", ModelType: "smollm3", HFClass: "SmolLM3ForCausalLM",
		Dim: 64, Hidden: 256, Layers: 4, Heads: 4, KVHeads: 2, HeadDim: 16, Vocab: 512, Context: 1024,
		Tied: true, Eps: 1e-6, RopeTheta: 10000, PermuteQK: true, NoRopeInterval: 4, Tok: smolTok,
	},
}

// Families returns the presets in a fixed order: llama, llama3, mistral,
// qwen2, qwen3, gemma3, phi3, phi4mini, smollm3. The slice is a copy.
func Families() []Family {
	out := make([]Family, len(families))
	copy(out, families)
	for i := range out {
		out[i].Tok.Specials = append([]string(nil), out[i].Tok.Specials...)
	}
	return out
}

// FamilyByName returns the preset called name.
func FamilyByName(name string) (Family, bool) {
	for _, f := range Families() {
		if f.Name == name {
			return f, true
		}
	}
	return Family{}, false
}

// ErrFamily matches errors for a Family that llama.cpp could not represent
// or that is inconsistent.
var ErrFamily = errors.New("synth: invalid family")

func familyErr(f Family, format string, args ...any) error {
	return fmt.Errorf("%w %q: %s", ErrFamily, f.Name, fmt.Sprintf(format, args...))
}

// RopeDims is the number of rotated dimensions per head: what the converter
// writes as rope.dimension_count (Phi-3: int(PartialRotary·C)/H).
func (f Family) RopeDims() int {
	if f.PartialRotary > 0 {
		return int(f.PartialRotary*float64(f.Dim)) / f.Heads
	}
	return f.HeadDim
}

// IsLocal reports whether layer l uses the sliding window (gemma3).
func (f Family) IsLocal(l int) bool {
	return f.SlidingWindow > 0 && f.SWAPattern > 0 && (l+1)%f.SWAPattern != 0
}

// UsesRope reports whether layer l applies RoPE (smollm3 skips every
// NoRopeInterval-th layer).
func (f Family) UsesRope(l int) bool {
	return f.NoRopeInterval == 0 || (l+1)%f.NoRopeInterval != 0
}

// check refuses a Family the files could not describe faithfully.
func (f Family) check() error {
	switch {
	case f.Name == "" || f.Arch == "" || f.ModelType == "" || f.HFClass == "":
		return familyErr(f, "name, arch, model type and HF class must be set")
	case f.Dim <= 0 || f.Hidden <= 0 || f.Layers <= 0 || f.Heads <= 0 || f.KVHeads <= 0 || f.HeadDim <= 0 || f.Context <= 0:
		return familyErr(f, "sizes must be positive")
	case f.Heads%f.KVHeads != 0:
		return familyErr(f, "%d heads do not share %d kv heads evenly", f.Heads, f.KVHeads)
	case f.HeadDim%2 != 0:
		return familyErr(f, "head size %d is odd", f.HeadDim)
	case !f.HeadDimKey && f.HeadDim*f.Heads != f.Dim:
		return familyErr(f, "head size %d ≠ C/H = %d needs HeadDimKey", f.HeadDim, f.Dim/f.Heads)
	case !(f.Eps > 0) || !(f.RopeTheta > 0):
		return familyErr(f, "eps and rope theta must be positive")
	}
	n := len(f.Tok.Specials)
	if n == 0 || f.Vocab < n+256+1+2*26 {
		return familyErr(f, "vocabulary %d too small for %d specials, 256 bytes and 53 letters", f.Vocab, n)
	}
	for _, id := range []int{f.Tok.UNK, f.Tok.BOS, f.Tok.EOS, f.Tok.PAD} {
		if id < -1 || id >= n {
			return familyErr(f, "special id %d outside the %d specials", id, n)
		}
	}
	if f.Tok.UNK < 0 {
		return familyErr(f, "SentencePiece needs an unknown piece")
	}
	if f.RopeDims()%2 != 0 || f.RopeDims() > f.HeadDim || f.RopeDims() <= 0 {
		return familyErr(f, "%d rotated dims for head size %d", f.RopeDims(), f.HeadDim)
	}
	if f.PartialRotary > 0 && !f.Fused {
		return familyErr(f, "partial rotary is only written for the phi3 block")
	}
	if f.Fused != (f.Rope.Type == "longrope") {
		return familyErr(f, "the phi3 block is written with longrope factors, and only it")
	}
	if f.Fused && (f.HeadDimKey || f.HeadDim*f.Heads != f.Dim || f.QKVBias || f.QKNorm || f.Gemma) {
		return familyErr(f, "the phi3 block has H·D = C and no biases, q/k norms or Gemma parts")
	}
	switch f.Rope.Type {
	case "":
	case "llama3":
		if f.Arch != "llama" || !(f.Rope.Factor > 0) || !(f.Rope.HighFreqFactor > f.Rope.LowFreqFactor) || f.Rope.OrigContext <= 0 {
			return familyErr(f, "llama3 rope scaling needs arch llama, factor > 0, high > low freq factor, an original context")
		}
	case "longrope":
		if f.Rope.OrigContext <= 0 || f.Rope.OrigContext >= f.Context {
			return familyErr(f, "longrope needs 0 < original context < context")
		}
	default:
		return familyErr(f, "unknown rope scaling %q", f.Rope.Type)
	}
	if f.PermuteQK != (f.Arch == "llama" || f.Arch == "smollm3") {
		return familyErr(f, "llama.cpp permutes Q/K rows exactly for the llama and smollm3 archs (rope type NORM)")
	}
	if f.QKVBias && f.Arch != "qwen2" {
		return familyErr(f, "q/k/v biases are written for qwen2 only")
	}
	if f.QKNorm != (f.Arch == "qwen3" || f.Arch == "gemma3") {
		return familyErr(f, "q/k norms belong to qwen3 and gemma3")
	}
	if f.Gemma != (f.Arch == "gemma3") {
		return familyErr(f, "the Gemma block is arch gemma3")
	}
	if f.Gemma {
		// llama.cpp: load_swa_pattern(ml, 6) with no pattern key from the
		// converter; f_attention_scale is 1/sqrt(C/H) for 62 layers (27B),
		// else 1/sqrt(head_dim); query_pre_attn_scalar is not stored.
		want := float64(f.HeadDim)
		if f.Layers == 62 {
			want = float64(f.Dim / f.Heads)
		}
		switch {
		case f.SlidingWindow <= 0 || f.SWAPattern != 6 || !(f.LocalRopeTheta > 0):
			return familyErr(f, "gemma3 needs a sliding window, the pattern 6 llama.cpp assumes, a local rope base")
		case f.QueryPreAttnScalar != want:
			return familyErr(f, "query_pre_attn_scalar %v: llama.cpp scales by 1/sqrt(%v) for %d layers and stores no scalar", f.QueryPreAttnScalar, want, f.Layers)
		}
	} else if f.SlidingWindow != 0 || f.SWAPattern != 0 || f.LocalRopeTheta != 0 || f.QueryPreAttnScalar != 0 {
		return familyErr(f, "sliding window, local rope base and query_pre_attn_scalar are gemma3 switches")
	}
	if f.NoRopeInterval != 0 && (f.Arch != "smollm3" || f.NoRopeInterval != 4) {
		return familyErr(f, "llama.cpp skips RoPE only for smollm3, every 4th layer")
	}
	if f.Arch == "smollm3" && f.NoRopeInterval != 4 {
		return familyErr(f, "llama.cpp's smollm3 always skips RoPE in every 4th layer")
	}
	return nil
}

// llama3Factors are the per-frequency divisors llama.cpp reads from
// rope_freqs.weight, computed as convert_hf_to_gguf.py's LlamaModel does
// (float32 frequencies, as torch computes them). (D/2)
func (f Family) llama3Factors() []float32 {
	r := f.Rope
	dim := f.HeadDim
	out := make([]float32, dim/2)
	lowWave := float64(r.OrigContext) / r.LowFreqFactor
	highWave := float64(r.OrigContext) / r.HighFreqFactor
	for i := range out {
		freq := float32(1 / float32(math.Pow(float64(float32(f.RopeTheta)), float64(float32(2*i)/float32(dim)))))
		wave := float32(2 * math.Pi / float64(freq))
		switch {
		case float64(wave) < highWave:
			out[i] = 1
		case float64(wave) > lowWave:
			out[i] = float32(r.Factor)
		default:
			smooth := (float32(r.OrigContext)/wave - float32(r.LowFreqFactor)) / float32(r.HighFreqFactor-r.LowFreqFactor)
			out[i] = 1 / ((1-smooth)/float32(r.Factor) + smooth)
		}
	}
	return out
}

// longropeFactors are Phi-3's long and short per-frequency divisors, one per
// rotated pair (RopeDims/2), chosen to change a short prompt's output
// visibly (the fastest frequencies matter most there) and to differ from each
// other: short 1.5, 2, 2.5, …; long 2, 4, 8, ….
func (f Family) longropeFactors() (long, short []float64) {
	n := f.RopeDims() / 2
	long, short = make([]float64, n), make([]float64, n)
	for i := range n {
		short[i] = 1.5 + 0.5*float64(i)
		long[i] = math.Pow(2, float64(i+1))
	}
	return long, short
}

// longropeAttnFactor is what the converter writes as rope.scaling.attn_factor
// and transformers multiplies cos and sin by: sqrt(1 + ln s / ln orig) with s
// = Context/OrigContext.
func (f Family) longropeAttnFactor() float64 {
	s := float64(f.Context) / float64(f.Rope.OrigContext)
	if s <= 1 {
		return 1
	}
	return math.Sqrt(1 + math.Log(s)/math.Log(float64(f.Rope.OrigContext)))
}
