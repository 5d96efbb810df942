package adapter

import (
	"bytes"
	"encoding/json"
	"fmt"
	"github.com/qtune/qtune/internal/fsx"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/qtune/qtune/format/safetensors"
	"github.com/qtune/qtune/quant"
)

// File names of an MLX-LM adapter folder.
const (
	MLXWeights = "adapters.safetensors"
	MLXConfig  = "adapter_config.json"
)

// mlxDefaultScale is MLX-LM's default lora_parameters.scale.
const mlxDefaultScale = 20.0

// WriteMLX writes an MLX-LM LoRA adapter folder (formats.md §4.3) into dir:
// adapters.safetensors with, per layer,
//
//	model.layers.N.self_attn.q_proj.lora_a   (in, R)  = Aᵀ
//	model.layers.N.self_attn.q_proj.lora_b   (R, out) = Bᵀ
//
// and adapter_config.json with fine_tune_type "lora", num_layers and
// lora_parameters {rank, scale = a.Scale(), dropout, keys}. MLX-LM runs
// Hugging Face weights (rotate-half RoPE), so the q and k columns of lora_b
// are put in HF order as for PEFT. MLX-LM attaches LoRA to the last
// num_layers blocks of the model, so modelLayers, the base model's block
// count, is needed: num_layers = modelLayers − the lowest adapted layer
// (blocks in that range without weights keep MLX's zero lora_b).
func WriteMLX(dir string, a *Adapter, modelLayers, heads, kvHeads int, dtype quant.Type) error {
	ps, err := check(a)
	if err != nil {
		return err
	}
	if err := checkDType(dtype); err != nil {
		return err
	}
	if err := checkHeadDims(ps, heads, kvHeads); err != nil {
		return err
	}
	lo, hi := ps[0].layer, ps[0].layer
	for _, p := range ps {
		lo, hi = min(lo, p.layer), max(hi, p.layer)
	}
	if hi >= modelLayers {
		return invalidErr("layer %d is beyond the model's %d blocks", hi, modelLayers)
	}
	st, _ := safetensors.DTypeOf(dtype)
	tensors := make([]safetensors.Tensor, 0, 2*len(ps))
	for _, p := range ps {
		l := p.l
		// Transposed (MLX-LM keeps lora_a (in, R), lora_b (R, out)) and q/k
		// rows in HF order as the file is written: no copy of a factor.
		av := l.viewA()
		av.transposed = true
		bv := l.viewB()
		bv.transposed = true
		switch modules[p.kind].kind {
		case "q":
			bv.src = hfOrder(l.Out, heads)
		case "k":
			bv.src = hfOrder(l.Out, kvHeads)
		}
		name := "model.layers." + strconv.Itoa(p.layer) + "." + modules[p.kind].hf
		_, aw, err := encoderOf(dtype, av, l.Target+" A")
		if err != nil {
			return err
		}
		_, bw, err := encoderOf(dtype, bv, l.Target+" B")
		if err != nil {
			return err
		}
		tensors = append(tensors,
			safetensors.Tensor{Name: name + ".lora_a", DType: st, Shape: []int64{int64(l.In), int64(l.Rank)}, Source: aw},
			safetensors.Tensor{Name: name + ".lora_b", DType: st, Shape: []int64{int64(l.Rank), int64(l.Out)}, Source: bw})
	}
	var keys []string
	for _, k := range targetKinds(a, ps) {
		keys = append(keys, modules[k].hf)
	}
	m := map[string]any{
		"fine_tune_type": "lora",
		"num_layers":     modelLayers - lo,
		"lora_parameters": map[string]any{
			"rank":    a.Rank,
			"scale":   a.Scale(),
			"dropout": a.Dropout,
			"keys":    keys,
		},
	}
	if a.BaseModel != "" {
		m["model"] = a.BaseModel
	}
	cfg, err := json.MarshalIndent(m, "", "    ")
	if err != nil {
		return invalidErr("config: %w", err)
	}
	cfg = append(cfg, '\n')
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("adapter: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(dir, MLXWeights), func(w io.Writer) error {
		return safetensors.Write(w, tensors, map[string]string{"format": "mlx"})
	}); err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, MLXConfig), func(w io.Writer) error {
		_, err := w.Write(cfg)
		return err
	})
}

