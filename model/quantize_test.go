package model

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qtune/qtune/format/gguf"
	"github.com/qtune/qtune/format/safetensors"
	"github.com/qtune/qtune/internal/shared"
	"github.com/qtune/qtune/internal/synth"
	"github.com/qtune/qtune/quant"
)

// TestQuantizeMatchesGGML: quantizing the F32 stories260K to Q8_0 and Q4_0
// gives the very tensors ggml's reference quantizer wrote into the golden
// files (same type policy: 1-D and ragged rows stay F32).
func TestQuantizeMatchesGGML(t *testing.T) {
	m := openStories(t)
	for _, c := range []struct {
		typ  quant.Type
		file string
	}{{quant.Q8_0, "stories260K-q8_0.gguf"}, {quant.Q4_0, "stories260K-q4_0.gguf"}, {quant.F16, "stories260K-f16.gguf"}} {
		var buf bytes.Buffer
		rep, err := Quantize(m, &buf, c.typ)
		if err != nil {
			t.Fatal(err)
		}
		want, err := os.ReadFile(shared.Path(t, "golden", "gguf", c.file))
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(buf.Bytes(), want) {
			t.Logf("%s: byte-identical to ggml's file (%d bytes, RMSE %.4g)", c.typ, buf.Len(), rep.RMSE)
			continue
		}
		got, err := gguf.Parse(buf.Bytes())
		if err != nil {
			t.Fatal(err)
		}
		ref, err := gguf.Parse(want)
		if err != nil {
			t.Fatal(err)
		}
		if len(got.Tensors) != len(ref.Tensors) {
			t.Fatalf("%s: %d tensors, golden %d", c.typ, len(got.Tensors), len(ref.Tensors))
		}
		for i, gt := range got.Tensors {
			rt := ref.Tensors[i]
			if gt.Name != rt.Name || gt.Type != rt.Type || !bytes.Equal(got.Data(buf.Bytes(), gt), ref.Data(want, rt)) {
				t.Errorf("%s: tensor %s (%s) differs from golden %s (%s)", c.typ, gt.Name, gt.Type, rt.Name, rt.Type)
			}
		}
		t.Errorf("%s: file differs from ggml's although tensors may match (header/KV order)", c.typ)
	}
}

// TestQuantizeRoundTripLoads: every offered type writes a file that loads,
// converts the matrices it should, and computes what its own weights expanded
// to F32 compute. K-quants need rows that are a multiple of 256, so a
// synthetic model of width 256 is used as well as stories260K.
func TestQuantizeRoundTripLoads(t *testing.T) {
	dir := t.TempDir()
	wide := filepath.Join(dir, "wide.gguf")
	if err := synth.Write(wide, synth.Config{Name: "wide", Dim: 256, Hidden: 512, Layers: 2, Heads: 4, KVHeads: 2, Vocab: 512, Context: 64}, quant.F32, 3); err != nil {
		t.Fatal(err)
	}
	toks := []int{1, 403, 407, 261, 378}
	for _, src := range []string{shared.Path(t, "assets", "models", "stories260K.gguf"), wide} {
		m, err := Open(src, Options{})
		if err != nil {
			t.Fatal(err)
		}
		for _, typ := range []quant.Type{quant.Q8_0, quant.Q4_0, quant.Q4_K, quant.Q6_K, quant.NF4, quant.BF16} {
			var buf bytes.Buffer
			rep, err := Quantize(m, &buf, typ)
			if err != nil {
				t.Fatalf("%s: %v", typ, err)
			}
			p := filepath.Join(dir, typ.String()+".gguf")
			if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
				t.Fatal(err)
			}
			q, err := Open(p, Options{})
			if err != nil {
				t.Fatalf("%s: %v", typ, err)
			}
			in, _ := quant.Lookup(typ)
			wantQuantized := 0
			for _, tt := range m.Tensors {
				if len(tt.Shape) == 2 && tt.Shape[0]%int64(in.BlockSize) == 0 {
					wantQuantized++
				}
			}
			got := 0
			for _, tt := range q.Tensors {
				if tt.Type == typ {
					got++
				}
			}
			d := maxLogitDiff(t, q, dequantizedTwin(t, q), toks)
			t.Logf("%s %s: %d bytes, %d tensors as %s, RMSE %.4g, twin diff %.2g", filepath.Base(src), typ, buf.Len(), got, typ, rep.RMSE, d)
			if got != wantQuantized || rep.Quantized != wantQuantized || d > 1e-4 {
				t.Errorf("%s %s: %d tensors converted (want %d), twin logit diff %.3g", filepath.Base(src), typ, got, wantQuantized, d)
			}
			if wantQuantized > 0 && !(rep.RMSE > 0 && rep.RMSE < 0.05) {
				t.Errorf("%s %s: RMSE %g", filepath.Base(src), typ, rep.RMSE)
			}
			// Q8_0 and Q4_0 round each value to a grid of step absmax/127
			// and absmax/8 per block of 32: their RMSE is within a little
			// of sqrt(mean(step²)/12) over the source's own blocks.
			if steps, ok := map[quant.Type]float64{quant.Q8_0: 127, quant.Q4_0: 8}[typ]; ok && wantQuantized > 0 {
				want := uniformGridRMSE(t, m, 32, steps)
				if rep.RMSE > 1.1*want || rep.RMSE < 0.7*want {
					t.Errorf("%s %s: RMSE %.4g, a grid of its steps gives %.4g", filepath.Base(src), typ, rep.RMSE, want)
				}
			}
			q.Close()
		}
		m.Close()
	}
}

