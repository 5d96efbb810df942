package lora

import (
	"errors"
	"fmt"
	"github.com/qtune/qtune/internal/fsx"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/qtune/qtune/format/adapter"
	"github.com/qtune/qtune/format/safetensors"
	"github.com/qtune/qtune/model"
	"github.com/qtune/qtune/offload"
	"github.com/qtune/qtune/quant"
)

// File names inside an adapter folder.
const (
	PEFTFile = "adapter_model.safetensors"
	GGUFFile = "adapter.gguf"
)

// qkHeads returns the head count whose rows a module's output is grouped
// by when it is q or k (0 otherwise).
func qkHeads(c model.Config, target string) int {
	switch {
	case strings.HasSuffix(target, ".attn_q.weight"):
		return c.Heads
	case strings.HasSuffix(target, ".attn_k.weight"):
		return c.KVHeads
	}
	return 0
}

// ToAdapter converts the set to the exchange form for the writers, with rows
// in GGUF order, and makes no copy of the adapters: A and B alias the set's
// (treat them as read-only), except where the rows must move. A model loaded
// from a Hugging Face folder keeps q/k rows in HF order, so those layers get
// a BAt that reads B's rows in GGUF order; Phi-3's fused layers are AAt and
// BAt over their parts (fuse).
func (s *Set) ToAdapter(m *model.Model, baseName string) *adapter.Adapter {
	a := &adapter.Adapter{Rank: s.Config.Rank, Alpha: s.Config.Alpha, Dropout: s.Config.Dropout, BaseModel: baseName, UseRSLoRA: s.Config.RSLoRA}
	for _, t := range s.Config.Targets {
		a.Targets = append(a.Targets, model.ModuleNames[t])
	}
	for _, l := range s.Layers {
		al := adapter.LoRA{Target: l.Target, In: l.In, Out: l.Out, Rank: l.R, A: l.A, B: l.B}
		if h := qkHeads(m.Config, l.Target); h > 0 && m.HoldsHFOrder() {
			b, r, rows := l.B, l.R, l.Out
			al.B, al.BAt = nil, func(g, c int) float32 { return b[safetensors.HFRowForGGUF(g, h, rows)*r+c] }
		}
		a.Layers = append(a.Layers, al)
	}
	if m.FusedQKV() || m.FusedGateUp() {
		return fuse(a, m)
	}
	return a
}

// fusedGroups are the module parts of Phi-3's fused matrices, in row order.
var fusedGroups = []struct {
	kind, stem string
	parts      []string // part target stems
}{
	{"qkv", "attn_qkv", []string{"attn_q", "attn_k", "attn_v"}},
	{"gate_up", "ffn_gate_up", []string{"ffn_gate", "ffn_up"}},
}

// fuse rewrites an adapter whose layers target the parts of Phi-3's fused
// matrices (qtune trains q, k, v, gate and up as parts, each with its own
// A) into one layer per fused matrix, as PEFT and llama.cpp name them
// (qkv_proj / attn_qkv, gate_up_proj / ffn_up), exactly: the fused A
// stacks the parts' A, the fused B places each part's B in its rows and
// its own R columns. Every layer then has rank P·R, P the most parts a
// fused layer holds (others are padded with zero rows and columns), and
// alpha becomes P·α (√P·α with rsLoRA), so alpha/rank, the scale every
// tool applies, is unchanged.
func fuse(a *adapter.Adapter, m *model.Model) *adapter.Adapter {
	type key struct {
		layer int
		stem  string
	}
	byKey := map[key]*adapter.LoRA{}
	for i := range a.Layers {
		l := &a.Layers[i]
		var n int
		var stem string
		if _, err := fmt.Sscanf(l.Target, "blk.%d.%s", &n, &stem); err == nil {
			byKey[key{n, strings.TrimSuffix(stem, ".weight")}] = l
		}
	}
	R := a.Rank
	P := 1
	groupOf := map[string]int{}
	for gi, g := range fusedGroups {
		if (g.kind == "qkv" && !m.FusedQKV()) || (g.kind == "gate_up" && !m.FusedGateUp()) {
			continue
		}
		for _, p := range g.parts {
			groupOf[p] = gi
		}
		for l := 0; l < m.Config.Layers; l++ {
			n := 0
			for _, p := range g.parts {
				if byKey[key{l, p}] != nil {
					n++
				}
			}
			P = max(P, n)
		}
	}
	out := &adapter.Adapter{Rank: P * R, Alpha: a.Alpha * float64(P), Dropout: a.Dropout, BaseModel: a.BaseModel, UseRSLoRA: a.UseRSLoRA}
	if a.UseRSLoRA {
		out.Alpha = a.Alpha * math.Sqrt(float64(P))
	}
	kinds := map[string]bool{}
	done := map[key]bool{}
	PR := P * R
	for i := range a.Layers {
		l := &a.Layers[i]
		var n int
		var stem string
		fmt.Sscanf(l.Target, "blk.%d.%s", &n, &stem)
		stem = strings.TrimSuffix(stem, ".weight")
		gi, fused := groupOf[stem]
		if !fused {
			// Zero-padded to rank P·R.
			la, lb := factors(l)
			out.Layers = append(out.Layers, adapter.LoRA{Target: l.Target, In: l.In, Out: l.Out, Rank: PR,
				AAt: func(r, c int) float32 {
					if r < R {
						return la(r, c)
					}
					return 0
				},
				BAt: func(o, c int) float32 {
					if c < R {
						return lb(o, c)
					}
					return 0
				}})
			_, kind, _ := adapter.ParseTarget(l.Target)
			kinds[kind] = true
			continue
		}
		g := fusedGroups[gi]
		if done[key{n, g.stem}] {
			continue
		}
		done[key{n, g.stem}] = true
		// The parts present, each with its row offset in the fused matrix
		// and its slot of R columns in the fused rank.
		type part struct {
			row0, rows int
			a, b       func(r, c int) float32
		}
		var parts []part // by slot
		var bounds []int // row offset of each part of the group
		var slotOf []int // slot of each part of the group, −1 when absent
		outRows := 0
		for _, p := range g.parts {
			w := m.Layers[n].Matrix(partModule(p))
			bounds = append(bounds, outRows)
			slotOf = append(slotOf, -1)
			if pl := byKey[key{n, p}]; pl != nil {
				slotOf[len(slotOf)-1] = len(parts)
				pa, pb := factors(pl)
				parts = append(parts, part{outRows, w.Rows, pa, pb})
			}
			outRows += w.Rows
		}
		out.Layers = append(out.Layers, adapter.LoRA{Target: fmt.Sprintf("blk.%d.%s.weight", n, g.stem), In: l.In, Out: outRows, Rank: PR,
			// A stacks the parts' A in slot order: row r is row r mod R
			// of slot r/R's part.
			AAt: func(r, c int) float32 {
				if s := r / R; s < len(parts) {
					return parts[s].a(r%R, c)
				}
				return 0
			},
			// B holds each part's B in its rows and its slot's columns.
			BAt: func(o, c int) float32 {
				pi := len(bounds) - 1
				for pi > 0 && o < bounds[pi] {
					pi--
				}
				s := slotOf[pi]
				if s < 0 || c/R != s {
					return 0
				}
				return parts[s].b(o-parts[s].row0, c%R)
			}})
		kinds[g.kind] = true
	}
	for _, k := range adapter.AllKinds() {
		if kinds[k] {
			out.Targets = append(out.Targets, k)
		}
	}
	return out
}

// factors returns element access to a layer's A and B, whether it holds
// them or computes them (AAt, BAt).
func factors(l *adapter.LoRA) (a, b func(r, c int) float32) {
	a, b = l.AAt, l.BAt
	if l.A != nil {
		A, in := l.A, l.In
		a = func(r, c int) float32 { return A[r*in+c] }
	}
	if l.B != nil {
		B, rank := l.B, l.Rank
		b = func(r, c int) float32 { return B[r*rank+c] }
	}
	return a, b
}

