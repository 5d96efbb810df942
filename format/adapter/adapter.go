package adapter

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
)

// LoRA is one adapted linear layer W (Out, In): W' = W + scale·B·A.
// Target is the GGUF name of the base tensor ("blk.3.attn_q.weight"); rows of
// B are in qtune's own (GGUF, interleaved RoPE) order.
type LoRA struct {
	Target string
	In     int       // columns of W (input features)
	Out    int       // rows of W (output features)
	Rank   int       // R
	A      []float32 // (R, In) row-major
	B      []float32 // (Out, R) row-major

	// AAt and BAt take the place of A and B (left nil) in an adapter built
	// to be written (lora.Set.ToAdapter): element (r, c), computed when the
	// writer reaches it, so a permuted or fused factor is written without a
	// copy of it in memory. The writers (WritePEFT, WriteGGUF, WriteMLX)
	// accept them; Delta and CheckFinite need A and B.
	AAt, BAt func(r, c int) float32
}

// viewA and viewB are the layer's factors as the writers read them.
func (l *LoRA) viewA() view { return view{rows: l.Rank, cols: l.In, v: l.A, at: l.AAt} }
func (l *LoRA) viewB() view { return view{rows: l.Out, cols: l.Rank, v: l.B, at: l.BAt} }

// Adapter is a set of LoRA layers with their hyper-parameters.
type Adapter struct {
	Rank      int      // R of every layer
	Alpha     float64  // scale numerator; Scale() = Alpha/R (Alpha/√R with UseRSLoRA)
	Dropout   float64  // in [0, 1); informational (training only)
	Targets   []string // module kinds, a subset of Kinds(): "q", "k", "v", "o", "gate", "up", "down"
	BaseModel string   // base model name or path (PEFT base_model_name_or_path); may be empty
	Layers    []LoRA
	UseRSLoRA bool
}

// Scale returns the factor applied to B·A: Alpha/Rank, or Alpha/√Rank with
// rank-stabilized LoRA. It is 0 when Rank is not positive.
func (a *Adapter) Scale() float64 {
	if a.Rank <= 0 {
		return 0
	}
	if a.UseRSLoRA {
		return a.Alpha / math.Sqrt(float64(a.Rank))
	}
	return a.Alpha / float64(a.Rank)
}

// Delta adds scale·B·A to dst, the (Out, In) row-major weight W in GGUF row
// order: dst[o, i] += scale · Σ_r B[o, r]·A[r, i]. It is the merge step of
// export --merge. It panics when dst does not hold Out·In values.
func (l *LoRA) Delta(scale float64, dst []float32) {
	if len(dst) != l.Out*l.In {
		panic(fmt.Sprintf("adapter: Delta: dst has %d values, want %d×%d", len(dst), l.Out, l.In))
	}
	l.DeltaRows(scale, dst, 0)
}

// DeltaRows is Delta for the rows row0 … row0+len(dst)/In−1 of W only, so a
// merge can work a tile of rows at a time: dst holds those rows, row-major.
// It panics when dst is not a whole number of rows inside W or when A or B do
// not match the layer's shape.
func (l *LoRA) DeltaRows(scale float64, dst []float32, row0 int) {
	in, r := l.In, l.Rank
	if in <= 0 || r <= 0 || len(l.A) != r*in || len(l.B) != l.Out*r {
		panic(fmt.Sprintf("adapter: DeltaRows: layer %q: bad shape In %d Out %d Rank %d, |A| %d, |B| %d", l.Target, l.In, l.Out, l.Rank, len(l.A), len(l.B)))
	}
	if len(dst)%in != 0 || row0 < 0 || row0+len(dst)/in > l.Out {
		panic(fmt.Sprintf("adapter: DeltaRows: %d values from row %d do not fit (%d, %d)", len(dst), row0, l.Out, in))
	}
	s := float32(scale)
	for o := 0; o < len(dst)/in; o++ {
		row := dst[o*in : (o+1)*in : (o+1)*in]
		b := l.B[(row0+o)*r : (row0+o+1)*r]
		for k, bk := range b {
			c := s * bk
			a := l.A[k*in : (k+1)*in : (k+1)*in]
			for i := range row {
				row[i] += c * a[i]
			}
		}
	}
}

// module describes one adaptable kind of linear layer.
type module struct {
	kind string // qtune's name ("q")
	gguf string // GGUF tensor stem ("attn_q")
	hf   string // HF module path inside a layer ("self_attn.q_proj")
}

// modules lists the kinds in canonical order.
var modules = []module{
	{"q", "attn_q", "self_attn.q_proj"},
	{"k", "attn_k", "self_attn.k_proj"},
	{"v", "attn_v", "self_attn.v_proj"},
	{"o", "attn_output", "self_attn.o_proj"},
	{"gate", "ffn_gate", "mlp.gate_proj"},
	{"up", "ffn_up", "mlp.up_proj"},
	{"down", "ffn_down", "mlp.down_proj"},
	// Phi-3's fused projections. qkv's rows are q|k|v (llama.cpp's
	// attn_qkv); gate_up's are gate|up, which llama.cpp stores as ffn_up
	// (fileTarget), so in a GGUF adapter a gate_up layer reads back as
	// kind "up" with twice the rows, and the model resolves it.
	{"qkv", "attn_qkv", "self_attn.qkv_proj"},
	{"gate_up", "ffn_gate_up", "mlp.gate_up_proj"},
}

