package llamacpp_test

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qtune/qtune/format/gguf"
	"github.com/qtune/qtune/internal/llamacpp"
	"github.com/qtune/qtune/internal/shared"
	"github.com/qtune/qtune/internal/synth"
	"github.com/qtune/qtune/methods/lora"
	"github.com/qtune/qtune/model"
	"github.com/qtune/qtune/quant"
	"github.com/qtune/qtune/train"
)

// storyData writes a small {"text"} data folder from the shared
// TinyStories sample.
func storyData(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(shared.Path(t, "assets", "data", "tinystories", "sample.txt"))
	if err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); len(l) > 40 {
			j, _ := json.Marshal(map[string]string{"text": l})
			sb.Write(j)
			sb.WriteByte('\n')
		}
	}
	d := filepath.Join(t.TempDir(), "data")
	os.MkdirAll(d, 0o755)
	for _, n := range []string{"train.jsonl", "valid.jsonl"} {
		if err := os.WriteFile(filepath.Join(d, n), []byte(sb.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

// mergeTo writes m with the adapter in dir folded in, as type typ (what
// qtune export --merge does).
func mergeTo(t *testing.T, m *model.Model, dir string, typ quant.Type) string {
	t.Helper()
	set, err := lora.Load(m, dir)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "merged-"+typ.String()+".gguf")
	fh, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	w := bufio.NewWriter(fh)
	if _, err := model.QuantizeWith(m, w, typ, set.Merge()); err != nil {
		t.Fatal(err)
	}
	w.Flush()
	fh.Close()
	return p
}

func openModel(t *testing.T, p string) *model.Model {
	t.Helper()
	m, err := model.Open(p, model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// TestFamiliesAdaptersMatchLlamaCpp: for every family, a LoRA trained by
// qtune (all seven module kinds; Phi-3's as its fused qkv and gate_up) and
// saved as adapter.gguf gives, applied by llama.cpp, the probabilities and
// greedy tokens of qtune applying the saved adapter (PEFT folder and GGUF
// file alike); export --merge to F32 from the GGUF base and from the Hugging
// Face folder gives llama.cpp files that compute the same model (Llama 3's
// rope_freqs, Gemma's norm offset, Qwen's biases, Phi-3's LongRoPE factors
// carried over); a Q8_0 merge loads in llama.cpp and computes exactly its
// decoded weights.
func TestFamiliesAdaptersMatchLlamaCpp(t *testing.T) {
	llamacpp.Require(t)
	data := storyData(t)
	for _, f := range synth.Families() {
		t.Run(f.Name, func(t *testing.T) {
			dir := t.TempDir()
			gp := filepath.Join(dir, f.Name+".gguf")
			if err := f.WriteGGUF(gp, quant.F32, 21); err != nil {
				t.Fatal(err)
			}
			hf := filepath.Join(dir, "hf")
			if err := f.WriteHF(hf, 21); err != nil {
				t.Fatal(err)
			}
			ad := filepath.Join(dir, "adapter")
			c := train.Defaults()
			c.Model, c.Data, c.AdapterPath, c.CacheDir = gp, data, ad, filepath.Join(dir, "cache")
			c.Iters, c.BatchSize, c.MaxSeqLength, c.LearningRate, c.Rank, c.Alpha, c.Dropout = 6, 2, 32, 3e-2, 4, 8, 0
			c.StepsPerReport, c.StepsPerEval, c.SaveEvery, c.Seed = 6, 0, 0, 1
			if _, err := train.Run(context.Background(), c, nil, nil); err != nil {
				t.Fatal(err)
			}
			tol := familyTol(f)
			m := openModel(t, gp)
			ps := familyPrompts(m, 3)
			base := make([][]float32, len(ps))
			for i, p := range ps {
				base[i], _ = qtuneRun(t, m, p)
			}
			for _, from := range []string{ad, filepath.Join(ad, lora.GGUFFile)} {
				if _, err := train.ApplyAdapter(m, from); err != nil {
					t.Fatal(err)
				}
				t.Logf("qtune applying %s, llama.cpp applying adapter.gguf:", filepath.Base(from))
				judge(t, m, llamacpp.Request{Model: gp, LoRA: filepath.Join(ad, lora.GGUFFile), Prompts: ps, Logits: true, Generate: nGen, Ctx: 128}, tol)
			}
			if moved := maxMove(m, ps, base); moved < 0.05 {
				t.Fatalf("the trained adapter moves probabilities by at most %.3g: too weak to test", moved)
			}
			// export --merge from the GGUF base, F32: llama.cpp's merged model
			// is qtune's base + adapter.
			merged := mergeTo(t, m, ad, quant.F32)
			t.Logf("merged F32 from the GGUF base:")
			judge(t, m, llamacpp.Request{Model: merged, Prompts: ps, Logits: true, Generate: nGen, Ctx: 128}, tol)
			// The same from the Hugging Face folder.
			h := openModel(t, hf)
			mergedHF := mergeTo(t, h, ad, quant.F32)
			checkFamilyKeys(t, f, mergedHF)
			t.Logf("merged F32 from the HF folder:")
			judge(t, m, llamacpp.Request{Model: mergedHF, Prompts: ps, Logits: true, Generate: nGen, Ctx: 128}, tol)
			// Q8_0: llama.cpp loads it; on its decoded weights it is exact.
			q8 := openModel(t, mergeTo(t, m, ad, quant.Q8_0))
			t.Logf("merged Q8_0 against its decoded weights:")
			judge(t, q8, llamacpp.Request{Model: dequantizedTwin(t, q8), Prompts: ps, Logits: true, Ctx: 128}, tol)
		})
	}
}

// maxMove is the largest probability change m's adapters make against base.
func maxMove(m *model.Model, ps [][]int, base [][]float32) float64 {
	var moved float64
	V := m.Config.Vocab
	for i, p := range ps {
		s := m.NewState(len(p))
		l := make([]float32, len(p)*V)
		m.Forward(s, p, l, true)
		s.Free()
		for pos := range p {
			pa, pb := softmax(l[pos*V:(pos+1)*V]), softmax(base[i][pos*V:(pos+1)*V])
			for v := range pa {
				if d := pa[v] - pb[v]; d > moved {
					moved = d
				} else if -d > moved {
					moved = -d
				}
			}
		}
	}
	return moved
}

// checkFamilyKeys: a GGUF written from an HF folder carries the family's
// own tensors and keys (what llama.cpp would otherwise silently default).
func checkFamilyKeys(t *testing.T, f synth.Family, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	g, err := gguf.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if a, _ := g.String("general.architecture"); a != f.Arch {
		t.Fatalf("general.architecture %q, want %q", a, f.Arch)
	}
	var want []string
	switch {
	case f.Rope.Type == "llama3":
		want = append(want, "rope_freqs.weight")
	case f.Rope.Type == "longrope":
		want = append(want, "rope_factors_short.weight", "rope_factors_long.weight", f.Arch+".rope.scaling.attn_factor", f.Arch+".rope.scaling.original_context_length")
	}
	if f.QKVBias {
		want = append(want, "blk.0.attn_q.bias")
	}
	if f.SlidingWindow > 0 {
		want = append(want, f.Arch+".attention.sliding_window", f.Arch+".rope.freq_base_swa")
	}
	for _, w := range want {
		_, isT := g.Tensor(w)
		_, isK := g.Get(w)
		if !isT && !isK {
			t.Errorf("merged GGUF from the HF folder lacks %s", w)
		}
	}
}
