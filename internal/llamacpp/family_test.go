package llamacpp_test

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/qtune/qtune/internal/llamacpp"
	"github.com/qtune/qtune/internal/synth"
	"github.com/qtune/qtune/model"
	"github.com/qtune/qtune/nn"
	"github.com/qtune/qtune/quant"
)

// familyPrompts are three random id sequences past the special tokens, of
// lengths that cross Gemma 3's small sliding window and SmolLM3's no-RoPE
// block.
func familyPrompts(m *model.Model, seed uint64) [][]int {
	r := rand.New(rand.NewPCG(seed, 17))
	var ps [][]int
	for _, n := range []int{7, 16, 29} {
		p := make([]int, n)
		for i := range p {
			p[i] = 3 + r.IntN(m.Config.Vocab-3)
		}
		ps = append(ps, p)
	}
	return ps
}

// writeFamily writes f's model (seed 21) as a GGUF of typ and opens it.
func writeFamily(t *testing.T, f synth.Family, typ quant.Type) (string, *model.Model) {
	t.Helper()
	p := filepath.Join(t.TempDir(), f.Name+".gguf")
	if err := f.WriteGGUF(p, typ, 21); err != nil {
		t.Fatal(err)
	}
	return p, openModel(t, p)
}

// familyTol is the probability bound for a family's F32 model: 1e-4, the
// issue's bound, except where llama.cpp's CPU backend does not compute the
// function exactly. Gemma's GeGLU there reads gelu from a table indexed by
// its input rounded to float16 (ggml-cpu/vec.h, GGML_GELU_FP16), while qtune
// computes the tanh form exactly as Hugging Face does; the gap it leaves is
// measured by TestGemmaGELUTableGap below.
func familyTol(f synth.Family) float64 {
	if f.Arch == "gemma3" {
		return 5e-3
	}
	return probTol
}

// TestFamiliesMatchLlamaCpp: for every family, a random F32 GGUF written
// with llama.cpp's conventions gives in qtune the next-token distribution
// llama.cpp gives at every position of three prompts (≤ 1e-4), and the same
// greedy continuation token for token.
func TestFamiliesMatchLlamaCpp(t *testing.T) {
	llamacpp.Require(t)
	for _, f := range synth.Families() {
		t.Run(f.Name, func(t *testing.T) {
			p, m := writeFamily(t, f, quant.F32)
			worst := judge(t, m, llamacpp.Request{Model: p, Prompts: familyPrompts(m, 1), Logits: true, Generate: nGen, Ctx: 128}, familyTol(f))
			t.Logf("%s (%v): max |Δp| %.3g", f.Name, m.Features(), worst)
		})
	}
}

// TestGemmaGELUTableGap shows that Gemma 3's gap to llama.cpp is llama.cpp's
// float16 GELU table. With the same table (nn.GELUTable, kernels.GeGLUTable)
// qtune's gap shrinks from 2.9e-3 to 5.2e-4, and that remainder is the
// table's own discontinuity: moving every gelu input by 2e-7 of itself
// (float32 rounding) moves qtune's table-based probabilities by 4.9e-4
// (measured once with a jitter hook, not kept), because an input that
// crosses a float16 rounding boundary jumps a whole float16 step. So no
// float32 implementation can match llama.cpp's CPU Gemma closer than that;
// qtune computes GELU exactly (as Hugging Face and llama.cpp's CUDA do).
func TestGemmaGELUTableGap(t *testing.T) {
	llamacpp.Require(t)
	f, ok := synth.FamilyByName("gemma3")
	if !ok {
		t.Fatal("no gemma3 preset")
	}
	p, m := writeFamily(t, f, quant.F32)
	req := llamacpp.Request{Model: p, Prompts: familyPrompts(m, 1), Logits: true, Generate: nGen, Ctx: 128}
	exact := judge(t, m, req, familyTol(f))
	m.Config.Act = nn.GELUTable
	table := judge(t, m, req, 1e-3)
	t.Logf("gemma3: max |Δp| %.3g with exact GELU, %.3g with llama.cpp's float16 table", exact, table)
	if !(table < exact/2) {
		t.Fatalf("llama.cpp's GELU table does not explain the gap: %.3g exact, %.3g with the table", exact, table)
	}
}

// dequantizedTwin writes m's weights, decoded, as an F32 GGUF.
func dequantizedTwin(t *testing.T, m *model.Model) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "twin-f32.gguf")
	fh, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	w := bufio.NewWriter(fh)
	if _, err := model.Quantize(m, w, quant.F32); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	fh.Close()
	return p
}

// TestFamiliesQuantizedMatchLlamaCpp: Q8_0 and Q4_K copies of every family.
// llama.cpp and qtune decode the weights bit-identically but multiply
// differently: llama.cpp rounds the activations to Q8_0/Q8_K blocks for
// every product with a quantized weight, qtune keeps them in float32 (its
// int8 matrix-vector path, one row at a time, has the bound of
// kernels/doc.go). So each copy is judged twice: qtune on the quantized
// file against llama.cpp on the same weights decoded to F32 must agree at
// 1e-4 (the decode and the compute are exact; greedy decoding is not
// compared, as qtune's one-row steps take the int8 path);
// against llama.cpp on the quantized file itself, probabilities agree
// within 0.25 (measured 0.03–0.18 on these peaked random models; the
// activation rounding is llama.cpp's, see kernels/doc.go).
func TestFamiliesQuantizedMatchLlamaCpp(t *testing.T) {
	llamacpp.Require(t)
	for _, f := range synth.Families() {
		for _, typ := range []quant.Type{quant.Q8_0, quant.Q4_K} {
			t.Run(fmt.Sprintf("%s/%s", f.Name, typ), func(t *testing.T) {
				p, m := writeFamily(t, f, typ)
				tol := familyTol(f)
				twin := dequantizedTwin(t, m)
				exact := judge(t, m, llamacpp.Request{Model: twin, Prompts: familyPrompts(m, 2), Logits: true, Ctx: 128}, tol)
				direct := judge(t, m, llamacpp.Request{Model: p, Prompts: familyPrompts(m, 2), Logits: true, Ctx: 128}, 0.25)
				t.Logf("%s %s: max |Δp| %.3g against the decoded weights, %.3g against llama.cpp's quantized products", f.Name, typ, exact, direct)
			})
		}
	}
}