// fileTarget is the base tensor name a GGUF adapter uses for target: the
// fused gate|up matrix is llama.cpp's ffn_up.
func fileTarget(target string) string {
	if s, ok := strings.CutSuffix(target, ".ffn_gate_up.weight"); ok {
		return s + ".ffn_up.weight"
	}
	return target
}

// Kinds returns the module kinds of an unfused block, in canonical order:
// q, k, v, o, gate, up, down (AllKinds adds Phi-3's fused qkv and gate_up).
func Kinds() []string {
	out := make([]string, 7)
	for i, m := range modules[:7] {
		out[i] = m.kind
	}
	return out
}

// AllKinds is every kind an adapter may target, fused ones included.
func AllKinds() []string {
	out := make([]string, len(modules))
	for i, m := range modules {
		out[i] = m.kind
	}
	return out
}

func kindIndex(kind string) int {
	for i, m := range modules {
		if m.kind == kind {
			return i
		}
	}
	return -1
}

// hfShort is the HF module name PEFT's target_modules uses ("q_proj").
func (m module) hfShort() string { return m.hf[strings.IndexByte(m.hf, '.')+1:] }

// TargetName returns the GGUF base tensor name for a layer and kind
// (3, "q" → "blk.3.attn_q.weight"); false for an unknown kind or a negative
// layer.
func TargetName(layer int, kind string) (string, bool) {
	k := kindIndex(kind)
	if k < 0 || layer < 0 {
		return "", false
	}
	return "blk." + strconv.Itoa(layer) + "." + modules[k].gguf + ".weight", true
}

// maxLayer bounds layer indices (six digits, as format/safetensors).
const maxLayer = 999999

// ParseTarget is the inverse of TargetName. The layer index must be written
// canonically (no sign, no leading zero).
func ParseTarget(name string) (layer int, kind string, ok bool) {
	rest, ok := strings.CutPrefix(name, "blk.")
	if !ok {
		return 0, "", false
	}
	rest, ok = strings.CutSuffix(rest, ".weight")
	if !ok {
		return 0, "", false
	}
	n, stem, ok := strings.Cut(rest, ".")
	if !ok || !canonicalIndex(n) {
		return 0, "", false
	}
	layer, _ = strconv.Atoi(n)
	for _, m := range modules {
		if m.gguf == stem {
			return layer, m.kind, true
		}
	}
	return 0, "", false
}

// canonicalIndex reports whether s is a decimal layer index without sign or
// leading zero, at most maxLayer.
func canonicalIndex(s string) bool {
	if s == "" || len(s) > 6 || (s[0] == '0' && len(s) > 1) {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// Errors. Every error of this package starts with "adapter: "; malformed
// input matches ErrFormat, valid input that qtune does not handle (DoRA, LoRA
// on embeddings, bias training …) ErrUnsupported, and an Adapter or argument a
// writer refuses ErrInvalid. Errors of the packages below (gguf, safetensors,
// os) stay reachable with errors.Is/As.
var (
	ErrFormat      = errors.New("adapter: malformed adapter")
	ErrUnsupported = errors.New("adapter: unsupported adapter")
	ErrInvalid     = errors.New("adapter: invalid adapter")
)

// kindError keeps the message of err and matches kind as well.
type kindError struct {
	kind error
	err  error
}

func (e *kindError) Error() string   { return e.err.Error() }
func (e *kindError) Unwrap() []error { return []error{e.kind, e.err} }

func formatErr(format string, args ...any) error {
	return &kindError{ErrFormat, fmt.Errorf("adapter: "+format, args...)}
}

func unsupportedErr(format string, args ...any) error {
	return &kindError{ErrUnsupported, fmt.Errorf("adapter: "+format, args...)}
}

func invalidErr(format string, args ...any) error {
	return &kindError{ErrInvalid, fmt.Errorf("adapter: "+format, args...)}
}

// Size limits: far above any real adapter, low enough that products fit int.
const (
	maxRank     = 1 << 16
	maxFeatures = 1 << 24
)

// parsed is a layer with its decoded target.
type parsed struct {
	layer, kind int
	l           *LoRA
}

// check validates a (for writers) and returns its layers with decoded
// targets, in the adapter's order. It checks the hyper-parameters, that every
// target is a known, unique GGUF name whose kind is in Targets (when Targets
// is not empty), and every shape.
func check(a *Adapter) ([]parsed, error) {
	if a == nil {
		return nil, invalidErr("nil adapter")
	}
	if a.Rank <= 0 || a.Rank > maxRank {
		return nil, invalidErr("rank %d, want 1..%d", a.Rank, maxRank)
	}
	if !(a.Alpha > 0) || math.IsInf(a.Alpha, 0) {
		return nil, invalidErr("alpha %v, want a finite positive number", a.Alpha)
	}
	if !(a.Dropout >= 0 && a.Dropout < 1) {
		return nil, invalidErr("dropout %v, want [0, 1)", a.Dropout)
	}
	if len(a.Layers) == 0 {
		return nil, invalidErr("no layers")
	}
	var targets [16]bool
	for _, t := range a.Targets {
		k := kindIndex(t)
		if k < 0 {
			return nil, invalidErr("target kind %q, want one of %s", t, strings.Join(AllKinds(), ", "))
		}
		if targets[k] {
			return nil, invalidErr("target kind %q listed twice", t)
		}
		targets[k] = true
	}
	seen := make(map[string]bool, len(a.Layers))
	out := make([]parsed, len(a.Layers))
	for i := range a.Layers {
		l := &a.Layers[i]
		layer, kind, ok := ParseTarget(l.Target)
		if !ok {
			return nil, invalidErr("layer %d: target %q is not blk.N.{attn_q,attn_k,attn_v,attn_output,ffn_gate,ffn_up,ffn_down,attn_qkv,ffn_gate_up}.weight", i, l.Target)
		}
		if seen[l.Target] {
			return nil, invalidErr("layer %q appears twice", l.Target)
		}
		seen[l.Target] = true
		k := kindIndex(kind)
		if len(a.Targets) > 0 && !targets[k] {
			return nil, invalidErr("layer %q: kind %q is not in Targets %v", l.Target, kind, a.Targets)
		}
		if l.Rank != a.Rank {
			return nil, invalidErr("layer %q: rank %d, adapter rank %d (one rank for all layers)", l.Target, l.Rank, a.Rank)
		}
		if l.In <= 0 || l.In > maxFeatures || l.Out <= 0 || l.Out > maxFeatures {
			return nil, invalidErr("layer %q: shape (%d, %d), want 1..%d", l.Target, l.Out, l.In, maxFeatures)
		}
		if len(l.A) != l.Rank*l.In && (l.A != nil || l.AAt == nil) {
			return nil, invalidErr("layer %q: A has %d values, want (R %d, in %d)", l.Target, len(l.A), l.Rank, l.In)
		}
		if len(l.B) != l.Out*l.Rank && (l.B != nil || l.BAt == nil) {
			return nil, invalidErr("layer %q: B has %d values, want (out %d, R %d)", l.Target, len(l.B), l.Out, l.Rank)
		}
		out[i] = parsed{layer, k, l}
	}
	return out, nil
}

// targetKinds returns a.Targets, or when empty the kinds the layers use, in
// canonical order.
func targetKinds(a *Adapter, ps []parsed) []int {
	var use [16]bool
	if len(a.Targets) > 0 {
		for _, t := range a.Targets {
			use[kindIndex(t)] = true
		}
	} else {
		for _, p := range ps {
			use[p.kind] = true
		}
	}
	var out []int
	for k := range modules {
		if use[k] {
			out = append(out, k)
		}
	}
	return out
}

// sortLayers puts layers in canonical order: by layer index, then kind.
func sortLayers(ps []parsed) {
	sort.Slice(ps, func(i, j int) bool {
		if ps[i].layer != ps[j].layer {
			return ps[i].layer < ps[j].layer
		}
		return ps[i].kind < ps[j].kind
	})
}

// kindNames maps kind indices to names.
func kindNames(ks []int) []string {
	out := make([]string, len(ks))
	for i, k := range ks {
		out[i] = modules[k].kind
	}
	return out
}

// CheckFinite refuses an adapter with a NaN or infinite value, or whose
// scale would carry its values past float32 (alpha 1e308): applied, such an
// adapter turns every output into NaN. The error names the tensor.
func CheckFinite(a *Adapter) error {
	s := a.Scale()
	if math.IsNaN(s) || math.IsInf(s, 0) {
		return invalidErr("alpha %v and rank %d give the scale %v", a.Alpha, a.Rank, s)
	}
	for i := range a.Layers {
		l := &a.Layers[i]
		var maxA, maxB float64
		for _, t := range []struct {
			name string
			v    []float32
			max  *float64
		}{{"lora_a", l.A, &maxA}, {"lora_b", l.B, &maxB}} {
			for j, x := range t.v {
				f := float64(x)
				if math.IsNaN(f) || math.IsInf(f, 0) {
					return invalidErr("%s.%s: value %d is %v", l.Target, t.name, j, x)
				}
				*t.max = max(*t.max, math.Abs(f))
			}
		}
		if bound := math.Abs(s) * maxA * maxB * float64(l.Rank); bound > math.MaxFloat32 {
			return invalidErr("%s: scale %g times its values (|A| ≤ %g, |B| ≤ %g) overflows float32", l.Target, s, maxA, maxB)
		}
	}
	return nil
}