// mlxConfig is what qtune takes from an MLX-LM adapter_config.json.
type mlxConfig struct {
	rank      int // 0 when absent: taken from the tensors
	scale     float64
	dropout   float64
	targets   []int // nil when keys are absent
	baseModel string
}

// parseMLXConfig reads an MLX-LM adapter_config.json.
func parseMLXConfig(data []byte) (*mlxConfig, error) {
	var raw struct {
		FineTuneType *string `json:"fine_tune_type"`
		Model        *string `json:"model"`
		LoRA         *struct {
			Rank    *json.Number `json:"rank"`
			Scale   *float64     `json:"scale"`
			Dropout *float64     `json:"dropout"`
			Keys    []string     `json:"keys"`
		} `json:"lora_parameters"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&raw); err != nil {
		return nil, formatErr("%s: %w", MLXConfig, err)
	}
	c := &mlxConfig{scale: mlxDefaultScale}
	if raw.FineTuneType != nil && *raw.FineTuneType != "lora" {
		return nil, unsupportedErr("%s: fine_tune_type %q: qtune reads LoRA adapters only", MLXConfig, *raw.FineTuneType)
	}
	if raw.Model != nil {
		c.baseModel = *raw.Model
	}
	if p := raw.LoRA; p != nil {
		if p.Rank != nil {
			r, err := strconv.ParseInt(string(*p.Rank), 10, 64)
			if err != nil || r <= 0 || r > maxRank {
				return nil, formatErr("%s: rank %s, want an integer in 1..%d", MLXConfig, *p.Rank, maxRank)
			}
			c.rank = int(r)
		}
		if p.Scale != nil {
			c.scale = *p.Scale
		}
		if p.Dropout != nil {
			c.dropout = *p.Dropout
		}
		if p.Keys != nil {
			var use [16]bool
			for _, k := range p.Keys {
				i := -1
				for j, m := range modules {
					if k == m.hf {
						i = j
					}
				}
				if i < 0 {
					return nil, unsupportedErr("%s: key %q is not a Llama linear layer qtune adapts (self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj)", MLXConfig, k)
				}
				use[i] = true
			}
			c.targets = []int{}
			for k := range modules {
				if use[k] {
					c.targets = append(c.targets, k)
				}
			}
		}
	}
	if !(c.scale > 0) || math.IsInf(c.scale, 0) {
		return nil, unsupportedErr("%s: scale %v, want a positive number", MLXConfig, c.scale)
	}
	if !(c.dropout >= 0 && c.dropout < 1) {
		return nil, formatErr("%s: dropout %v, want [0, 1)", MLXConfig, c.dropout)
	}
	return c, nil
}

// ReadMLX reads an MLX-LM LoRA adapter folder (adapters.safetensors and
// adapter_config.json), the inverse of WriteMLX: A = lora_aᵀ, B = lora_bᵀ
// with the q and k rows moved from HF to GGUF order, Alpha = scale·R (so
// Scale() is MLX's scale) and UseRSLoRA false. Layers and Targets come back
// in canonical order.
func ReadMLX(dir string, heads, kvHeads int) (*Adapter, error) {
	cb, err := fsx.ReadFile(filepath.Join(dir, MLXConfig))
	cb = fsx.TrimBOM(cb)
	if err != nil {
		return nil, fmt.Errorf("adapter: %w", err)
	}
	cfg, err := parseMLXConfig(cb)
	if err != nil {
		return nil, err
	}
	wb, err := fsx.ReadFile(filepath.Join(dir, MLXWeights))
	if err != nil {
		return nil, fmt.Errorf("adapter: %w", err)
	}
	return readMLX(cfg, wb, heads, kvHeads)
}

// ReadMLXBytes is ReadMLX of a folder's two files given as bytes (the
// weights may be a read-only mapping: nothing returned refers to them).
func ReadMLXBytes(config, weights []byte, heads, kvHeads int) (*Adapter, error) {
	cfg, err := parseMLXConfig(fsx.TrimBOM(config))
	if err != nil {
		return nil, err
	}
	return readMLX(cfg, weights, heads, kvHeads)
}

// readMLX decodes the weights of an MLX-LM adapter.
func readMLX(cfg *mlxConfig, wb []byte, heads, kvHeads int) (*Adapter, error) {
	f, err := safetensors.Parse(wb)
	if err != nil {
		return nil, fmt.Errorf("adapter: %s: %w", MLXWeights, err)
	}
	type pair struct{ a, b *safetensors.Tensor }
	pairs := map[[2]int]*pair{}
	var order [][2]int
	for i := range f.Tensors {
		t := &f.Tensors[i]
		var base string
		var isB bool
		switch {
		case strings.HasSuffix(t.Name, ".lora_a"):
			base = strings.TrimSuffix(t.Name, ".lora_a")
		case strings.HasSuffix(t.Name, ".lora_b"):
			base, isB = strings.TrimSuffix(t.Name, ".lora_b"), true
		case strings.HasSuffix(t.Name, ".m"):
			return nil, unsupportedErr("tensor %q: DoRA is not supported", t.Name)
		default:
			return nil, formatErr("tensor %q: unexpected suffix (want .lora_a or .lora_b)", t.Name)
		}
		g, ok := safetensors.GGUFName(base + ".weight")
		layer, kind, ok2 := ParseTarget(g)
		if !ok || !ok2 {
			return nil, unsupportedErr("tensor %q: %q is not a linear layer qtune adapts", t.Name, base)
		}
		key := [2]int{layer, kindIndex(kind)}
		p := pairs[key]
		if p == nil {
			p = &pair{}
			pairs[key] = p
			order = append(order, key)
		}
		if isB {
			p.b = t
		} else {
			p.a = t
		}
	}
	if len(order) == 0 {
		return nil, formatErr("%s: no LoRA tensors", MLXWeights)
	}
	rank := cfg.rank
	ps := make([]parsed, 0, len(order))
	for _, key := range order {
		p := pairs[key]
		target, _ := TargetName(key[0], modules[key[1]].kind)
		name := "model.layers." + strconv.Itoa(key[0]) + "." + modules[key[1]].hf
		if p.a == nil || p.b == nil {
			missing := ".lora_a"
			if p.b == nil {
				missing = ".lora_b"
			}
			return nil, formatErr("tensor %s%s is missing (lora_a and lora_b come in pairs)", name, missing)
		}
		if len(p.a.Shape) != 2 || len(p.b.Shape) != 2 || p.a.Shape[1] != p.b.Shape[0] {
			return nil, formatErr("%s: lora_a shape %v and lora_b shape %v, want (in, R) and (R, out)", name, p.a.Shape, p.b.Shape)
		}
		in, r, out := p.a.Shape[0], p.a.Shape[1], p.b.Shape[1]
		if r <= 0 || r > maxRank || in <= 0 || in > maxFeatures || out <= 0 || out > maxFeatures {
			return nil, formatErr("%s: in %d, out %d, R %d out of range", name, in, out, r)
		}
		if rank == 0 {
			rank = int(r)
		} else if int(r) != rank {
			return nil, formatErr("%s: rank %d, want %d", name, r, rank)
		}
		l := &LoRA{Target: target, In: int(in), Out: int(out), Rank: int(r)}
		for _, x := range []struct {
			t   *safetensors.Tensor
			dst *[]float32
		}{{p.a, &l.A}, {p.b, &l.B}} {
			typ, ok := stType(x.t.DType)
			if !ok {
				return nil, unsupportedErr("tensor %s: dtype %s, want F32, F16 or BF16", x.t.Name, x.t.DType)
			}
			// Decoded into qtune's (R, in) and (out, R): one copy.
			v, err := decodeTransposed(typ, x.t.Data, int(x.t.Shape[0]), int(x.t.Shape[1]), x.t.Name)
			if err != nil {
				return nil, err
			}
			*x.dst = v
		}
		ps = append(ps, parsed{key[0], key[1], l})
	}
	if err := checkHeadDims(ps, heads, kvHeads); err != nil {
		return nil, err
	}
	for _, p := range ps {
		switch modules[p.kind].kind {
		case "q":
			permuteQK(p.l.B, p.l.Out, p.l.Rank, heads)
		case "k":
			permuteQK(p.l.B, p.l.Out, p.l.Rank, kvHeads)
		}
	}
	if cfg.targets != nil {
		var use [16]bool
		for _, k := range cfg.targets {
			use[k] = true
		}
		for _, p := range ps {
			if !use[p.kind] {
				return nil, formatErr("%s has weights for %s, which lora_parameters.keys does not list", MLXWeights, modules[p.kind].hf)
			}
		}
	}
	return assemble(ps, cfg.targets, rank, cfg.scale*float64(rank), cfg.dropout, cfg.baseModel, false), nil
}