// writeHFFolder writes stories260K as a Hugging Face checkpoint: HF tensor
// names, (out, in) shapes, Q/K rows in rotate-half order, two shards with an
// index, and config.json.
func writeHFFolder(t *testing.T, m *Model, dtype quant.Type) string {
	t.Helper()
	dir := t.TempDir()
	c := m.Config
	var shards [2][]safetensors.Tensor
	index := map[string]string{}
	for i, tt := range m.Tensors {
		if tt.Name == "output.weight" && c.Tied {
			continue
		}
		name, ok := safetensors.HFName(tt.Name)
		if !ok {
			t.Fatalf("no HF name for %s", tt.Name)
		}
		f := make([]float32, tt.Elems())
		if err := quant.Dequantize(tt.Type, f, tt.Data); err != nil {
			t.Fatal(err)
		}
		heads := 0
		switch {
		case strings.HasSuffix(tt.Name, "attn_q.weight"):
			heads = c.Heads
		case strings.HasSuffix(tt.Name, "attn_k.weight"):
			heads = c.KVHeads
		}
		if heads > 0 { // GGUF → HF: HF row a·D/2+b = GGUF row 2b+a
			cols := int(tt.Shape[0])
			D := len(f) / cols / heads
			out := make([]float32, len(f))
			for h := 0; h < heads; h++ {
				for b := 0; b < D/2; b++ {
					for a := 0; a < 2; a++ {
						src, dst := h*D+2*b+a, h*D+a*(D/2)+b
						copy(out[dst*cols:(dst+1)*cols], f[src*cols:(src+1)*cols])
					}
				}
			}
			f = out
		}
		size, _ := quant.Bytes(dtype, int64(len(f)))
		b := make([]byte, size)
		if err := quant.Quantize(dtype, b, f); err != nil {
			t.Fatal(err)
		}
		shape := make([]int64, len(tt.Shape))
		for j, d := range tt.Shape {
			shape[len(shape)-1-j] = d
		}
		dt, _ := safetensors.DTypeOf(dtype)
		shards[i%2] = append(shards[i%2], safetensors.Tensor{Name: name, DType: dt, Shape: shape, Data: b})
		index[name] = fmt.Sprintf("model-%05d-of-00002.safetensors", i%2+1)
	}
	for i, sh := range shards {
		var buf bytes.Buffer
		if err := safetensors.Write(&buf, sh, map[string]string{"format": "pt"}); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, fmt.Sprintf("model-%05d-of-00002.safetensors", i+1)), buf.Bytes(), 0o644)
	}
	ib, _ := json.Marshal(map[string]any{"metadata": map[string]any{"total_size": 0}, "weight_map": index})
	os.WriteFile(filepath.Join(dir, "model.safetensors.index.json"), ib, 0o644)
	cfg := map[string]any{"architectures": []string{"LlamaForCausalLM"}, "model_type": "llama",
		"hidden_size": c.Dim, "intermediate_size": c.Hidden, "num_hidden_layers": c.Layers,
		"num_attention_heads": c.Heads, "num_key_value_heads": c.KVHeads, "vocab_size": c.Vocab,
		"max_position_embeddings": c.Context, "rms_norm_eps": c.Eps, "rope_theta": c.RopeTheta,
		"tie_word_embeddings": true, "torch_dtype": "float32"}
	cb, _ := json.Marshal(cfg)
	os.WriteFile(filepath.Join(dir, "config.json"), cb, 0o644)
	return dir
}

