package lora

import (
	"errors"
	"fmt"
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
	return a
}

// FromAdapter attaches a loaded adapter to m, checking every target against
// the model's shapes.
func FromAdapter(m *model.Model, a *adapter.Adapter) (*Set, error) {
	if len(a.Layers) == 0 {
		return nil, errors.New("lora: adapter has no layers")
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
		l := &Layer{Target: al.Target, In: al.In, Out: al.Out, R: al.Rank, Scale: scale, A: append([]float32(nil), al.A...), B: b,
			GA: make([]float32, len(al.A)), GB: make([]float32, len(b)), pool: m.Pool()}
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

// Load reads an adapter for m from a PEFT folder, a folder holding
// adapter.gguf, or a GGUF adapter file.
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
	case st.IsDir() && exists(filepath.Join(path, GGUFFile)):
		path = filepath.Join(path, GGUFFile)
		fallthrough
	case !st.IsDir():
		var b []byte
		if b, err = os.ReadFile(path); err == nil {
			a, err = adapter.ReadGGUF(b)
		}
	default:
		return nil, fmt.Errorf("lora: %s holds neither %s nor %s", path, PEFTFile, GGUFFile)
	}
	if err != nil {
		return nil, fmt.Errorf("lora: %s: %w", path, err)
	}
	return FromAdapter(m, a)
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }
