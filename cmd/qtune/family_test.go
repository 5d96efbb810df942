package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qtune/qtune/format/adapter"
	"github.com/qtune/qtune/internal/shared"
	"github.com/qtune/qtune/internal/synth"
	"github.com/qtune/qtune/methods/lora"
	"github.com/qtune/qtune/model"
	"github.com/qtune/qtune/quant"
	"github.com/qtune/qtune/train"
)

// TestFamiliesCLI: as a user meets the families on the command line:
// inspect names each family and its features; tokenize adds BOS only when
// the model asks for it (Qwen does not); an MLX-LM adapter folder works
// wherever --adapter does; export --merge --type nf4 says the file is
// qtune's alone; adapters record a base model path other tools resolve.
func TestFamiliesCLI(t *testing.T) {
	dir := t.TempDir()
	want := map[string][]string{
		"llama3":   {"llama:", "rope frequency factors", "tied output"},
		"qwen2":    {"qwen2:", "q/k/v bias", "NEOX rope θ=1e+06", "tied output"},
		"qwen3":    {"qwen3:", "q/k norm", "head size 32"},
		"gemma3":   {"gemma3:", "GeGLU", "pre+post norms", "sliding window 4", "embeddings ×8"},
		"phi3":     {"phi3:", "fused qkv", "fused gate/up", "rope attention factor"},
		"phi4mini": {"phi3:", "on 12 of 16 dims"},
		"smollm3":  {"smollm3:", "no RoPE on blocks 3"},
	}
	for _, f := range synth.Families() {
		p := filepath.Join(dir, f.Name+".gguf")
		if err := f.WriteGGUF(p, quant.F32, 5); err != nil {
			t.Fatal(err)
		}
		code, out, errs := runCLI(t, "--quiet", "inspect", p)
		if code != 0 {
			t.Fatalf("%s: inspect: %s", f.Name, errs)
		}
		line := ""
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "family") {
				line = l
			}
		}
		for _, w := range want[f.Name] {
			if !strings.Contains(line, w) {
				t.Errorf("%s: inspect's family line %q lacks %q", f.Name, line, w)
			}
		}
		code, out, _ = runCLI(t, "--quiet", "tokenize", "--model", p, "--text", "Once upon a time", "--json")
		if code != 0 {
			t.Fatalf("%s: tokenize failed", f.Name)
		}
		var ids []int
		var res struct {
			IDs []int `json:"ids"`
		}
		if json.Unmarshal([]byte(out), &res) == nil && res.IDs != nil {
			ids = res.IDs
		} else {
			json.Unmarshal([]byte(out), &ids)
		}
		hasBOS := len(ids) > 0 && ids[0] == f.Tok.BOS
		if hasBOS != f.Tok.AddBOS {
			t.Errorf("%s: tokenize gave %v; the model's add_bos_token is %v", f.Name, ids, f.Tok.AddBOS)
		}
	}
	// An MLX-LM adapter folder through generate, eval and export.
	f, _ := synth.FamilyByName("qwen2")
	mp := filepath.Join(dir, "qwen2.gguf")
	data := shared.Path(t, "assets", "data", "tinyshakespeare")
	ad := filepath.Join(dir, "ad")
	c := train.Defaults()
	c.Model, c.Data, c.AdapterPath, c.CacheDir = mp, data, ad, filepath.Join(dir, "cache")
	c.Iters, c.BatchSize, c.MaxSeqLength, c.LearningRate, c.Rank, c.Alpha, c.Dropout, c.StepsPerEval, c.SaveEvery = 4, 2, 32, 3e-2, 4, 8, 0, 0, 0
	if _, err := train.Run(context.Background(), c, nil, nil); err != nil {
		t.Fatal(err)
	}
	m, err := model.Open(mp, model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	set, err := lora.Load(m, ad)
	if err != nil {
		t.Fatal(err)
	}
	mlx := filepath.Join(dir, "mlx")
	heads, kv := m.AdapterHeads()
	if err := adapter.WriteMLX(mlx, set.ToAdapter(m, mp), m.Config.Layers, heads, kv, quant.F32); err != nil {
		t.Fatal(err)
	}
	m.Close()
	gen := func(adp string) string {
		code, out, errs := runCLI(t, "--quiet", "generate", "--model", mp, "--adapter", adp, "--prompt", "Once", "-n", "12", "--temp", "0")
		if code != 0 {
			t.Fatalf("generate --adapter %s: %s", adp, errs)
		}
		return out
	}
	if a, b := gen(ad), gen(mlx); a != b {
		t.Fatalf("PEFT and MLX folders of one adapter generate differently:\n%q\n%q", a, b)
	}
	_ = f
	code, out, errs := runCLI(t, "--quiet", "export", "--model", mp, "--adapter", mlx, "--merge", "--type", "nf4", "--out", filepath.Join(dir, "m.gguf"))
	if code != 0 || !strings.Contains(out, "loads in qtune only") {
		t.Fatalf("export --merge --type nf4: code %d, %q %s", code, out, errs)
	}
	cfg, _ := os.ReadFile(filepath.Join(ad, "adapter_config.json"))
	var pc struct {
		Base string `json:"base_model_name_or_path"`
	}
	json.Unmarshal(cfg, &pc)
	if !filepath.IsAbs(pc.Base) {
		t.Fatalf("base_model_name_or_path %q is not a path another tool resolves from elsewhere", pc.Base)
	}
	if _, err := os.Stat(pc.Base); err != nil {
		t.Fatalf("base_model_name_or_path %q: %v", pc.Base, err)
	}
}
