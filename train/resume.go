package train

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math"
	"sort"
	"strings"

	"github.com/qtune/qtune/methods/lora"
	"github.com/qtune/qtune/model"
	"github.com/qtune/qtune/offload"
)

// runIdentity is what a saved state was trained on, beyond its Config: a
// resumed run must continue on the same base weights and the same data.
type runIdentity struct {
	Base      string `json:"base"`      // baseID of the model's weights
	Tokenizer string `json:"tokenizer"` // tokenizerID
	Data      string `json:"data"`      // the train split's record sum
}

// baseID fingerprints a model's weights: every tensor's name, type and
// shape, and a sample of its bytes (start, middle, end), so that another
// base of the same shape is told apart without reading the whole file.
func baseID(m *model.Model) string {
	h := sha256.New()
	var b [8]byte
	for _, t := range m.Tensors {
		h.Write([]byte(t.Name))
		h.Write([]byte{0})
		binary.LittleEndian.PutUint64(b[:], uint64(t.Type))
		h.Write(b[:])
		for _, d := range t.Shape {
			binary.LittleEndian.PutUint64(b[:], uint64(d))
			h.Write(b[:])
		}
		const sample = 256
		n := len(t.Data)
		for _, off := range []int{0, n/2 - sample/2, n - sample} {
			off = max(0, min(off, n))
			h.Write(t.Data[off:min(n, off+sample)])
			// The kernel maps what a fault brings in (fault-around, a
			// large folio: up to 2 MiB): hand it back, or sampling 150
			// tensors of a streamed 1B model costs ~94 MiB of its budget.
			const margin = 2 << 20
			offload.Release(t.Data[max(0, off-margin):min(n, off+sample+margin)])
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

// resumeField is a setting a resumed run must share with the saved one.
type resumeField struct {
	name string // the flag
	get  func(c Config, m *model.Model) string
}

var resumeFields = []resumeField{
	{"--method", func(c Config, _ *model.Model) string { return c.Method }},
	{"--targets", func(c Config, _ *model.Model) string {
		ts, err := lora.ParseTargets(c.Targets)
		if err != nil {
			return c.Targets
		}
		s := make([]string, len(ts))
		for i, t := range ts {
			s[i] = fmt.Sprint(int(t))
		}
		sort.Strings(s)
		return strings.Join(s, ",")
	}},
	{"--num-layers", func(c Config, m *model.Model) string {
		n := c.NumLayers
		if n <= 0 || n > m.Config.Layers {
			n = m.Config.Layers
		}
		return fmt.Sprint(n)
	}},
	{"--rank", func(c Config, _ *model.Model) string { return fmt.Sprint(c.Rank) }},
	{"--alpha", func(c Config, _ *model.Model) string { return fmt.Sprint(c.Alpha) }},
	{"--seed", func(c Config, _ *model.Model) string { return fmt.Sprint(c.Seed) }},
	{"--batch-size", func(c Config, _ *model.Model) string { return fmt.Sprint(c.BatchSize * max(1, c.GradAccum)) }},
	{"--max-seq-length", func(c Config, _ *model.Model) string { return fmt.Sprint(c.MaxSeqLength) }},
	{"--pack", func(c Config, _ *model.Model) string { return fmt.Sprint(c.Pack) }},
	{"--optimizer", func(c Config, _ *model.Model) string { return c.Optimizer }},
	{"--zo-target", func(c Config, _ *model.Model) string { return c.ZOTarget }},
	{"--fo-layers", func(c Config, _ *model.Model) string { return c.FOLayers }},
	{"--fo-ratio", func(c Config, _ *model.Model) string { return fmt.Sprint(c.FORatio) }},
	{"--keep-ratio", func(c Config, _ *model.Model) string { return fmt.Sprint(c.KeepRatio) }},
	{"--stage1-iters", func(c Config, _ *model.Model) string { return fmt.Sprint(c.Stage1Iters) }},
	{"--perturbations", func(c Config, _ *model.Model) string { return fmt.Sprint(c.Perturbations) }},
}

// checkResume says how a run differs from the state it would resume, in a
// way that would lose or misapply that state: settings that shape or drive
// it, the base weights, the tokenizer and the data (each method's Load then
// refuses tensors it would not restore). nil when it may resume.
func checkResume(path string, saved runMeta, cfg Config, id runIdentity, m *model.Model) error {
	var diffs []string
	for _, f := range resumeFields {
		if a, b := f.get(saved.Config, m), f.get(cfg, m); a != b {
			diffs = append(diffs, fmt.Sprintf("%s %s (saved: %s)", f.name, b, a))
		}
	}
	if saved.Identity != nil { // states written before identities were saved have none
		if saved.Identity.Base != id.Base {
			diffs = append(diffs, "the base model's weights")
		}
		if saved.Identity.Tokenizer != id.Tokenizer {
			diffs = append(diffs, "the tokenizer")
		}
		if saved.Identity.Data != id.Data {
			diffs = append(diffs, "the training data")
		}
	}
	if len(diffs) == 0 {
		return nil
	}
	return fmt.Errorf("train: cannot resume %s: this run differs from the saved one in %s; resuming would lose or misapply its state: run with the saved settings, or --restart to start over (the saved state is then overwritten)",
		path, strings.Join(diffs, ", "))
}

// divergence stops a run whose loss has left the numbers: non-finite; or
// pinned at the uniform guess ln(V) for several iterations (different
// batches scoring the same ln(V) means the model predicts nothing whatever
// its input: a zeroth-order step too large blew the adapters up); or more
// than twice what the run started at (and above ln(V)) for as long.
type divergence struct {
	uniform float64 // ln(vocabulary size)
	first   float64 // the run's first loss (NaN until then)
	stuck   int     // consecutive iterations at the uniform guess or far above the start
	hint    string
}

const divergedAfter = 3

func (d *divergence) check(it int, loss float64) error {
	if math.IsNaN(loss) || math.IsInf(loss, 0) {
		return fmt.Errorf("train: training diverged at iteration %d: the loss is %v; %s", it, loss, d.hint)
	}
	if math.IsNaN(d.first) {
		d.first = loss
	}
	uniform := math.Abs(loss-d.uniform) < 1e-4
	if uniform || loss > 2*max(d.first, d.uniform) {
		d.stuck++
	} else {
		d.stuck = 0
	}
	if d.stuck < divergedAfter {
		return nil
	}
	if uniform {
		return fmt.Errorf("train: training diverged at iteration %d: the loss has been ln(%d) = %.4f, the uniform guess, for %d iterations: the model predicts nothing; %s",
			it, int(math.Round(math.Exp(d.uniform))), d.uniform, d.stuck, d.hint)
	}
	return fmt.Errorf("train: training diverged at iteration %d: the loss has been above twice its start (%.4f) for %d iterations, now %.4f; %s",
		it, d.first, d.stuck, loss, d.hint)
}
