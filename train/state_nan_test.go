package train

import (
	"context"
	"math"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qtune/qtune/checkpoint"
)

// A training state holding NaN or infinity (in an adapter or an optimizer
// moment) is refused when it is loaded, naming the file and the tensor. It
// used to be resumed: the run went on computing with NaN until the
// divergence check stopped it, naming an iteration and no tensor.
func TestResumeRefusesNonFiniteState(t *testing.T) {
	dir := t.TempDir()
	cfg := smallRun(t, dir)
	cfg.Iters, cfg.StepsPerEval, cfg.SaveEvery = 2, 0, 2
	if _, err := Run(context.Background(), cfg, nil, nil); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, stateFile)
	good, err := checkpoint.Load(p)
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []float32{float32(math.NaN()), float32(math.Inf(1))} {
		for _, which := range []int{0, len(good.Tensors) - 1} { // an adapter, a moment
			st := *good
			st.Tensors = append([]checkpoint.Tensor(nil), good.Tensors...)
			tt := &st.Tensors[which]
			tt.Data = append([]float32(nil), tt.Data...)
			tt.Data[len(tt.Data)/2] = bad
			if err := checkpoint.Save(p, &st); err != nil {
				t.Fatal(err)
			}
			cfg.Resume, cfg.Iters = true, 4
			_, err := Run(context.Background(), cfg, nil, nil)
			if err == nil || !strings.Contains(err.Error(), tt.Name) || !strings.Contains(err.Error(), stateFile) {
				t.Errorf("%v in %s: %v", bad, tt.Name, err)
			}
		}
	}
}
