package model

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qtune/qtune/format/gguf"
	"github.com/qtune/qtune/internal/synth"
	"github.com/qtune/qtune/quant"
)

// rewriteGGUF copies a GGUF with metadata changed by edit.
func rewriteGGUF(t *testing.T, src, dst string, edit func([]gguf.KV) []gguf.KV) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	f, err := gguf.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	var ts []gguf.WriteTensor
	for _, ti := range f.Tensors {
		ts = append(ts, gguf.BytesTensor(ti.Name, ti.Type, ti.Shape, f.Data(b, ti)))
	}
	var out bytes.Buffer
	if err := gguf.Write(&out, 3, edit(append([]gguf.KV(nil), f.KV...)), ts, 0); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, out.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestRefusesOtherArchitectures: every architecture or model_type outside
// the family table, and the variants of a family that qtune does not run
// (mixture of experts, rerankers, soft-capping), are refused before any
// work with one line naming what was found, never loaded as another family.
func TestRefusesOtherArchitectures(t *testing.T) {
	dir := t.TempDir()
	f, _ := synth.FamilyByName("llama")
	src := filepath.Join(dir, "llama.gguf")
	if err := f.WriteGGUF(src, quant.F32, 1); err != nil {
		t.Fatal(err)
	}
	for _, arch := range []string{"qwen2moe", "qwen3moe", "qwen35", "qwen3next", "gemma2", "gemma3n", "gemma4", "granite",
		"mistral3", "llama4", "phimoe", "phi2", "olmo2", "deepseek2", "made-up"} {
		p := filepath.Join(dir, arch+".gguf")
		rewriteGGUF(t, src, p, func(kv []gguf.KV) []gguf.KV {
			for i := range kv {
				if kv[i].Key == "general.architecture" {
					kv[i].Value = arch
				} else if name, ok := strings.CutPrefix(kv[i].Key, "llama."); ok {
					kv[i].Key = arch + "." + name
				}
			}
			return kv
		})
		_, err := Open(p, Options{})
		if err == nil {
			t.Fatalf("%s: loaded", arch)
		}
		msg := err.Error()
		if strings.Contains(msg, "\n") || !strings.Contains(msg, `"`+arch+`"`) || !strings.Contains(msg, SupportedArchs()) {
			t.Fatalf("%s: error %q does not name the architecture and the supported ones on one line", arch, msg)
		}
	}
	for _, c := range []struct {
		name string
		kv   gguf.KV
		want string
	}{
		{"mixtral", gguf.KVOf("llama.expert_count", uint32(8)), "mixture-of-experts"},
		{"softcap", gguf.KVOf("llama.final_logit_softcapping", float32(30)), "soft-capping"},
		{"yarn", gguf.KVOf("llama.rope.scaling.type", "yarn"), `"yarn"`},
	} {
		p := filepath.Join(dir, c.name+".gguf")
		rewriteGGUF(t, src, p, func(kv []gguf.KV) []gguf.KV { return append(kv, c.kv) })
		if _, err := Open(p, Options{}); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("%s: %v, want an error naming %s", c.name, err, c.want)
		}
	}
	// Hugging Face folders: the family table decides by model_type.
	hf := filepath.Join(dir, "hf")
	if err := f.WriteHF(hf, 1); err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(hf, "config.json")
	orig, _ := os.ReadFile(cfgPath)
	for _, mt := range []struct{ modelType, arch, want string }{
		{"qwen3_5", "Qwen3_5ForCausalLM", `"qwen3_5"`},
		{"gemma4_text", "Gemma4ForCausalLM", `"gemma4_text"`},
		{"gemma3", "Gemma3ForConditionalGeneration", `"gemma3"`},
		{"mixtral", "MixtralForCausalLM", `"mixtral"`},
		{"granite", "GraniteForCausalLM", `"granite"`},
		{"qwen3_moe", "Qwen3MoeForCausalLM", `"qwen3_moe"`},
		{"", "", `""`},
	} {
		var cfg map[string]any
		json.Unmarshal(orig, &cfg)
		cfg["model_type"], cfg["architectures"] = mt.modelType, []string{mt.arch}
		if mt.arch == "" {
			delete(cfg, "architectures")
		}
		b, _ := json.Marshal(cfg)
		os.WriteFile(cfgPath, b, 0o644)
		_, err := Open(hf, Options{})
		if err == nil || !strings.Contains(err.Error(), mt.want) || !strings.Contains(err.Error(), "not supported") {
			t.Fatalf("model_type %q: %v", mt.modelType, err)
		}
	}
	// A supported family with experts or a classification head.
	for _, extra := range []map[string]any{{"num_local_experts": 8}, {"architectures": []string{"LlamaForSequenceClassification"}}} {
		var cfg map[string]any
		json.Unmarshal(orig, &cfg)
		for k, v := range extra {
			cfg[k] = v
		}
		b, _ := json.Marshal(cfg)
		os.WriteFile(cfgPath, b, 0o644)
		if _, err := Open(hf, Options{}); err == nil {
			t.Fatalf("config with %v loaded", extra)
		}
	}
}

// TestGemmaQueryScaleNotExpressibleInGGUF: an HF Gemma 3 whose
// query_pre_attn_scalar differs from what llama.cpp derives runs in qtune
// (the HF scale) but is not written to a GGUF, which would change it.
func TestGemmaQueryScaleNotExpressibleInGGUF(t *testing.T) {
	f, _ := synth.FamilyByName("gemma3")
	hf := t.TempDir()
	if err := f.WriteHF(hf, 1); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(hf, "config.json")
	b, _ := os.ReadFile(p)
	var cfg map[string]any
	json.Unmarshal(b, &cfg)
	cfg["query_pre_attn_scalar"] = 48
	b, _ = json.Marshal(cfg)
	os.WriteFile(p, b, 0o644)
	m, err := Open(hf, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if got := m.Config.AttnScale; got != 1/math.Sqrt(48) {
		t.Fatalf("attention scale %g, want 1/√48", got)
	}
	var out bytes.Buffer
	if _, err := Quantize(m, &out, quant.F32); err == nil || !strings.Contains(err.Error(), "query_pre_attn_scalar") {
		t.Fatalf("quantize: %v", err)
	}
}
