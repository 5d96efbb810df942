package train

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qtune/qtune/checkpoint"
	"github.com/qtune/qtune/methods/loho"
	"github.com/qtune/qtune/methods/mezo"
	"github.com/qtune/qtune/model"
)

// A zeroth-order state whose values are finite but huge (1e38, 1e25: past
// what the forward can carry in float32) is refused by name, both in the
// files a run saves (ApplyAdapter, as eval and generate --adapter do) and
// in the training state at --resume. Only NaN and infinities were refused:
// the huge values were applied and every output went infinite, then NaN.
func TestZOStateOverflowRefused(t *testing.T) {
	for _, tc := range []struct {
		method, target, model string
		file                  string // the saved output holding the state
		prefix, suffix        string // of its tensors in the training state
	}{
		{"mezo", "scales", "q8", ScalesFile, "zo/", ".block_scale"},
		{"mezo", "float", "", FloatTensorsFile, "zo/", ""},
		{"mezo", "lora", "", "", "zo/", ".lora_a"},
		{"loho-intra", "complement", "q8", loho.DenseFile, "", ".zo_delta"},
	} {
		t.Run(tc.method+"-"+tc.target, func(t *testing.T) {
			dir := t.TempDir()
			cfg := zoRun(t, dir, tc.method, tc.target)
			cfg.Iters, cfg.SaveEvery, cfg.StepsPerEval = 2, 0, 0
			if tc.model == "q8" {
				cfg.Model = quantizedStories(t, dir)
			}
			if _, err := Run(context.Background(), cfg, nil, nil); err != nil {
				t.Fatal(err)
			}
			for _, huge := range []float32{1e38, 1e25} {
				if tc.file != "" {
					p := filepath.Join(dir, tc.file)
					ts, meta, err := mezo.ReadTensors(p)
					if err != nil {
						t.Fatal(err)
					}
					good := ts[0].Data[0]
					ts[0].Data[0] = huge
					if err := mezo.WriteTensors(p, ts, meta); err != nil {
						t.Fatal(err)
					}
					m, err := model.Open(cfg.Model, model.Options{})
					if err != nil {
						t.Fatal(err)
					}
					_, err = ApplyAdapter(m, dir)
					m.Close()
					if !errors.Is(err, mezo.ErrRange) || !strings.Contains(err.Error(), tc.file) || !strings.Contains(err.Error(), ts[0].Name) {
						t.Errorf("%g in %s of %s: %v", huge, ts[0].Name, tc.file, err)
					}
					ts[0].Data[0] = good
					if err := mezo.WriteTensors(p, ts, meta); err != nil {
						t.Fatal(err)
					}
				}
				sp := filepath.Join(dir, stateFile)
				st, err := checkpoint.Load(sp)
				if err != nil {
					t.Fatal(err)
				}
				var name string
				for i := range st.Tensors {
					if tt := &st.Tensors[i]; strings.HasPrefix(tt.Name, tc.prefix) && strings.HasSuffix(tt.Name, tc.suffix) && !strings.HasPrefix(tt.Name, "optim/") {
						name = tt.Name
						tt.Data[len(tt.Data)/2] = huge
						break
					}
				}
				if err := checkpoint.Save(sp, st); err != nil {
					t.Fatal(err)
				}
				rc := cfg
				rc.Resume, rc.Iters = true, 4
				_, err = Run(context.Background(), rc, nil, nil)
				if !errors.Is(err, mezo.ErrRange) || !strings.Contains(err.Error(), stateFile) || name == "" || !strings.Contains(err.Error(), strings.TrimPrefix(strings.TrimSuffix(name, ".lora_a"), tc.prefix)) {
					t.Errorf("%g in %s of the training state: %v", huge, name, err)
				}
			}
			// The run's own state and outputs are accepted.
			if _, err := Run(context.Background(), cfg, nil, nil); err != nil {
				t.Fatal(err)
			}
			m, err := model.Open(cfg.Model, model.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			if _, err := ApplyAdapter(m, dir); err != nil {
				t.Fatalf("a sane state: %v", err)
			}
		})
	}
}
