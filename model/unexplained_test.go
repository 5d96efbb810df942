package model

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qtune/qtune/format/gguf"
	"github.com/qtune/qtune/format/safetensors"
	"github.com/qtune/qtune/internal/synth"
	"github.com/qtune/qtune/quant"
)

// TestUnexplainedTensorsRefused: a model file holding a tensor that its
// config does not explain (a layer past num_hidden_layers or block_count, an
// expert of a mixture, a name qtune does not know) is refused naming that
// tensor. Each of these loaded and the tensor was silently ignored, so the
// model computed something other than what its file holds. llama.cpp refuses
// the same files ("wrong number of tensors").
func TestUnexplainedTensorsRefused(t *testing.T) {
	fam, _ := synth.FamilyByName("llama")
	for _, name := range []string{
		"model.layers.1000000.self_attn.q_proj.weight", // 7 digits: not read as a layer at all
		"model.layers.01.self_attn.q_proj.weight",
		"model.layers.0.mlp.experts.0.up_proj.weight",
		"model.foo.weight",
	} {
		dir := t.TempDir()
		if err := fam.WriteHF(dir, 1); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, "model.safetensors")
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		f, err := safetensors.Parse(b)
		if err != nil {
			t.Fatal(err)
		}
		ts := append([]safetensors.Tensor(nil), f.Tensors...)
		ts = append(ts, safetensors.Tensor{Name: name, DType: "F32", Shape: []int64{2}, Data: make([]byte, 8)})
		if err := safetensors.WriteFile(p, ts, f.Metadata); err != nil {
			t.Fatal(err)
		}
		m, err := Open(dir, Options{})
		if err == nil {
			m.Close()
			t.Errorf("HF folder with %s: loaded", name)
		} else if msg := err.Error(); !strings.Contains(msg, name) || strings.Contains(msg, "\n") {
			t.Errorf("HF folder with %s: %q does not name the tensor on one line", name, msg)
		}
	}

	src := filepath.Join(t.TempDir(), "l.gguf")
	if err := fam.WriteGGUF(src, quant.F32, 1); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	f, err := gguf.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"blk.7.attn_q.weight", "blk.999999.ffn_up.weight", "foo.weight", "blk.0.ffn_gate_exps.weight"} {
		var ts []gguf.WriteTensor
		for _, ti := range f.Tensors {
			ts = append(ts, gguf.BytesTensor(ti.Name, ti.Type, ti.Shape, f.Data(b, ti)))
		}
		ts = append(ts, gguf.BytesTensor(name, quant.F32, []int64{2}, make([]byte, 8)))
		p := filepath.Join(t.TempDir(), "x.gguf")
		out, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := gguf.Write(out, 3, f.KV, ts, 0); err != nil {
			t.Fatal(err)
		}
		out.Close()
		m, err := Open(p, Options{})
		if err == nil {
			m.Close()
			t.Errorf("GGUF with %s: loaded", name)
		} else if msg := err.Error(); !strings.Contains(msg, `"`+name+`"`) || strings.Contains(msg, "\n") {
			t.Errorf("GGUF with %s: %q does not name the tensor on one line", name, msg)
		}
	}
}
