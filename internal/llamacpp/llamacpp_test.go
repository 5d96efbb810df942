package llamacpp_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/qtune/qtune/format/adapter"
	"github.com/qtune/qtune/internal/llamacpp"
	"github.com/qtune/qtune/internal/shared"
	"github.com/qtune/qtune/kernels"
	"github.com/qtune/qtune/model"
	"github.com/qtune/qtune/quant"
	"github.com/qtune/qtune/train"
)

// probTol bounds |p_qtune - p_llama.cpp| for every token at every position.
const probTol = 1e-4

// nGen is the length of the greedy continuations compared.
const nGen = 20

func storiesPath(t testing.TB) string {
	return shared.Path(t, "assets", "models", "stories260K.gguf")
}

func openStories(t testing.TB) *model.Model {
	t.Helper()
	m, err := model.Open(storiesPath(t), model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// prompts are three token sequences: two texts with BOS, and one without
// BOS that starts mid-sentence.
func prompts(t testing.TB, m *model.Model) [][]int {
	t.Helper()
	ps := [][]int{
		m.Tokenizer.Encode("Once upon a time", true),
		m.Tokenizer.Encode("Lily and Tom went to the park. They saw a big dog", true),
		m.Tokenizer.Encode("the little bird was sad because", false),
	}
	for i, p := range ps {
		if len(p) < 3 {
			t.Fatalf("prompt %d encodes to %v", i, p)
		}
	}
	return ps
}

// softmax returns the probabilities of one row of logits, in float64.
func softmax(row []float32) []float64 {
	mx := math.Inf(-1)
	for _, v := range row {
		mx = math.Max(mx, float64(v))
	}
	p := make([]float64, len(row))
	var sum float64
	for i, v := range row {
		p[i] = math.Exp(float64(v) - mx)
		sum += p[i]
	}
	for i := range p {
		p[i] /= sum
	}
	return p
}

// qtuneRun is qtune's answer to the judge's question: all positions' logits
// (T, V) by one batched Forward, and the greedy continuation by Generate.
func qtuneRun(t testing.TB, m *model.Model, prompt []int) (logits []float32, greedy []int) {
	t.Helper()
	s := m.NewState(len(prompt))
	defer s.Free()
	logits = make([]float32, len(prompt)*m.Config.Vocab)
	if err := m.Forward(s, prompt, logits, true); err != nil {
		t.Fatal(err)
	}
	greedy, err := m.Generate(context.Background(), prompt, model.GenerateOptions{MaxTokens: nGen})
	if err != nil {
		t.Fatal(err)
	}
	return logits, greedy
}

// judge compares m (with whatever adapter it holds) against llama.cpp's
// answer to req: greedy tokens equal, probabilities within tol. It returns
// the largest probability difference.
func judge(t *testing.T, m *model.Model, req llamacpp.Request, tol float64) float64 {
	t.Helper()
	resp, err := llamacpp.Run(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	V := m.Config.Vocab
	if resp.Vocab != V {
		t.Fatalf("llama.cpp vocab %d, qtune %d", resp.Vocab, V)
	}
	var worstAll float64
	for i, p := range req.Prompts {
		got := resp.Results[i]
		ql, qg := qtuneRun(t, m, p)
		if len(got.Logits) != len(p) {
			t.Fatalf("prompt %d: llama.cpp gave %d logit rows for %d tokens", i, len(got.Logits), len(p))
		}
		var worstP, worstL float64
		at := ""
		for pos, row := range got.Logits {
			if len(row) != V {
				t.Fatalf("prompt %d pos %d: %d logits, want %d", i, pos, len(row), V)
			}
			q := ql[pos*V : (pos+1)*V]
			pl, pq := softmax(row), softmax(q)
			for v := range row {
				worstL = math.Max(worstL, math.Abs(float64(row[v]-q[v])))
				if d := math.Abs(pl[v] - pq[v]); d > worstP {
					worstP = d
					at = fmt.Sprintf("pos %d token %d: llama.cpp p=%.6g logit=%.6g, qtune p=%.6g logit=%.6g", pos, v, pl[v], row[v], pq[v], q[v])
				}
			}
		}
		if worstP > tol {
			t.Errorf("prompt %d: max |Δp| = %.3g > %g at %s", i, worstP, tol, at)
		}
		t.Logf("prompt %d (T=%d): max |Δp| %.3g, max |Δlogit| %.3g", i, len(p), worstP, worstL)
		if req.Generate > 0 && !slices.Equal(got.Greedy, qg) {
			t.Errorf("prompt %d: greedy differs\nllama.cpp %v\nqtune     %v", i, got.Greedy, qg)
		}
		worstAll = math.Max(worstAll, worstP)
	}
	return worstAll
}

// TestStories260KMatchesLlamaCpp: qtune's forward pass and greedy decoding of
// the real stories260K agree with llama.cpp's at every position, which shows
// that the judge (ids in exactly, per-position logits, argmax) works.
func TestStories260KMatchesLlamaCpp(t *testing.T) {
	llamacpp.Require(t)
	m := openStories(t)
	ps := prompts(t, m)
	judge(t, m, llamacpp.Request{Model: storiesPath(t), Prompts: ps, Logits: true, Generate: nGen}, probTol)
}

// randomAdapter is a LoRA of rank R on every linear layer of m, with A and B
// drawn from seed, large enough to change the model's predictions.
func randomAdapter(m *model.Model, R int, alpha float64, rs bool, seed uint64) *adapter.Adapter {
	rng := rand.New(rand.NewPCG(seed, 1))
	a := &adapter.Adapter{Rank: R, Alpha: alpha, UseRSLoRA: rs, Targets: adapter.Kinds(), BaseModel: "stories260K"}
	for l := range m.Layers {
		ly := &m.Layers[l]
		mats := map[string]kernels.Matrix{"q": ly.Wq, "k": ly.Wk, "v": ly.Wv, "o": ly.Wo, "gate": ly.Gate, "up": ly.Up, "down": ly.Down}
		for _, kind := range adapter.Kinds() {
			w := mats[kind]
			name, _ := adapter.TargetName(l, kind)
			lo := adapter.LoRA{Target: name, In: w.Cols, Out: w.Rows, Rank: R,
				A: make([]float32, R*w.Cols), B: make([]float32, w.Rows*R)}
			for i := range lo.A {
				lo.A[i] = float32((2*rng.Float64() - 1) / math.Sqrt(float64(w.Cols)))
			}
			for i := range lo.B {
				lo.B[i] = float32(0.1 * (2*rng.Float64() - 1))
			}
			a.Layers = append(a.Layers, lo)
		}
	}
	return a
}

// TestLoRAMatchesLlamaCpp: an adapter written by qtune's GGUF writer and
// applied by qtune gives the same probabilities and greedy tokens as the same
// file applied by llama.cpp, with llama.cpp's user scale (qtune reproduces
// scale s by writing alpha·s) and with rsLoRA (written as alpha·√R).
//
// F16 and BF16 files are judged twice. Their own file must give the same
// greedy tokens, but llama.cpp's CPU mat-mul rounds the activations to the
// weight type before the dot products (ggml's vec_dot_type: x to F16 or BF16
// before lora_a, and A·x again before lora_b), while qtune keeps activations
// in F32; the probabilities then differ by about 6e-5 (F16) and 3e-3 (BF16),
// so those get a bound of 10× the measured gap. The same stored values
// re-encoded as F32 must then agree to probTol: that proves both read the
// file's numbers identically and the gap is llama.cpp's arithmetic alone.
func TestLoRAMatchesLlamaCpp(t *testing.T) {
	llamacpp.Require(t)
	cases := []struct {
		name  string
		dtype quant.Type
		alpha float64
		rs    bool
		scale float64 // llama.cpp's user scale
		tol   float64 // probability bound for the file in its own dtype
	}{
		{"f32", quant.F32, 8, false, 1, probTol},
		{"f32-rslora-scale0.5", quant.F32, 4, true, 0.5, probTol},
		{"f16-rslora-scale0.5", quant.F16, 4, true, 0.5, 1e-3},
		{"bf16", quant.BF16, 8, false, 1, 3e-2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := openStories(t)
			ps := prompts(t, m)
			base := make([][]float32, len(ps))
			for i, p := range ps {
				base[i], _ = qtuneRun(t, m, p)
			}
			dir := t.TempDir()
			write := func(name string, alpha float64, dtype quant.Type) string {
				path := filepath.Join(dir, name)
				a := randomAdapter(m, 4, alpha, c.rs, 7)
				if dtype != c.dtype { // the values c.dtype stores, in dtype
					b, err := roundTrip(a, c.dtype, m.Config.Arch)
					if err != nil {
						t.Fatal(err)
					}
					a = b
				}
				if err := adapter.WriteGGUFFile(path, a, dtype, m.Config.Arch); err != nil {
					t.Fatal(err)
				}
				return path
			}
			judged := write("judged.gguf", c.alpha, c.dtype)
			// qtune has no user scale: the same A and B with alpha·scale.
			if _, err := train.ApplyAdapter(m, write("applied.gguf", c.alpha*c.scale, c.dtype)); err != nil {
				t.Fatal(err)
			}
			// The adapter must matter, or agreeing would prove nothing.
			var moved float64
			for i, p := range ps {
				ad, _ := qtuneRun(t, m, p)
				V := m.Config.Vocab
				for pos := range p {
					pa, pb := softmax(ad[pos*V:(pos+1)*V]), softmax(base[i][pos*V:(pos+1)*V])
					for v := range pa {
						moved = math.Max(moved, math.Abs(pa[v]-pb[v]))
					}
				}
			}
			if moved < 0.05 {
				t.Fatalf("the adapter moves probabilities by at most %.3g: too weak to test", moved)
			}
			t.Logf("adapter moves probabilities by up to %.3g", moved)
			req := llamacpp.Request{Model: storiesPath(t), LoRA: judged, LoRAScale: c.scale, Prompts: ps, Logits: true, Generate: nGen}
			judge(t, m, req, c.tol)
			if c.dtype != quant.F32 {
				t.Logf("the same values as F32:")
				req.LoRA = write("judged-f32.gguf", c.alpha, quant.F32)
				judge(t, m, req, probTol)
			}
		})
	}
}

// roundTrip returns a as the dtype file stores it: written and read back.
func roundTrip(a *adapter.Adapter, dtype quant.Type, arch string) (*adapter.Adapter, error) {
	var buf bytes.Buffer
	if err := adapter.WriteGGUF(&buf, a, dtype, arch); err != nil {
		return nil, err
	}
	return adapter.ReadGGUF(buf.Bytes())
}

// TestRunErrors: the judge's one-line errors reach the caller.
func TestRunErrors(t *testing.T) {
	llamacpp.Require(t)
	_, err := llamacpp.Run(context.Background(), llamacpp.Request{Model: storiesPath(t), Prompts: [][]int{{1, 1 << 20}}, Generate: 1})
	if err == nil || !strings.Contains(err.Error(), "out of range") {
		t.Errorf("token id past the vocabulary: err = %v", err)
	}
	_, err = llamacpp.Run(context.Background(), llamacpp.Request{Model: filepath.Join(t.TempDir(), "none.gguf"), Prompts: [][]int{{1}}, Generate: 1})
	if err == nil || errors.Is(err, llamacpp.ErrUnavailable) {
		t.Errorf("missing model: err = %v", err)
	}
}