// TestHFFolderMatchesGGUF: the same weights as a sharded HF checkpoint (Q/K
// in rotate-half order) give the same logits, and converting that folder
// back to GGUF permutes the rows back: the F32 tensors equal the original.
func TestHFFolderMatchesGGUF(t *testing.T) {
	m := openStories(t)
	dir := writeHFFolder(t, m, quant.F32)
	tokPath := shared.Path(t, "assets", "models", "stories260K.gguf")
	hf, err := Open(dir, Options{Tokenizer: tokPath})
	if err != nil {
		t.Fatal(err)
	}
	defer hf.Close()
	if !hf.Config.RopeNeox || hf.Format != "safetensors" {
		t.Fatalf("HF model: neox=%v format=%s", hf.Config.RopeNeox, hf.Format)
	}
	toks := []int{1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315}
	V := m.Config.Vocab
	want := make([]float32, len(toks)*V)
	got := make([]float32, len(toks)*V)
	m.Forward(m.NewState(len(toks)), toks, want, true)
	if err := hf.Forward(hf.NewState(len(toks)), toks, got, true); err != nil {
		t.Fatal(err)
	}
	for i := range got {
		if math.Abs(float64(got[i]-want[i])) > 1e-4 {
			t.Fatalf("logit %d: HF %g, GGUF %g", i, got[i], want[i])
		}
	}
	var buf bytes.Buffer
	if _, err := Quantize(hf, &buf, quant.F32); err != nil {
		t.Fatal(err)
	}
	back, err := gguf.Parse(buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	orig := m.GGUF
	src, _ := os.ReadFile(tokPath)
	for _, ti := range back.Tensors {
		oi, ok := orig.Tensor(ti.Name)
		if !ok {
			t.Fatalf("converted file has extra tensor %s", ti.Name)
		}
		if !bytes.Equal(back.Data(buf.Bytes(), ti), orig.Data(src, oi)) {
			t.Errorf("tensor %s differs after HF → GGUF conversion", ti.Name)
		}
	}
}

// uniformGridRMSE is the RMSE of rounding every value of m's 2-D tensors
// (those whose rows split into blocks) to a grid of step absmax/levels per
// block: sqrt(Σ_blocks n·step²/12 / Σ n).
func uniformGridRMSE(t *testing.T, m *Model, block int, levels float64) float64 {
	t.Helper()
	var sum float64
	var n int64
	for _, tt := range m.Tensors {
		if len(tt.Shape) != 2 || tt.Shape[0]%int64(block) != 0 {
			continue
		}
		f := make([]float32, tt.Elems())
		if err := quant.Dequantize(tt.Type, f, tt.Data); err != nil {
			t.Fatal(err)
		}
		for b := 0; b < len(f); b += block {
			var amax float64
			for _, x := range f[b : b+block] {
				amax = math.Max(amax, math.Abs(float64(x)))
			}
			step := amax / levels
			sum += float64(block) * step * step / 12
		}
		n += int64(len(f))
	}
	return math.Sqrt(sum / float64(n))
}

// QuantizeContext checks its context before each tensor: cancelled once a
// quarter of the file is out, it stops with an error wrapping the
// context's and writes well under the whole file.
func TestQuantizeContextStops(t *testing.T) {
	m := openStories(t)
	var full countingWriter
	if _, err := QuantizeContext(context.Background(), m, &full, quant.F32); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := countingWriter{at: full.n / 4, cancel: cancel}
	_, err := QuantizeContext(ctx, m, &w, quant.F32)
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "stopped before") {
		t.Fatalf("cancelled conversion: %v", err)
	}
	if w.n >= full.n/2 {
		t.Errorf("wrote %d of %d bytes after a cancellation at %d", w.n, full.n, full.n/4)
	}
}

// countingWriter counts what it is given and calls cancel once it holds
// at least at bytes.
type countingWriter struct {
	n, at  int
	cancel func()
}

func (w *countingWriter) Write(p []byte) (int, error) {
	w.n += len(p)
	if w.cancel != nil && w.n >= w.at {
		w.cancel()
	}
	return len(p), nil
}
