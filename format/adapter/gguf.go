package adapter

import (
	"fmt"
	"github.com/qtune/qtune/internal/fsx"
	"io"
	"math"
	"strings"

	"github.com/qtune/qtune/format/gguf"
	"github.com/qtune/qtune/quant"
)

// GGUF keys of a LoRA adapter (formats.md §4.2) and qtune's own additions,
// which llama.cpp ignores and which make a round trip exact.
const (
	keyArch      = "general.architecture"
	keyType      = "general.type"
	keyAdapter   = "adapter.type"
	keyAlpha     = "adapter.lora.alpha"
	keyBaseCount = "general.base_model.count"
	keyBaseName  = "general.base_model.0.name"
	keyQAlpha    = "qtune.lora.alpha"      // f64: Adapter.Alpha as given
	keyQRSLoRA   = "qtune.lora.use_rslora" // bool
	keyQDropout  = "qtune.lora.dropout"    // f64
	keyQTargets  = "qtune.lora.targets"    // string array of kinds
)

// ggufAlpha is the adapter.lora.alpha that makes llama.cpp's scale
// alpha/R equal a.Scale(): Alpha, or Alpha·√R with rsLoRA (llama.cpp has no
// rsLoRA flag).
func ggufAlpha(a *Adapter) float32 {
	if a.UseRSLoRA {
		return float32(a.Alpha * math.Sqrt(float64(a.Rank)))
	}
	return float32(a.Alpha)
}

// WriteGGUF writes a llama.cpp LoRA adapter (formats.md §4.2) to w:
// general.type "adapter", general.architecture arch ("llama" when empty),
// adapter.type "lora", adapter.lora.alpha (f32), and per layer the tensors
// "<base>.lora_a" with ne [in, R] and "<base>.lora_b" with ne [R, out],
// holding the bytes of A (R, in) and B (out, R) as they are (no transpose, no
// row permutation: qtune's rows are already in GGUF order). dtype is F32, F16
// or BF16.
//
// llama.cpp scales by adapter.lora.alpha / R and knows no rsLoRA, so with
// UseRSLoRA the alpha written there is Alpha·√R. The exact Alpha, UseRSLoRA,
// Dropout and Targets are kept in qtune.lora.* keys, and BaseModel in
// general.base_model.0.name.
func WriteGGUF(w io.Writer, a *Adapter, dtype quant.Type, arch string) error {
	ps, err := check(a)
	if err != nil {
		return err
	}
	if err := checkDType(dtype); err != nil {
		return err
	}
	if arch == "" {
		arch = "llama"
	}
	kv := []gguf.KV{
		gguf.KVOf(keyArch, arch),
		gguf.KVOf(keyType, "adapter"),
		gguf.KVOf(keyAdapter, "lora"),
		gguf.KVOf(keyAlpha, ggufAlpha(a)),
	}
	if a.BaseModel != "" {
		kv = append(kv, gguf.KVOf(keyBaseCount, uint32(1)), gguf.KVOf(keyBaseName, a.BaseModel))
	}
	kv = append(kv,
		gguf.KVOf(keyQAlpha, a.Alpha),
		gguf.KVOf(keyQRSLoRA, a.UseRSLoRA),
		gguf.KVOf(keyQDropout, a.Dropout),
		gguf.KVOf(keyQTargets, kindNames(targetKinds(a, ps))))
	ts := make([]gguf.WriteTensor, 0, 2*len(ps))
	for _, p := range ps {
		l := p.l
		// Encoded as the file is written, a chunk at a time.
		an, aw, err := encoderOf(dtype, l.viewA(), l.Target+" A")
		if err != nil {
			return err
		}
		bn, bw, err := encoderOf(dtype, l.viewB(), l.Target+" B")
		if err != nil {
			return err
		}
		base := fileTarget(l.Target)
		ts = append(ts,
			gguf.WriteTensor{Name: base + ".lora_a", Type: dtype, Shape: []int64{int64(l.In), int64(l.Rank)}, Size: an, Write: aw},
			gguf.WriteTensor{Name: base + ".lora_b", Type: dtype, Shape: []int64{int64(l.Rank), int64(l.Out)}, Size: bn, Write: bw})
	}
	if err := gguf.Write(w, 3, kv, ts, 0); err != nil {
		return fmt.Errorf("adapter: %w", err)
	}
	return nil
}

