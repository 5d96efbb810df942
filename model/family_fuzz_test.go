package model

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/qtune/qtune/format/gguf"
	"github.com/qtune/qtune/internal/synth"
	"github.com/qtune/qtune/quant"
)

// familyKeys are the metadata values the family rules read from a GGUF.
var familyKeys = []string{"attention.sliding_window", "attention.sliding_window_pattern", "rope.freq_base_swa",
	"attention.key_length", "rope.dimension_count", "rope.scaling.attn_factor", "rope.scaling.original_context_length",
	"attention.head_count", "attention.head_count_kv", "block_count", "expert_count", "rope.freq_base", "feed_forward_length"}

// FuzzFamilyGGUF: any value in a family key of any family's GGUF gives a
// model that runs or an error; never a panic or an allocation sized by the
// number.
func FuzzFamilyGGUF(f *testing.F) {
	fams := synth.Families()
	f.Add(uint8(5), uint8(0), uint32(3))
	f.Add(uint8(5), uint8(1), uint32(0))
	f.Add(uint8(6), uint8(4), uint32(7))
	f.Add(uint8(0), uint8(7), uint32(1<<31))
	f.Add(uint8(8), uint8(9), uint32(3))
	dir := f.TempDir()
	srcs := make([]string, len(fams))
	for i, fm := range fams {
		srcs[i] = filepath.Join(dir, fm.Name+".gguf")
		if err := fm.WriteGGUF(srcs[i], quant.F32, 1); err != nil {
			f.Fatal(err)
		}
	}
	f.Fuzz(func(t *testing.T, fi, ki uint8, v uint32) {
		fm := fams[int(fi)%len(fams)]
		key := fm.Arch + "." + familyKeys[int(ki)%len(familyKeys)]
		p := filepath.Join(t.TempDir(), "m.gguf")
		rewriteGGUF(t, srcs[int(fi)%len(fams)], p, func(kv []gguf.KV) []gguf.KV {
			for i := range kv {
				if kv[i].Key == key {
					kv[i] = gguf.KVOf(key, v)
					return kv
				}
			}
			return append(kv, gguf.KVOf(key, v))
		})
		m, err := Open(p, Options{})
		if err != nil {
			return
		}
		defer m.Close()
		s := m.NewState(4)
		defer s.Free()
		out := make([]float32, 3*m.Config.Vocab)
		_ = m.Forward(s, []int{3, 4, 5}, out, true)
	})
}

// FuzzFamilyHFConfig: any config.json in a family's HF folder gives a model
// or an error, never a panic.
func FuzzFamilyHFConfig(f *testing.F) {
	fams := synth.Families()
	dir := f.TempDir()
	for i, fm := range fams {
		d := filepath.Join(dir, fm.Name)
		if err := fm.WriteHF(d, 1); err != nil {
			f.Fatal(err)
		}
		b, _ := os.ReadFile(filepath.Join(d, "config.json"))
		f.Add(uint8(i), b)
	}
	f.Add(uint8(5), []byte(`{"model_type":"gemma3_text","hidden_size":64,"intermediate_size":256,"num_hidden_layers":6,"num_attention_heads":4,"vocab_size":512,"sliding_window":4,"layer_types":["x"]}`))
	f.Fuzz(func(t *testing.T, fi uint8, cfg []byte) {
		fm := fams[int(fi)%len(fams)]
		src := filepath.Join(dir, fm.Name)
		d := t.TempDir()
		ents, _ := os.ReadDir(src)
		for _, e := range ents {
			if e.Name() == "config.json" {
				continue
			}
			os.Symlink(filepath.Join(src, e.Name()), filepath.Join(d, e.Name()))
		}
		if err := os.WriteFile(filepath.Join(d, "config.json"), cfg, 0o644); err != nil {
			t.Fatal(err)
		}
		m, err := Open(d, Options{})
		if err != nil {
			return
		}
		defer m.Close()
		var probe map[string]any
		_ = json.Unmarshal(cfg, &probe)
		s := m.NewState(4)
		defer s.Free()
		out := make([]float32, 3*m.Config.Vocab)
		_ = m.Forward(s, []int{3, 4, 5}, out, true)
	})
}