// partModule maps a part's tensor stem to its module.
func partModule(stem string) model.Module {
	for k := model.Module(0); k < model.NumModules; k++ {
		if strings.HasSuffix(model.TensorName(0, k), "."+stem+".weight") {
			return k
		}
	}
	panic("lora: unknown part " + stem)
}

// split is fuse's inverse for reading: a layer on a fused matrix (attn_qkv;
// ffn_gate_up, or ffn_up with 2F rows as a GGUF adapter names it) becomes
// one layer per part, each with the whole A and its rows of B — exact,
// whether the file came from qtune (block-diagonal B) or from PEFT (one
// shared A).
func split(a *adapter.Adapter, m *model.Model) *adapter.Adapter {
	out := *a
	out.Layers = nil
	c := m.Config
	for _, l := range a.Layers {
		var n int
		var stem string
		if _, err := fmt.Sscanf(l.Target, "blk.%d.%s", &n, &stem); err != nil || n < 0 || n >= c.Layers {
			out.Layers = append(out.Layers, l)
			continue
		}
		stem = strings.TrimSuffix(stem, ".weight")
		var parts []string
		switch {
		case stem == "attn_qkv" && m.FusedQKV():
			parts = fusedGroups[0].parts
		case (stem == "ffn_gate_up" || (stem == "ffn_up" && l.Out == 2*c.Hidden)) && m.FusedGateUp():
			parts = fusedGroups[1].parts
		default:
			out.Layers = append(out.Layers, l)
			continue
		}
		r0 := 0
		for _, p := range parts {
			rows := m.Layers[n].Matrix(partModule(p)).Rows
			if r0+rows > l.Out {
				break // a shape the model will refuse below
			}
			out.Layers = append(out.Layers, adapter.LoRA{Target: fmt.Sprintf("blk.%d.%s.weight", n, p), In: l.In, Out: rows, Rank: l.Rank,
				A: l.A, B: l.B[r0*l.Rank : (r0+rows)*l.Rank]})
			r0 += rows
		}
	}
	return &out
}

// FromAdapter attaches a loaded adapter to m, checking every target against
// the model's shapes. The set holds copies of a's values.
func FromAdapter(m *model.Model, a *adapter.Adapter) (*Set, error) {
	return fromAdapter(m, a, false)
}

// fromAdapter is FromAdapter; with own the set takes a's values rather than
// copies (Load's adapter is read for this set alone), so a loaded adapter
// is in memory once, its q/k rows moved in place.
func fromAdapter(m *model.Model, a *adapter.Adapter, own bool) (*Set, error) {
	if len(a.Layers) == 0 {
		return nil, errors.New("lora: adapter has no layers")
	}
	if m.FusedQKV() || m.FusedGateUp() {
		a = split(a, m)
	}
	s := &Set{Config: Config{Rank: a.Rank, Alpha: a.Alpha, Dropout: 0, RSLoRA: a.UseRSLoRA},
		ByPos: make(model.Adapters, m.Config.Layers), ByName: map[string]*Layer{}}
	scale := float32(a.Scale())
	seen := map[model.Module]bool{}
	for _, al := range a.Layers {
		var li int
		var mod model.Module = -1
		for l := 0; l < m.Config.Layers && mod < 0; l++ {
			for k := model.Module(0); k < model.NumModules; k++ {
				if model.TensorName(l, k) == al.Target {
					li, mod = l, k
				}
			}
		}
		if mod < 0 {
			return nil, fmt.Errorf("lora: adapter targets %q, which this model does not have", al.Target)
		}
		w := m.Layers[li].Matrix(mod)
		if al.In != w.Cols || al.Out != w.Rows || len(al.A) != al.Rank*al.In || len(al.B) != al.Out*al.Rank {
			return nil, fmt.Errorf("lora: adapter %s is (%d, %d) rank %d; the model's weight is (%d, %d)", al.Target, al.Out, al.In, al.Rank, w.Rows, w.Cols)
		}
		A, b := al.A, al.B
		if !own {
			A, b = slices.Clone(A), slices.Clone(b)
		}
		if h := qkHeads(m.Config, al.Target); h > 0 && m.HoldsHFOrder() {
			safetensors.PermuteRowsInPlace(b, al.Out, al.Rank, h, true)
		}
		// No gradient buffers: a loaded adapter is applied (generate, eval,
		// export), not trained (Backward must not be called).
		l := &Layer{Target: al.Target, In: al.In, Out: al.Out, R: al.Rank, Scale: scale, A: A, B: b, pool: m.Pool()}
		s.Layers = append(s.Layers, l)
		s.ByPos[li][mod] = l
		s.ByName[l.Target] = l
		if !seen[mod] {
			seen[mod] = true
			s.Config.Targets = append(s.Config.Targets, mod)
		}
	}
	return s, nil
}

