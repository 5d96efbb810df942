package adapter

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/qtune/qtune/internal/fsx"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/qtune/qtune/format/safetensors"
	"github.com/qtune/qtune/quant"
)

// File names of a PEFT adapter folder.
const (
	PEFTWeights = "adapter_model.safetensors"
	PEFTConfig  = "adapter_config.json"
)

// peftPrefix starts every tensor name PEFT saves for a causal LM.
const peftPrefix = "base_model.model."

// fusedTarget maps "model.layers.N.<hf path>" of a fused module (Phi-3's
// self_attn.qkv_proj, mlp.gate_up_proj) to its target name.
func fusedTarget(base string) (string, bool) {
	rest, ok := strings.CutPrefix(base, "model.layers.")
	if !ok {
		return "", false
	}
	n, path, ok := strings.Cut(rest, ".")
	if !ok || !canonicalIndex(n) {
		return "", false
	}
	for _, m := range modules[7:] {
		if m.hf == path {
			return "blk." + n + "." + m.gguf + ".weight", true
		}
	}
	return "", false
}

// permuteQK moves a q or k B matrix's rows, in place, from HF to GGUF order
// (formats.md §3.2), or leaves them when heads is 0: the families whose
// llama.cpp files keep HF's order (qwen2, qwen3, gemma3, phi3) pass 0
// heads.
func permuteQK(b []float32, rows, cols, heads int) {
	if heads > 0 {
		safetensors.PermuteRowsInPlace(b, rows, cols, heads, false)
	}
}

// hfOrder is the row order a writer reads a GGUF-order q or k B matrix of
// the given rows in to write it in HF order: HF row r is GGUF row src(r). It
// is nil (the rows as they are) when heads is 0.
func hfOrder(rows, heads int) func(r int) int {
	if heads == 0 {
		return nil
	}
	return func(r int) int { return safetensors.GGUFRowForHF(r, heads, rows) }
}

// WritePEFT writes a Hugging Face PEFT LoRA adapter into dir (created when
// missing): adapter_model.safetensors and adapter_config.json, each written
// to a temporary file and renamed. Names, shapes and row order are those PEFT
// expects for the original HF model (formats.md §4.1):
//
//	base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight   (R, in)
//	base_model.model.model.layers.N.self_attn.q_proj.lora_B.weight   (out, R)
//
// and likewise k/v/o_proj under self_attn and gate/up/down_proj under mlp.
// The rows of lora_B for q and k are moved from GGUF to HF order per head
// (formats.md §3.2) with heads = n_head for q and kvHeads = n_head_kv for k;
// lora_A is unchanged. dtype is F32, F16 or BF16; a value that overflows F16
// or BF16 is an error. target_modules lists a.Targets (or, when empty, the
// kinds the layers use) as HF names in canonical order; layers_to_transform
// is null when the layers span 0…max, else the list of layer indices.
func WritePEFT(dir string, a *Adapter, heads, kvHeads int, dtype quant.Type) error {
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
	st, _ := safetensors.DTypeOf(dtype)
	tensors := make([]safetensors.Tensor, 0, 2*len(ps))
	for _, p := range ps {
		l := p.l
		name := peftPrefix + "model.layers." + strconv.Itoa(p.layer) + "." + modules[p.kind].hf
		// Encoded as the file is written, a chunk at a time, q and k rows
		// read in HF order from where they are: the adapter is never in
		// memory twice.
		_, aw, err := encoderOf(dtype, l.viewA(), l.Target+" A")
		if err != nil {
			return err
		}
		b := l.viewB()
		switch modules[p.kind].kind {
		case "q":
			b.src = hfOrder(l.Out, heads)
		case "k":
			b.src = hfOrder(l.Out, kvHeads)
		}
		_, bw, err := encoderOf(dtype, b, l.Target+" B")
		if err != nil {
			return err
		}
		tensors = append(tensors,
			safetensors.Tensor{Name: name + ".lora_A.weight", DType: st, Shape: []int64{int64(l.Rank), int64(l.In)}, Source: aw},
			safetensors.Tensor{Name: name + ".lora_B.weight", DType: st, Shape: []int64{int64(l.Out), int64(l.Rank)}, Source: bw})
	}
	cfg, err := peftConfigJSON(a, ps)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("adapter: %w", err)
	}
	// Weights first: a folder whose config is new always has new weights.
	if err := writeFileAtomic(filepath.Join(dir, PEFTWeights), func(w io.Writer) error {
		return safetensors.Write(w, tensors, map[string]string{"format": "pt"})
	}); err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, PEFTConfig), func(w io.Writer) error {
		_, err := w.Write(cfg)
		return err
	})
}

// checkHeadDims checks that q and k rows split into heads (n_head for q,
// n_head_kv for k) of one even head size D per layer.
func checkHeadDims(ps []parsed, heads, kvHeads int) error {
	if heads == 0 && kvHeads == 0 {
		return nil // a family whose GGUF and HF row orders agree
	}
	headDim := map[int]int{} // layer -> D of the first of q, k seen
	for _, p := range ps {
		var h int
		var which string
		switch modules[p.kind].kind {
		case "q":
			h, which = heads, "heads"
		case "k":
			h, which = kvHeads, "kvHeads"
		default:
			continue
		}
		if err := checkHeads(p.l.Target, p.l.Out, h, which); err != nil {
			return err
		}
		d := p.l.Out / h
		if d0, ok := headDim[p.layer]; ok && d0 != d {
			return invalidErr("layer %d: q gives head size %d with %d heads, k gives %d with %d kv heads: check heads and kvHeads", p.layer, d0, heads, d, kvHeads)
		}
		headDim[p.layer] = d
	}
	return nil
}

// peftConfigJSON renders adapter_config.json (keys sorted, as PEFT writes it).
func peftConfigJSON(a *Adapter, ps []parsed) ([]byte, error) {
	var tm []string
	for _, k := range targetKinds(a, ps) {
		tm = append(tm, modules[k].hfShort())
	}
	var base any
	if a.BaseModel != "" {
		base = a.BaseModel
	}
	// layers_to_transform: null when the layers are 0…max without a gap.
	var present []bool
	for _, p := range ps {
		for len(present) <= p.layer {
			present = append(present, false)
		}
		present[p.layer] = true
	}
	var layers any
	var list []int
	for i, ok := range present {
		if ok {
			list = append(list, i)
		}
	}
	if len(list) != len(present) {
		layers = list
	}
	m := map[string]any{
		"alpha_pattern":           map[string]any{},
		"auto_mapping":            nil,
		"base_model_name_or_path": base,
		"bias":                    "none",
		"fan_in_fan_out":          false,
		"inference_mode":          true,
		"init_lora_weights":       true,
		"layers_pattern":          nil,
		"layers_to_transform":     layers,
		"lora_alpha":              a.Alpha,
		"lora_dropout":            a.Dropout,
		"modules_to_save":         nil,
		"peft_type":               "LORA",
		"r":                       a.Rank,
		"rank_pattern":            map[string]any{},
		"revision":                nil,
		"target_modules":          tm,
		"task_type":               "CAUSAL_LM",
		"use_dora":                false,
		"use_rslora":              a.UseRSLoRA,
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, invalidErr("config: %w", err)
	}
	return append(b, '\n'), nil
}

// peftConfig is what qtune takes from adapter_config.json.
type peftConfig struct {
	rank      int
	alpha     float64
	dropout   float64
	targets   []int // kinds; nil when target_modules does not list them (regex, null)
	baseModel string
	rsLoRA    bool
}

