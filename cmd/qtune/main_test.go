package main

import (
	"bytes"
	"encoding/json"
	"github.com/qtune/qtune/data"
	"github.com/qtune/qtune/model"
	"github.com/qtune/qtune/train"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qtune/qtune/format/gguf"
	"github.com/qtune/qtune/internal/shared"
	"github.com/qtune/qtune/internal/synth"
	"github.com/qtune/qtune/quant"
)

func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	code = run(args, &o, &e)
	return code, o.String(), e.String()
}

func stories(t *testing.T) string {
	return shared.Path(t, "assets", "models", "stories260K.gguf")
}

func TestGenerateJSONGolden(t *testing.T) {
	var g struct {
		Cases []struct {
			PromptText   string `json:"prompt_text"`
			PromptIDs    []int  `json:"prompt_ids"`
			GeneratedIDs []int  `json:"generated_ids"`
		} `json:"cases"`
	}
	b, _ := os.ReadFile(shared.Path(t, "golden", "stories260K", "greedy.json"))
	if err := json.Unmarshal(b, &g); err != nil {
		t.Fatal(err)
	}
	c := g.Cases[0]
	code, out, errs := runCLI(t, "generate", "--model", stories(t), "--prompt", c.PromptText, "-n", "200", "--temp", "0", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	var res struct {
		PromptTokens []int  `json:"prompt_tokens"`
		Tokens       []int  `json:"tokens"`
		Text         string `json:"text"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("stdout is not one JSON object: %v\n%s", err, out)
	}
	if len(res.Tokens) != 200 || !equal(res.Tokens, c.GeneratedIDs) || !equal(res.PromptTokens, c.PromptIDs) {
		t.Fatalf("tokens differ from golden:\n got %v\nwant %v", res.Tokens, c.GeneratedIDs)
	}
	if !strings.HasPrefix(res.Text, ", there was a little girl named Lily.") {
		t.Fatalf("text %q", res.Text)
	}
}

func equal(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestTokenizeJSON(t *testing.T) {
	code, out, errs := runCLI(t, "tokenize", "--model", stories(t), "--text", "Once upon a time", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if strings.TrimSpace(out) != "[1,403,407,261,378]" {
		t.Fatalf("stdout %q", out)
	}
}

func TestEvalJSON(t *testing.T) {
	code, out, errs := runCLI(t, "eval", "--model", stories(t), "--data", shared.Path(t, "assets", "data", "tinystories", "sample.txt"), "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	var r struct {
		Loss, PPL float64
		Tokens    int
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatal(err)
	}
	// stories260K is trained on TinyStories: its in-domain loss is low but
	// far from zero; the window arithmetic makes tokens = encoded length - 1.
	if r.Tokens < 500 || r.Loss < 0.5 || r.Loss > 3 || r.PPL < 1.6 {
		t.Fatalf("implausible eval %+v", r)
	}
	code, out, errs = runCLI(t, "eval", "--model", stories(t), "--data", shared.Path(t, "assets", "data", "sst2", "valid.jsonl"), "--limit", "40", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	var c struct {
		Accuracy float64
		N        int
	}
	if err := json.Unmarshal([]byte(out), &c); err != nil || c.N != 40 {
		t.Fatalf("classification eval %q (%v)", out, err)
	}
	// The accuracy is the one a plain scorer finds: each prompt+choice run
	// from position 0 in one forward pass (no shared prefix, no cache), the
	// choice's tokens' log-probabilities summed, the best choice picked.
	if want := plainAccuracy(t, shared.Path(t, "assets", "data", "sst2", "valid.jsonl"), 40); c.Accuracy != want {
		t.Errorf("accuracy %v, a plain scorer finds %v", c.Accuracy, want)
	}
}

func plainAccuracy(t *testing.T, path string, limit int) float64 {
	t.Helper()
	m, err := model.Open(stories(t), model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	recs, _, err := data.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	V := m.Config.Vocab
	correct := 0
	cached := m.NewState(m.Config.Context)
	defer cached.Free()
	for _, r := range recs[:limit] {
		lib, err := train.ChoiceScores(m, cached, r) // what eval runs: shared prefix, KV cache
		if err != nil {
			t.Fatal(err)
		}
		prompt := m.Tokenizer.Encode(r.Prompt, true)
		best, bestScore := -1, math.Inf(-1)
		for i, ch := range r.Choices {
			full := m.Tokenizer.Encode(r.Prompt+ch, true)
			k := 0 // the first token that differs from the prompt's
			for k < len(prompt) && k < len(full) && prompt[k] == full[k] {
				k++
			}
			st := m.NewState(len(full))
			logits := make([]float32, len(full)*V)
			if err := m.Forward(st, full, logits, true); err != nil {
				t.Fatal(err)
			}
			st.Free()
			var score float64
			for j := k; j < len(full); j++ {
				row := logits[(j-1)*V : j*V]
				mx := float64(row[0])
				for _, x := range row {
					mx = math.Max(mx, float64(x))
				}
				var sum float64
				for _, x := range row {
					sum += math.Exp(float64(x) - mx)
				}
				score += float64(row[full[j]]) - mx - math.Log(sum)
			}
			if math.Abs(score-lib[i]) > 1e-3*math.Max(1, math.Abs(score)) {
				t.Errorf("%q + %q: score %v, eval's %v", r.Prompt, ch, score, lib[i])
			}
			if score > bestScore {
				best, bestScore = i, score
			}
		}
		if best == r.Label {
			correct++
		}
	}
	return float64(correct) / float64(limit)
}

func TestInspectAndQuantize(t *testing.T) {
	code, out, errs := runCLI(t, "inspect", stories(t))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	for _, want := range []string{"general.architecture", "tensors (48)", "token_embd.weight", "bytes per type", "F32", "quantization error", "NF4"} {
		if !strings.Contains(out, want) {
			t.Errorf("inspect output lacks %q", want)
		}
	}
	dst := filepath.Join(t.TempDir(), "q4k.gguf")
	code, out, errs = runCLI(t, "quantize", stories(t), dst, "--type", "q4_k")
	if code != 0 {
		t.Fatalf("quantize exit %d: %s", code, errs)
	}
	code, out, errs = runCLI(t, "inspect", dst, "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	var r inspectResult
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatal(err)
	}
	types := map[string]int{}
	for _, tt := range r.Tensors {
		types[tt.Type]++
	}
	// 64-wide rows are not a multiple of Q4_K's 256-element block, so every
	// matrix stays F32 — the llama.cpp-compatible fallback for ragged rows.
	if types["Q4_K"] != 0 || types["F32"] != 48 {
		t.Errorf("q4_k file of a 64-wide model: types %v, want all 48 F32", types)
	}
	dst = filepath.Join(t.TempDir(), "q8.gguf")
	if code, _, errs = runCLI(t, "quantize", stories(t), dst, "--type", "q8_0"); code != 0 {
		t.Fatalf("quantize exit %d: %s", code, errs)
	}
	_, out, _ = runCLI(t, "inspect", dst, "--json")
	r = inspectResult{}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatal(err)
	}
	types = map[string]int{}
	for _, tt := range r.Tensors {
		types[tt.Type]++
	}
	if types["Q8_0"] != 32 || types["F32"] != 16 {
		t.Errorf("q8_0 file: types %v, want 32 Q8_0 + 16 F32 (as ggml's golden file)", types)
	}
}

// TestBadInputs: damaged or missing files and bad data give exit status 1
// and one line on stderr naming the problem; usage mistakes give 2.
func TestBadInputs(t *testing.T) {
	dir := t.TempDir()
	src, _ := os.ReadFile(stories(t))
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, b, 0o644)
		return p
	}
	truncated := write("trunc.gguf", src[:len(src)/2])
	badMagic := write("magic.gguf", append([]byte("GGUX"), src[4:]...))
	empty := write("empty.gguf", nil)
	q8, _ := os.ReadFile(shared.Path(t, "golden", "gguf", "stories260K-q8_0.gguf"))
	f, err := gguf.Parse(q8)
	if err != nil {
		t.Fatal(err)
	}
	ti, _ := f.Tensor("blk.2.attn_v.weight")
	nanScale := append([]byte(nil), q8...)
	nanScale[ti.Offset+34*3], nanScale[ti.Offset+34*3+1] = 0x00, 0x7e // block 3's d = NaN
	nanPath := write("nan.gguf", nanScale)
	badJSONL := write("bad.jsonl", []byte("{\"text\":\"ok\"}\n{\"text\": 3\n"))
	badLabel := write("label.jsonl", []byte("{\"prompt\":\"a\",\"choices\":[\"x\",\"y\"],\"label\":5}\n"))
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"inspect", truncated}, 1, "trunc.gguf"},
		{[]string{"generate", "--model", truncated, "--prompt", "x"}, 1, "trunc.gguf"},
		{[]string{"generate", "--model", nanPath, "--prompt", "x"}, 1, "blk.2.attn_v.weight"},
		{[]string{"eval", "--model", nanPath, "--data", badLabel}, 1, "line 1"},
		{[]string{"generate", "--model", badMagic, "--prompt", "x"}, 1, "magic.gguf"},
		{[]string{"eval", "--model", empty, "--data", badJSONL}, 1, "line 2"},
		{[]string{"eval", "--model", stories(t), "--data", badJSONL}, 1, "line 2"},
		{[]string{"eval", "--model", stories(t), "--data", badLabel}, 1, "line 1"},
		{[]string{"generate", "--model", filepath.Join(dir, "missing.gguf"), "--prompt", "x"}, 1, "missing.gguf"},
		{[]string{"generate", "--prompt", "x"}, 2, "--model"},
		{[]string{"quantize", stories(t), filepath.Join(dir, "o.gguf"), "--type", "q3_x"}, 2, "q3_x"},
		{[]string{"frobnicate"}, 2, "unknown command"},
	} {
		code, _, errs := runCLI(t, c.args...)
		lines := strings.Split(strings.TrimSpace(errs), "\n")
		if code != c.code || !strings.Contains(errs, c.want) || len(lines) != 1 {
			t.Errorf("%v: exit %d (want %d), stderr %q (want one line containing %q)", c.args, code, c.code, errs, c.want)
		}
	}
}

// TestQuantizeNewTypes: --type q5_k, q3_k, q2_k, iq4_nl and iq4_xs write a GGUF
// whose 256-wide rows (ffn_down of a synthetic llama, F = 256) are in that
// type, with llama.cpp's file type, and whose bytes are quant's (byte-equal
// to ggml's reference quantizers on the golden inputs, quant's tests); the
// file loads and inspects.
func TestQuantizeNewTypes(t *testing.T) {
	dir := t.TempDir()
	f, _ := synth.FamilyByName("llama")
	src := filepath.Join(dir, "src.gguf")
	if err := f.WriteGGUF(src, quant.F32, 7); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	in, err := gguf.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		flag string
		typ  quant.Type
		ft   uint32
	}{{"q5_k", quant.Q5_K, 16}, {"q3_k", quant.Q3_K, 11}, {"q2_k", quant.Q2_K, 10}, {"iq4_nl", quant.IQ4_NL, 25},
		{"iq4_xs", quant.IQ4_XS, 30}} {
		dst := filepath.Join(dir, c.flag+".gguf")
		if code, _, errs := runCLI(t, "--quiet", "quantize", src, dst, "--type", c.flag); code != 0 {
			t.Fatalf("%s: exit %d: %s", c.flag, code, errs)
		}
		b, err := os.ReadFile(dst)
		if err != nil {
			t.Fatal(err)
		}
		out, err := gguf.Parse(b)
		if err != nil {
			t.Fatal(err)
		}
		if ft, ok := out.Uint("general.file_type"); !ok || ft != uint64(c.ft) {
			t.Errorf("%s: general.file_type %v, want %d", c.flag, ft, c.ft)
		}
		n := 0
		for _, ti := range out.Tensors {
			if !strings.HasSuffix(ti.Name, "ffn_down.weight") {
				continue
			}
			n++
			if ti.Type != c.typ {
				t.Errorf("%s: %s is %s", c.flag, ti.Name, ti.Type)
				continue
			}
			st, ok := in.Tensor(ti.Name)
			if !ok {
				t.Fatalf("%s: source lacks %s", c.flag, ti.Name)
			}
			x := make([]float32, st.Size/4)
			if err := quant.Dequantize(quant.F32, x, raw[st.Offset:st.Offset+st.Size]); err != nil {
				t.Fatal(err)
			}
			want := make([]byte, ti.Size)
			if err := quant.Quantize(c.typ, want, x); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(b[ti.Offset:ti.Offset+ti.Size], want) {
				t.Errorf("%s: %s bytes differ from quant.Quantize", c.flag, ti.Name)
			}
		}
		if n != f.Layers {
			t.Errorf("%s: %d ffn_down tensors, want %d", c.flag, n, f.Layers)
		}
		if code, _, errs := runCLI(t, "--quiet", "inspect", dst); code != 0 {
			t.Errorf("%s: inspect: %s", c.flag, errs)
		}
		if code, out, errs := runCLI(t, "--quiet", "generate", "--model", dst, "--prompt", "Once", "-n", "4", "--temp", "0"); code != 0 || out == "" {
			t.Errorf("%s: generate: exit %d, %q, %s", c.flag, code, out, errs)
		}
	}
	// A model written with every matrix in Q3_K (synth's own writer) loads
	// and generates too.
	k3 := filepath.Join(dir, "k3.gguf")
	if err := f.WriteGGUF(k3, quant.Q3_K, 7); err != nil {
		t.Fatal(err)
	}
	if code, out, errs := runCLI(t, "--quiet", "generate", "--model", k3, "--prompt", "Once", "-n", "4", "--temp", "0"); code != 0 || out == "" {
		t.Errorf("q3_k model: generate: exit %d, %q, %s", code, out, errs)
	}
	if code, _, errs := runCLI(t, "quantize", src, filepath.Join(dir, "x.gguf"), "--type", "iq2_xs"); code != 2 || !strings.Contains(errs, "q5_k") {
		t.Errorf("--type iq2_xs: exit %d, %q", code, errs)
	}
}