// WriteGGUFFile is WriteGGUF to the file path, written to a temporary file in
// the same folder, fsynced and renamed.
func WriteGGUFFile(path string, a *Adapter, dtype quant.Type, arch string) error {
	return writeFileAtomic(path, func(w io.Writer) error { return WriteGGUF(w, a, dtype, arch) })
}

// ReadGGUFFile is ReadGGUF of the file at path.
func ReadGGUFFile(path string) (*Adapter, error) {
	data, err := fsx.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("adapter: %w", err)
	}
	return ReadGGUF(data)
}

// ReadGGUF reads a llama.cpp LoRA adapter held in data, as llama.cpp's
// loader does: general.type must be "adapter" and adapter.type "lora"; every
// tensor is "<base>.lora_a" (ne [in, R]) or "<base>.lora_b" (ne [R, out]) of
// type F32, F16 or BF16, both of a pair present, one rank throughout;
// "*_norm.weight" tensors are skipped (llama.cpp ignores them too) and any
// other suffix is an error. Bases must be the linear layers of a block
// (blk.N.attn_q.weight …); LoRA on token_embd or output is refused. That the
// base tensors exist with these shapes is for the caller to check against its
// model.
//
// Alpha is adapter.lora.alpha (R when it is 0, which llama.cpp reads as "no
// scaling"); the qtune.lora.* keys written by WriteGGUF restore Alpha and
// UseRSLoRA exactly when they agree with it, and Dropout and Targets. Layers
// come back in canonical order.
func ReadGGUF(data []byte) (*Adapter, error) {
	f, err := gguf.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("adapter: %w", err)
	}
	if s, ok := f.String(keyType); !ok || s != "adapter" {
		return nil, formatErr("general.type is %q, want \"adapter\"", s)
	}
	if s, ok := f.String(keyAdapter); !ok || s != "lora" {
		if ok {
			return nil, unsupportedErr("adapter.type %q: qtune reads LoRA adapters only", s)
		}
		return nil, formatErr("no adapter.type")
	}
	if s, ok := f.String(keyArch); !ok || s == "" {
		return nil, formatErr("no general.architecture")
	}
	// Without adapter.lora.alpha llama.cpp scales by 1 (alpha 0 below).
	alpha, _ := f.Float(keyAlpha)
	if !(alpha >= 0) || math.IsInf(alpha, 0) {
		return nil, formatErr("%s = %v, want a finite number ≥ 0", keyAlpha, alpha)
	}

	type pair struct{ a, b *gguf.TensorInfo }
	pairs := map[string]*pair{}
	var order []string
	for i := range f.Tensors {
		t := &f.Tensors[i]
		var base string
		var isB bool
		switch {
		case strings.HasSuffix(t.Name, ".lora_a"):
			base = strings.TrimSuffix(t.Name, ".lora_a")
		case strings.HasSuffix(t.Name, ".lora_b"):
			base, isB = strings.TrimSuffix(t.Name, ".lora_b"), true
		case strings.HasSuffix(t.Name, "_norm.weight"):
			continue
		default:
			return nil, formatErr("tensor %q: unexpected suffix (want .lora_a or .lora_b)", t.Name)
		}
		p := pairs[base]
		if p == nil {
			p = &pair{}
			pairs[base] = p
			order = append(order, base)
		}
		if isB {
			p.b = t
		} else {
			p.a = t
		}
	}
	if len(order) == 0 {
		return nil, formatErr("no LoRA tensors")
	}
	rank := 0
	ps := make([]parsed, 0, len(order))
	for _, base := range order {
		p := pairs[base]
		layer, kind, ok := ParseTarget(base)
		if !ok {
			if base == "token_embd.weight" || base == "output.weight" {
				return nil, unsupportedErr("tensor %q: LoRA on token_embd or output is not supported", base+".lora_a")
			}
			return nil, unsupportedErr("tensor %q: base %q is not a linear layer of a block qtune adapts", base+".lora_a", base)
		}
		if p.a == nil || p.b == nil {
			missing := base + ".lora_a"
			if p.b == nil {
				missing = base + ".lora_b"
			}
			return nil, formatErr("tensor %q is missing (lora_a and lora_b come in pairs)", missing)
		}
		an, aok := ne2(p.a.Shape)
		bn, bok := ne2(p.b.Shape)
		if !aok || !bok {
			return nil, formatErr("%s: lora_a ne %v and lora_b ne %v, want [in, R] and [R, out]", base, p.a.Shape, p.b.Shape)
		}
		in, r, out := an[0], an[1], bn[1]
		if bn[0] != r {
			return nil, formatErr("%s: lora_a ne %v and lora_b ne %v do not share the rank (lora_a tensor is not transposed?)", base, p.a.Shape, p.b.Shape)
		}
		if r <= 0 || r > maxRank || in <= 0 || in > maxFeatures || out <= 0 || out > maxFeatures {
			return nil, formatErr("%s: in %d, out %d, R %d out of range", base, in, out, r)
		}
		if rank == 0 {
			rank = int(r)
		} else if int(r) != rank {
			return nil, unsupportedErr("%s: rank %d, other layers %d: one rank for all layers", base, r, rank)
		}
		l := &LoRA{Target: base, In: int(in), Out: int(out), Rank: int(r)}
		for _, x := range []struct {
			t   *gguf.TensorInfo
			dst *[]float32
		}{{p.a, &l.A}, {p.b, &l.B}} {
			v, err := decode(x.t.Type, f.Data(data, *x.t), int(x.t.Elements()), x.t.Name)
			if err != nil {
				return nil, err
			}
			*x.dst = v
		}
		ps = append(ps, parsed{layer, kindIndex(kind), l})
	}

	// Hyper-parameters: llama.cpp's view, refined by qtune's keys when they agree.
	a := &Adapter{Rank: rank, Alpha: alpha}
	if alpha == 0 {
		a.Alpha = float64(rank) // llama.cpp: scale 1
	}
	if qa, ok := f.Float(keyQAlpha); ok {
		rs, _ := f.Int(keyQRSLoRA)
		q := &Adapter{Rank: rank, Alpha: qa, UseRSLoRA: rs == 1}
		if qa > 0 && !math.IsInf(qa, 0) && ggufAlpha(q) == float32(alpha) {
			a.Alpha, a.UseRSLoRA = qa, q.UseRSLoRA
		}
	}
	if d, ok := f.Float(keyQDropout); ok {
		if !(d >= 0 && d < 1) {
			return nil, formatErr("%s = %v, want [0, 1)", keyQDropout, d)
		}
		a.Dropout = d
	}
	a.BaseModel, _ = f.String(keyBaseName)
	var targets []int
	if names, ok := f.Strings(keyQTargets); ok {
		var use [16]bool
		for _, n := range names {
			k := kindIndex(n)
			if k < 0 {
				return nil, formatErr("%s: unknown kind %q", keyQTargets, n)
			}
			use[k] = true
		}
		gu, up := kindIndex("gate_up"), kindIndex("up")
		for i := range ps {
			p := &ps[i]
			if p.kind == up && use[gu] && !use[up] {
				// llama.cpp names the fused gate|up matrix ffn_up.
				p.kind = gu
				p.l.Target = strings.TrimSuffix(p.l.Target, ".ffn_up.weight") + ".ffn_gate_up.weight"
			}
			if !use[p.kind] {
				return nil, formatErr("%s lacks %q, which has tensors", keyQTargets, modules[p.kind].kind)
			}
		}
		targets = []int{}
		for k := range modules {
			if use[k] {
				targets = append(targets, k)
			}
		}
	}
	b := assemble(ps, targets, a.Rank, a.Alpha, a.Dropout, a.BaseModel, a.UseRSLoRA)
	return b, nil
}

// ne2 normalizes a ggml shape to two dimensions: trailing 1s may be dropped
// (ggml writes n_dims without them) or present.
func ne2(ne []int64) ([2]int64, bool) {
	var out [2]int64
	if len(ne) == 0 {
		return out, false
	}
	out[0], out[1] = ne[0], 1
	if len(ne) > 1 {
		out[1] = ne[1]
	}
	for _, d := range ne[min(len(ne), 2):] {
		if d != 1 {
			return out, false
		}
	}
	return out, true
}