// Save writes the set into dir as a PEFT adapter (adapter_model.safetensors
// + adapter_config.json, Hugging Face row order) and a llama.cpp GGUF LoRA
// adapter (adapter.gguf).
func (s *Set) Save(dir string, m *model.Model, baseName string) error {
	a := s.ToAdapter(m, baseName)
	heads, kvHeads := m.AdapterHeads()
	if err := adapter.WritePEFT(dir, a, heads, kvHeads, quant.F32); err != nil {
		return err
	}
	tmp := filepath.Join(dir, GGUFFile+".tmp")
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	err = adapter.WriteGGUF(f, a, quant.F32, m.Config.Arch)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, GGUFFile))
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

// Load reads an adapter for m from a PEFT folder, an MLX-LM folder
// (adapters.safetensors), a folder holding adapter.gguf, or a GGUF adapter
// file.
func Load(m *model.Model, path string) (*Set, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("lora: %w", err)
	}
	var a *adapter.Adapter
	heads, kvHeads := m.AdapterHeads()
	switch {
	case st.IsDir() && exists(filepath.Join(path, PEFTFile)):
		a, err = readMapped(filepath.Join(path, adapter.PEFTConfig), filepath.Join(path, PEFTFile), func(c, w []byte) (*adapter.Adapter, error) {
			return adapter.ReadPEFTBytes(c, w, heads, kvHeads)
		})
	case st.IsDir() && exists(filepath.Join(path, adapter.MLXWeights)):
		// MLX-LM's folder: adapters.safetensors + adapter_config.json.
		a, err = readMapped(filepath.Join(path, adapter.MLXConfig), filepath.Join(path, adapter.MLXWeights), func(c, w []byte) (*adapter.Adapter, error) {
			return adapter.ReadMLXBytes(c, w, heads, kvHeads)
		})
	case st.IsDir() && exists(filepath.Join(path, GGUFFile)):
		path = filepath.Join(path, GGUFFile)
		fallthrough
	case !st.IsDir():
		a, err = readMapped("", path, func(_, w []byte) (*adapter.Adapter, error) { return adapter.ReadGGUF(w) })
	default:
		return nil, fmt.Errorf("lora: %s holds none of %s (PEFT), %s (MLX-LM) and %s (llama.cpp)", path, PEFTFile, adapter.MLXWeights, GGUFFile)
	}
	if err == nil {
		err = adapter.CheckFinite(a)
	}
	if err != nil {
		return nil, fmt.Errorf("lora: %s: %w", path, err)
	}
	return fromAdapter(m, a, true)
}

// readMapped decodes an adapter whose weights file is mapped rather than
// read (the decoded values are the only copy in memory, and the mapping's
// pages are the page cache's) and whose config, when named, is read.
func readMapped(config, weights string, read func(config, weights []byte) (*adapter.Adapter, error)) (*adapter.Adapter, error) {
	var c []byte
	if config != "" {
		var err error
		if c, err = fsx.ReadFile(config); err != nil {
			return nil, err
		}
	}
	w, err := offload.Map(weights)
	if err != nil {
		return nil, err
	}
	defer w.Close()
	return read(c, w.Bytes())
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }
