package train

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qtune/qtune/internal/shared"
	"github.com/qtune/qtune/internal/synth"
	"github.com/qtune/qtune/model"
	"github.com/qtune/qtune/quant"
)

// familyData writes a data folder of TinyStories lines with valid.jsonl a
// subset of train.jsonl, so the validation loss is a training loss on fixed
// examples.
func familyData(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile(shared.Path(t, "assets", "data", "tinystories", "sample.txt"))
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); len(l) > 40 {
			lines = append(lines, l)
		}
	}
	d := filepath.Join(dir, "data")
	os.MkdirAll(d, 0o755)
	write := func(name string, ls []string) {
		var sb strings.Builder
		for _, l := range ls {
			j, _ := json.Marshal(map[string]string{"text": l})
			sb.Write(j)
			sb.WriteByte('\n')
		}
		if err := os.WriteFile(filepath.Join(d, name), []byte(sb.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("train.jsonl", lines[:min(16, len(lines))])
	write("valid.jsonl", lines[:4])
	return d
}

// TestFamiliesTrainEveryMethod: every method trains on every family (GGUF,
// F32 base; QLoRA converts it to NF4) and lowers the loss on examples it
// trains on.
var mezoLR = 3e-3

func TestFamiliesTrainEveryMethod(t *testing.T) {
	if testing.Short() {
		t.Skip("every family × every method: run without -short")
	}
	root := t.TempDir()
	dataDir := familyData(t, root)
	for _, f := range synth.Families() {
		mp := filepath.Join(root, f.Name+".gguf")
		if err := f.WriteGGUF(mp, quant.F32, 3); err != nil {
			t.Fatal(err)
		}
		for _, method := range []string{"lora", "qlora", "mezo", "loho", "loho-intra", "loreml"} {
			t.Run(f.Name+"/"+method, func(t *testing.T) {
				dir := t.TempDir()
				c := Defaults()
				c.Model, c.Data, c.Method = mp, dataDir, method
				c.Iters, c.BatchSize, c.MaxSeqLength = 24, 4, 48
				c.LearningRate, c.Rank, c.Alpha, c.Dropout = 1e-2, 4, 8, 0
				c.StepsPerReport, c.StepsPerEval, c.ValBatches, c.SaveEvery = 24, 24, 1, 0
				c.AdapterPath, c.CacheDir, c.Seed = dir, filepath.Join(dir, "cache"), 1
				c.ZOLearningRate, c.Epsilon, c.FOLayers, c.FORatio = 1e-3, 1e-2, "1", 0.2
				c.Stage1Iters = 8
				if method == "mezo" {
					// SPSA is noisy: average MEZO_P perturbations a step.
					c.Iters, c.Perturbations, c.ZOLearningRate = 80, 4, mezoLR
					c.StepsPerReport, c.StepsPerEval = 80, 80
				}
				c.ZOTarget = DefaultZOTarget(method)
				res, err := Run(context.Background(), c, nil, nil)
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("%s %s: loss %.4f -> %.4f", f.Name, method, res.FirstValLoss, res.FinalValLoss)
				if !(res.FinalValLoss < res.FirstValLoss-0.01) {
					t.Fatalf("loss %.4f -> %.4f: %s did not lower it", res.FirstValLoss, res.FinalValLoss, method)
				}
			})
		}
	}
	_ = fmt.Sprint
}

// TestFamiliesQLoRABaseKeepsFeatures: the NF4 base QLoRA writes once (from
// a GGUF or a Hugging Face folder) is the same family with every feature
// (Llama 3's RoPE factors, Gemma's norms and windows, Phi-3's LongRoPE, …),
// and the bases written from the two folders of one model compute the same
// model: within 2% of the largest logit (llama and smollm3 permute q/k rows
// for the GGUF, which moves NF4's double-quantization groups), else equal.
func TestFamiliesQLoRABaseKeepsFeatures(t *testing.T) {
	root := t.TempDir()
	toks := []int{5, 9, 13, 17, 21, 25, 29, 33, 37, 41}
	for _, f := range synth.Families() {
		t.Run(f.Name, func(t *testing.T) {
			gp := filepath.Join(root, f.Name+".gguf")
			if err := f.WriteGGUF(gp, quant.F32, 4); err != nil {
				t.Fatal(err)
			}
			hf := filepath.Join(root, f.Name+"-hf")
			if err := f.WriteHF(hf, 4); err != nil {
				t.Fatal(err)
			}
			var logits [][]float32
			for _, src := range []string{gp, hf} {
				fm, err := model.Open(src, model.Options{})
				if err != nil {
					t.Fatal(err)
				}
				q, note, err := OpenBase(src, "qlora", filepath.Join(root, "cache"), model.Options{})
				if err != nil {
					t.Fatal(err)
				}
				if !strings.Contains(note, "NF4") || q.Tensors[1].Type != quant.NF4 && q.Tensors[2].Type != quant.NF4 {
					t.Fatalf("%s: no NF4 base (%q)", src, note)
				}
				a, b := strings.Join(fm.Features(), ", "), strings.Join(q.Features(), ", ")
				if a != b || q.Config.Arch != fm.Config.Arch {
					t.Fatalf("%s: features\n%s: %s\nNF4 base %s: %s", filepath.Base(src), fm.Config.Arch, a, q.Config.Arch, b)
				}
				l := make([]float32, len(toks)*q.Config.Vocab)
				s := q.NewState(len(toks))
				if err := q.Forward(s, toks, l, true); err != nil {
					t.Fatal(err)
				}
				s.Free()
				logits = append(logits, l)
				fm.Close()
				q.Close()
			}
			var worst, top float64
			for i := range logits[0] {
				worst = max(worst, math.Abs(float64(logits[0][i]-logits[1][i])))
				top = max(top, math.Abs(float64(logits[0][i])))
			}
			tol := 0.0
			if f.PermuteQK {
				tol = 0.02 * top
			}
			t.Logf("%s: NF4 bases from GGUF and HF differ by %.3g (largest logit %.3g)", f.Name, worst, top)
			if worst > tol {
				t.Fatalf("NF4 bases from the GGUF and the HF folder differ by %.3g (largest logit %.3g)", worst, top)
			}
		})
	}
}