// parsePEFTConfig reads adapter_config.json. Missing keys take PEFT's
// defaults (r 8, lora_alpha 8, lora_dropout 0); features that change what the
// weights mean (DoRA, bias training, fan_in_fan_out, rank or alpha patterns,
// modules_to_save, embeddings) are refused with ErrUnsupported.
func parsePEFTConfig(data []byte) (*peftConfig, error) {
	var raw map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := dec.Decode(&raw); err != nil {
		return nil, formatErr("%s: %w", PEFTConfig, err)
	}
	if raw == nil {
		return nil, formatErr("%s: not a JSON object", PEFTConfig)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, formatErr("%s: data after the JSON object", PEFTConfig)
	}
	get := func(key string, v any) (bool, error) {
		r, ok := raw[key]
		if !ok || string(r) == "null" {
			return false, nil
		}
		if err := json.Unmarshal(r, v); err != nil {
			return false, formatErr("%s: %s: %v", PEFTConfig, key, err)
		}
		return true, nil
	}
	c := &peftConfig{rank: 8, alpha: 8}

	var peftType string
	if ok, err := get("peft_type", &peftType); err != nil {
		return nil, err
	} else if !ok {
		return nil, formatErr("%s: no peft_type", PEFTConfig)
	}
	if peftType != "LORA" {
		return nil, unsupportedErr("%s: peft_type %q: qtune reads LORA adapters only", PEFTConfig, peftType)
	}
	var taskType string
	if _, err := get("task_type", &taskType); err != nil {
		return nil, err
	}
	if taskType != "" && taskType != "CAUSAL_LM" {
		return nil, unsupportedErr("%s: task_type %q: qtune adapts causal language models (CAUSAL_LM)", PEFTConfig, taskType)
	}
	var num json.Number
	if ok, err := get("r", &num); err != nil {
		return nil, err
	} else if ok {
		r, err := strconv.ParseInt(string(num), 10, 64)
		if err != nil || r <= 0 || r > maxRank {
			return nil, formatErr("%s: r = %s, want an integer in 1..%d", PEFTConfig, num, maxRank)
		}
		c.rank = int(r)
	}
	if ok, err := get("lora_alpha", &c.alpha); err != nil {
		return nil, err
	} else if ok && !(c.alpha > 0 && !math.IsInf(c.alpha, 0)) {
		return nil, unsupportedErr("%s: lora_alpha = %v, want a positive number", PEFTConfig, c.alpha)
	}
	if _, err := get("lora_dropout", &c.dropout); err != nil {
		return nil, err
	}
	if !(c.dropout >= 0 && c.dropout < 1) {
		return nil, formatErr("%s: lora_dropout = %v, want [0, 1)", PEFTConfig, c.dropout)
	}
	if _, err := get("base_model_name_or_path", &c.baseModel); err != nil {
		return nil, err
	}
	if _, err := get("use_rslora", &c.rsLoRA); err != nil {
		return nil, err
	}

	// Features that change the meaning of the weights.
	var bias string
	if _, err := get("bias", &bias); err != nil {
		return nil, err
	}
	if bias != "" && bias != "none" {
		return nil, unsupportedErr("%s: bias %q: qtune adapters train no biases (want \"none\")", PEFTConfig, bias)
	}
	for _, f := range []struct{ key, why string }{
		{"fan_in_fan_out", "weights stored transposed (Conv1D models)"},
		{"use_dora", "DoRA"},
		{"lora_bias", "LoRA bias"},
		{"use_qalora", "QA-LoRA"},
	} {
		var on bool
		if _, err := get(f.key, &on); err != nil {
			return nil, err
		}
		if on {
			return nil, unsupportedErr("%s: %s is true: %s is not supported", PEFTConfig, f.key, f.why)
		}
	}
	for _, f := range []struct{ key, why string }{
		{"rank_pattern", "per-module ranks"},
		{"alpha_pattern", "per-module alphas"},
		{"modules_to_save", "fully trained modules (modules_to_save)"},
		{"target_parameters", "LoRA on parameters (target_parameters)"},
		{"trainable_token_indices", "trainable tokens"},
	} {
		var v any
		if _, err := get(f.key, &v); err != nil {
			return nil, err
		}
		switch x := v.(type) {
		case nil:
			continue
		case map[string]any:
			if len(x) == 0 {
				continue
			}
		case []any:
			if len(x) == 0 {
				continue
			}
		}
		return nil, unsupportedErr("%s: %s is set: %s are not supported", PEFTConfig, f.key, f.why)
	}

	r, ok := raw["target_modules"]
	if !ok || string(r) == "null" {
		return c, nil // PEFT's per-model default; the tensors tell
	}
	var s string
	if err := json.Unmarshal(r, &s); err == nil {
		if s == "all-linear" {
			c.targets = []int{0, 1, 2, 3, 4, 5, 6}
		}
		return c, nil // a regular expression: the tensors tell
	}
	var list []string
	if err := json.Unmarshal(r, &list); err != nil {
		return nil, formatErr("%s: target_modules: want a list of names or a string", PEFTConfig)
	}
	var use [16]bool
	for _, t := range list {
		k, err := peftModuleKind(t)
		if err != nil {
			return nil, err
		}
		use[k] = true
	}
	c.targets = []int{}
	for k := range modules {
		if use[k] {
			c.targets = append(c.targets, k)
		}
	}
	return c, nil
}

// peftModuleKind maps a target_modules entry ("q_proj", "self_attn.q_proj",
// "model.layers.0.self_attn.q_proj") to a kind.
func peftModuleKind(t string) (int, error) {
	short := t[strings.LastIndexByte(t, '.')+1:]
	for k, m := range modules {
		if short == m.hfShort() {
			return k, nil
		}
	}
	switch short {
	case "embed_tokens", "lm_head":
		return 0, unsupportedErr("%s: target module %q: LoRA on the embeddings or the output head is not supported (only q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)", PEFTConfig, t)
	}
	return 0, unsupportedErr("%s: target module %q is not a Llama linear layer qtune adapts (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)", PEFTConfig, t)
}

// parsePEFTName splits a PEFT tensor name into layer, kind and A/B.
func parsePEFTName(name string) (layer, kind int, isB bool, err error) {
	rest, ok := strings.CutPrefix(name, peftPrefix)
	if !ok {
		return 0, 0, false, formatErr("tensor %q: name does not start with %q", name, peftPrefix)
	}
	var base string
	switch {
	case strings.HasSuffix(rest, ".lora_A.weight"):
		base = strings.TrimSuffix(rest, ".lora_A.weight")
	case strings.HasSuffix(rest, ".lora_B.weight"):
		base, isB = strings.TrimSuffix(rest, ".lora_B.weight"), true
	case strings.Contains(rest, ".lora_magnitude_vector"):
		return 0, 0, false, unsupportedErr("tensor %q: DoRA is not supported", name)
	case strings.Contains(rest, ".lora_embedding_"):
		return 0, 0, false, unsupportedErr("tensor %q: LoRA on embeddings is not supported", name)
	case strings.Contains(rest, ".modules_to_save.") || strings.Contains(rest, ".original_module."):
		return 0, 0, false, unsupportedErr("tensor %q: fully trained modules (modules_to_save) are not supported", name)
	case strings.HasSuffix(rest, ".bias"):
		return 0, 0, false, unsupportedErr("tensor %q: bias training is not supported", name)
	default:
		return 0, 0, false, formatErr("tensor %q: unexpected suffix (want .lora_A.weight or .lora_B.weight)", name)
	}
	g, ok := safetensors.GGUFName(base + ".weight")
	if !ok {
		g, ok = fusedTarget(base)
	}
	if !ok {
		return 0, 0, false, formatErr("tensor %q: %q is not a module qtune adapts", name, base)
	}
	l, k, ok := ParseTarget(g)
	if !ok {
		if g == "token_embd.weight" || g == "output.weight" {
			return 0, 0, false, unsupportedErr("tensor %q: LoRA on the embeddings or the output head is not supported", name)
		}
		return 0, 0, false, unsupportedErr("tensor %q: %q is not a linear layer qtune adapts", name, base)
	}
	return l, kindIndex(k), isB, nil
}

// ReadPEFT reads a PEFT LoRA adapter folder written by WritePEFT or by
// Hugging Face PEFT (adapter_model.safetensors in F32, F16 or BF16, and
// adapter_config.json). It is the inverse of WritePEFT: lora_B rows of q and k
// go from HF to GGUF order (heads for q, kvHeads for k). Layers come back in
// canonical order (by layer, then q, k, v, o, gate, up, down) and Targets in
// canonical order. Every tensor must be a lora_A/lora_B pair of rank r with
// shapes (R, in) and (out, R).
func ReadPEFT(dir string, heads, kvHeads int) (*Adapter, error) {
	cb, err := fsx.ReadFile(filepath.Join(dir, PEFTConfig))
	cb = fsx.TrimBOM(cb)
	if err != nil {
		return nil, fmt.Errorf("adapter: %w", err)
	}
	cfg, err := parsePEFTConfig(cb)
	if err != nil {
		return nil, err
	}
	wb, err := fsx.ReadFile(filepath.Join(dir, PEFTWeights))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			if _, e := os.Stat(filepath.Join(dir, "adapter_model.bin")); e == nil {
				return nil, unsupportedErr("%s: only adapter_model.bin (a pickle) is present; save the adapter with safetensors", dir)
			}
		}
		return nil, fmt.Errorf("adapter: %w", err)
	}
	return readPEFT(cfg, wb, heads, kvHeads)
}

// ReadPEFTBytes is ReadPEFT of a folder's two files given as bytes (the
// weights may be a read-only mapping: nothing returned refers to them).
func ReadPEFTBytes(config, weights []byte, heads, kvHeads int) (*Adapter, error) {
	cfg, err := parsePEFTConfig(fsx.TrimBOM(config))
	if err != nil {
		return nil, err
	}
	return readPEFT(cfg, weights, heads, kvHeads)
}

// readPEFT decodes the weights of a PEFT adapter.
func readPEFT(cfg *peftConfig, wb []byte, heads, kvHeads int) (*Adapter, error) {
	f, err := safetensors.Parse(wb)
	if err != nil {
		return nil, fmt.Errorf("adapter: %s: %w", PEFTWeights, err)
	}
	type pair struct{ a, b *safetensors.Tensor }
	pairs := map[[2]int]*pair{}
	var order [][2]int
	for i := range f.Tensors {
		t := &f.Tensors[i]
		layer, kind, isB, err := parsePEFTName(t.Name)
		if err != nil {
			return nil, err
		}
		key := [2]int{layer, kind}
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
		return nil, formatErr("%s: no LoRA tensors", PEFTWeights)
	}
	ps := make([]parsed, 0, len(order))
	for _, key := range order {
		p := pairs[key]
		target, _ := TargetName(key[0], modules[key[1]].kind)
		name := peftPrefix + "model.layers." + strconv.Itoa(key[0]) + "." + modules[key[1]].hf
		if p.a == nil || p.b == nil {
			missing := ".lora_A.weight"
			if p.b == nil {
				missing = ".lora_B.weight"
			}
			return nil, formatErr("tensor %s%s is missing (lora_A and lora_B come in pairs)", name, missing)
		}
		if len(p.a.Shape) != 2 || len(p.b.Shape) != 2 {
			return nil, formatErr("%s: lora_A shape %v and lora_B shape %v, want (R, in) and (out, R)", name, p.a.Shape, p.b.Shape)
		}
		r, in, out := p.a.Shape[0], p.a.Shape[1], p.b.Shape[0]
		if p.b.Shape[1] != r {
			return nil, formatErr("%s: lora_A shape %v and lora_B shape %v do not share the rank", name, p.a.Shape, p.b.Shape)
		}
		if r != int64(cfg.rank) {
			return nil, formatErr("%s: rank %d, adapter_config.json r = %d", name, r, cfg.rank)
		}
		if in <= 0 || in > maxFeatures || out <= 0 || out > maxFeatures {
			return nil, formatErr("%s: shape (%d, %d), want 1..%d", name, out, in, maxFeatures)
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
			v, err := decode(typ, x.t.Data, int(x.t.Shape[0]*x.t.Shape[1]), x.t.Name)
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
	targets := cfg.targets
	if targets != nil {
		var use [16]bool
		for _, k := range targets {
			use[k] = true
		}
		for _, p := range ps {
			if !use[p.kind] {
				return nil, formatErr("%s has weights for %s, which target_modules does not list", PEFTWeights, modules[p.kind].hfShort())
			}
		}
	}
	return assemble(ps, targets, cfg.rank, cfg.alpha, cfg.dropout, cfg.baseModel, cfg.rsLoRA), nil
}

// assemble builds an Adapter from decoded layers, sorted canonically; nil
// targets are taken from the layers.
func assemble(ps []parsed, targets []int, rank int, alpha, dropout float64, base string, rs bool) *Adapter {
	sortLayers(ps)
	if targets == nil {
		var use [16]bool
		for _, p := range ps {
			use[p.kind] = true
		}
		targets = []int{}
		for k := range modules {
			if use[k] {
				targets = append(targets, k)
			}
		}
	}
	a := &Adapter{Rank: rank, Alpha: alpha, Dropout: dropout, Targets: kindNames(targets), BaseModel: base, UseRSLoRA: rs}
	a.Layers = make([]LoRA, len(ps))
	for i, p := range ps {
		a.Layers[i] = *p.l
	}
	return a
}
