package lora

import (
	"errors"
	"fmt"
	"github.com/qtune/qtune/internal/fsx"
	"math"
	"os"
	"path/filepath"
	"strings"

	"github.com/qtune/qtune/format/adapter"
	"github.com/qtune/qtune/format/safetensors"
	"github.com/qtune/qtune/model"
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

// ToAdapter converts the set to the exchange form, with rows in GGUF order
// (a model loaded from a Hugging Face folder keeps HF order in memory, so its
// q/k rows are permuted here). A and B alias the set's; treat them as
// read-only.
func (s *Set) ToAdapter(m *model.Model, baseName string) *adapter.Adapter {
	a := &adapter.Adapter{Rank: s.Config.Rank, Alpha: s.Config.Alpha, Dropout: s.Config.Dropout, BaseModel: baseName, UseRSLoRA: s.Config.RSLoRA}
	for _, t := range s.Config.Targets {
		a.Targets = append(a.Targets, model.ModuleNames[t])
	}
	for _, l := range s.Layers {
		b := l.B // shared, read-only: exporting makes no copy of the adapters
		if h := qkHeads(m.Config, l.Target); h > 0 && m.HoldsHFOrder() {
			b = safetensors.PermuteRowsF32(b, l.Out, l.R, h, false)
		}
		a.Layers = append(a.Layers, adapter.LoRA{Target: l.Target, In: l.In, Out: l.Out, Rank: l.R, A: l.A, B: b})
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
	for i := range a.Layers {
		l := &a.Layers[i]
		var n int
		var stem string
		fmt.Sscanf(l.Target, "blk.%d.%s", &n, &stem)
		stem = strings.TrimSuffix(stem, ".weight")
		gi, fused := groupOf[stem]
		if !fused {
			// Zero-padded to rank P·R.
			A := make([]float32, P*R*l.In)
			copy(A, l.A)
			B := make([]float32, l.Out*P*R)
			for o := 0; o < l.Out; o++ {
				copy(B[o*P*R:o*P*R+R], l.B[o*R:(o+1)*R])
			}
			out.Layers = append(out.Layers, adapter.LoRA{Target: l.Target, In: l.In, Out: l.Out, Rank: P * R, A: A, B: B})
			_, kind, _ := adapter.ParseTarget(l.Target)
			kinds[kind] = true
			continue
		}
		g := fusedGroups[gi]
		if done[key{n, g.stem}] {
			continue
		}
		done[key{n, g.stem}] = true
		// Row offsets of the parts in the fused matrix.
		var rows []int
		outRows := 0
		for _, p := range g.parts {
			w := m.Layers[n].Matrix(partModule(p))
			rows = append(rows, outRows)
			outRows += w.Rows
		}
		A := make([]float32, P*R*l.In)
		B := make([]float32, outRows*P*R)
		slot := 0
		for pi, p := range g.parts {
			pl := byKey[key{n, p}]
			if pl == nil {
				continue
			}
			copy(A[slot*R*l.In:], pl.A)
			for o := 0; o < pl.Out; o++ {
				copy(B[(rows[pi]+o)*P*R+slot*R:(rows[pi]+o)*P*R+(slot+1)*R], pl.B[o*R:(o+1)*R])
			}
			slot++
		}
		out.Layers = append(out.Layers, adapter.LoRA{Target: fmt.Sprintf("blk.%d.%s.weight", n, g.stem), In: l.In, Out: outRows, Rank: P * R, A: A, B: B})
		kinds[g.kind] = true
	}
	for _, k := range adapter.AllKinds() {
		if kinds[k] {
			out.Targets = append(out.Targets, k)
		}
	}
	return out
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
// the model's shapes.
func FromAdapter(m *model.Model, a *adapter.Adapter) (*Set, error) {
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
		b := append([]float32(nil), al.B...)
		if h := qkHeads(m.Config, al.Target); h > 0 && m.HoldsHFOrder() {
			b = safetensors.PermuteRowsF32(b, al.Out, al.Rank, h, true)
		}
		// No gradient buffers: a loaded adapter is applied (generate, eval,
		// export), not trained (Backward must not be called).
		l := &Layer{Target: al.Target, In: al.In, Out: al.Out, R: al.Rank, Scale: scale, A: append([]float32(nil), al.A...), B: b, pool: m.Pool()}
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
	switch {
	case st.IsDir() && exists(filepath.Join(path, PEFTFile)):
		heads, kvHeads := m.AdapterHeads()
		a, err = adapter.ReadPEFT(path, heads, kvHeads)
	case st.IsDir() && exists(filepath.Join(path, adapter.MLXWeights)):
		// MLX-LM's folder: adapters.safetensors + adapter_config.json.
		heads, kvHeads := m.AdapterHeads()
		a, err = adapter.ReadMLX(path, heads, kvHeads)
	case st.IsDir() && exists(filepath.Join(path, GGUFFile)):
		path = filepath.Join(path, GGUFFile)
		fallthrough
	case !st.IsDir():
		var b []byte
		if b, err = fsx.ReadFile(path); err == nil {
			a, err = adapter.ReadGGUF(b)
		}
	default:
		return nil, fmt.Errorf("lora: %s holds none of %s (PEFT), %s (MLX-LM) and %s (llama.cpp)", path, PEFTFile, adapter.MLXWeights, GGUFFile)
	}
	if err == nil {
		err = adapter.CheckFinite(a)
	}
	if err != nil {
		return nil, fmt.Errorf("lora: %s: %w", path, err)
	}
	return FromAdapter(m, a)
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }
