package lora

import (
	"bytes"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/qtune/qtune/format/safetensors"
	"github.com/qtune/qtune/internal/synth"
	"github.com/qtune/qtune/model"
)

// TestSaveFromEitherRowOrder: one adapter trained on a model read from a
// Hugging Face folder (q/k rows in HF order in memory) and on the same model
// read from GGUF (rows in GGUF order) saves to byte-identical PEFT and GGUF
// files, though the HF-order save reads its q/k rows through a view instead
// of a permuted copy; loading the files back onto either model gives each
// set's own values (the loaders move q/k rows in place). Phi-3 (fused q|k|v
// and gate|up, written through AAt/BAt over the parts) is checked the same
// way, and against llama.cpp in internal/llamacpp.
func TestSaveFromEitherRowOrder(t *testing.T) {
	for _, name := range []string{"llama", "phi3"} {
		t.Run(name, func(t *testing.T) {
			f, _ := synth.FamilyByName(name)
			dir := t.TempDir()
			gp, hp := filepath.Join(dir, "m.gguf"), filepath.Join(dir, "hf")
			if err := f.WriteGGUF(gp, 0, 7); err != nil {
				t.Fatal(err)
			}
			if err := f.WriteHF(hp, 7); err != nil {
				t.Fatal(err)
			}
			open := func(p string) *model.Model {
				m, err := model.Open(p, model.Options{})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { m.Close() })
				return m
			}
			mg, mh := open(gp), open(hp)
			if want := name == "llama"; mh.HoldsHFOrder() != want {
				t.Fatalf("HoldsHFOrder() = %v on the HF folder, want %v: the test would not test the view", mh.HoldsHFOrder(), want)
			}
			cfg := Config{Rank: 3, Alpha: 6}
			sg, err := New(mg, cfg)
			if err != nil {
				t.Fatal(err)
			}
			sh, err := New(mh, cfg)
			if err != nil {
				t.Fatal(err)
			}
			rng := rand.New(rand.NewPCG(1, 2))
			for i, lg := range sg.Layers {
				lh := sh.Layers[i]
				for j := range lg.A {
					lg.A[j] = rng.Float32() - 0.5
				}
				for j := range lg.B {
					lg.B[j] = rng.Float32() - 0.5
				}
				copy(lh.A, lg.A)
				copy(lh.B, lg.B)
				if h := qkHeads(mh.Config, lh.Target); h > 0 && mh.HoldsHFOrder() {
					copy(lh.B, safetensors.PermuteRowsF32(lg.B, lg.Out, lg.R, h, true))
				}
			}
			dg, dh := filepath.Join(dir, "from-gguf"), filepath.Join(dir, "from-hf")
			if err := sg.Save(dg, mg, "base"); err != nil {
				t.Fatal(err)
			}
			if err := sh.Save(dh, mh, "base"); err != nil {
				t.Fatal(err)
			}
			for _, file := range []string{PEFTFile, GGUFFile} {
				a, err := os.ReadFile(filepath.Join(dg, file))
				if err != nil {
					t.Fatal(err)
				}
				b, err := os.ReadFile(filepath.Join(dh, file))
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(a, b) {
					t.Errorf("%s differs between the GGUF-order and the HF-order save", file)
				}
			}
			for _, c := range []struct {
				m    *model.Model
				want *Set
			}{{mg, sg}, {mh, sh}} {
				for _, from := range []string{dg, filepath.Join(dg, GGUFFile)} {
					got, err := Load(c.m, from)
					if err != nil {
						t.Fatal(err)
					}
					for _, l := range c.want.Layers {
						gl := got.ByName[l.Target]
						if gl == nil {
							t.Fatalf("%s loaded onto the %s model lacks %s", filepath.Base(from), c.m.Format, l.Target)
						}
						// Phi-3's parts come back at the fused rank (zero
						// padded, the scale unchanged): compare scale·B·A.
						if d := deltaDiff(gl, l); d > 1e-6 || (gl.R == l.R && (!slices.Equal(gl.A, l.A) || !slices.Equal(gl.B, l.B))) {
							t.Errorf("%s loaded onto the %s model: %s differs (scale·B·A by %g)", filepath.Base(from), c.m.Format, l.Target, d)
						}
					}
				}
			}
		})
	}
}

// deltaDiff is the largest difference between the two layers' scale·B·A.
func deltaDiff(x, y *Layer) float64 {
	d := 0.0
	for o := 0; o < x.Out; o++ {
		for i := 0; i < x.In; i++ {
			var p, q float64
			for r := 0; r < x.R; r++ {
				p += float64(x.B[o*x.R+r]) * float64(x.A[r*x.In+i])
			}
			for r := 0; r < y.R; r++ {
				q += float64(y.B[o*y.R+r]) * float64(y.A[r*y.In+i])
			}
			d = max(d, math.Abs(float64(x.Scale)*p-float64(y.Scale)*q))
		}
	}
	return d
}
