package loreml

import (
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/qtune/qtune/internal/fsx"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/qtune/qtune/format/safetensors"
	"github.com/qtune/qtune/model"
)

// FileName is the stage-2 result inside an adapter folder. It is a
// safetensors file with
//
//	<target>.delta.indices  I32 (k)        ascending flat row-major indices i·In + j into the (Out, In) weight
//	<target>.delta.values   F32 (k)        Δ at those entries
//	<target>.warm.U         F32 (Out, R)   warm start factors; the frozen term is γ·U·V
//	<target>.warm.V         F32 (R, In)
//	<norm name>             F32 (C)        trained RMSNorm weights (blk.N.attn_norm.weight, …, output_norm.weight)
//
// and __metadata__ {"format": "qtune-loreml", "version": "1", "warm_start": γ,
// "rank", "alpha", "keep_ratio", "row_order": "gguf", "base_model"}. <target>
// is the base tensor's GGUF name (blk.0.attn_q.weight). Rows are in GGUF
// order: a model read from a Hugging Face folder has its q/k rows permuted
// on save and load. A matrix with no kept entries has no delta tensors; one
// without a warm start (γ = 0) has no warm tensors.
const FileName = "loreml_delta.safetensors"

// fileFormat is the metadata "format" value.
const fileFormat = "qtune-loreml"

// Has reports whether path is a LoReML delta file or a folder holding one.
func Has(path string) bool {
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		path = filepath.Join(path, FileName)
	}
	return filepath.Base(path) == FileName && exists(path)
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// rowMap returns, for q and k of a model held in Hugging Face row order,
// the map from the model's row to the GGUF row (toFile) or back; nil when
// the orders agree. Within each head of D rows, GGUF row 2j+a holds HF row
// a·D/2+j.
func rowMap(m *model.Model, target string, toFile bool) func(int) int {
	if !m.HoldsHFOrder() {
		return nil
	}
	if !strings.HasSuffix(target, ".attn_q.weight") && !strings.HasSuffix(target, ".attn_k.weight") {
		return nil
	}
	D := m.Config.HeadDim
	return func(r int) int {
		h, x := r/D, r%D
		if toFile { // HF a·D/2+j → GGUF 2j+a
			a, j := x/(D/2), x%(D/2)
			return h*D + 2*j + a
		}
		j, a := x/2, x%2 // GGUF 2j+a → HF a·D/2+j
		return h*D + a*(D/2) + j
	}
}

// remap moves the entries (indices with values) and the rows of u (rows of
// r values) of an (out, in) matrix to the rows f gives, re-sorting the
// indices. It returns new slices.
func remap(f func(int) int, in, r int, idx []int32, vals, u []float32) ([]int32, []float32, []float32) {
	type kv struct {
		i int32
		v float32
	}
	e := make([]kv, len(idx))
	for p, x := range idx {
		row, col := int(x)/in, int(x)%in
		e[p] = kv{int32(f(row)*in + col), vals[p]}
	}
	slices.SortFunc(e, func(a, b kv) int { return int(a.i) - int(b.i) })
	ni, nv := make([]int32, len(e)), make([]float32, len(e))
	for p, x := range e {
		ni[p], nv[p] = x.i, x.v
	}
	var nu []float32
	if u != nil {
		nu = make([]float32, len(u))
		for row := 0; row < len(u)/r; row++ {
			copy(nu[f(row)*r:(f(row)+1)*r], u[row*r:(row+1)*r])
		}
	}
	return ni, nv, nu
}

func f32Bytes(v []float32) []byte {
	b := make([]byte, 0, 4*len(v))
	for _, x := range v {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(x))
	}
	return b
}

func i32Bytes(v []int32) []byte {
	b := make([]byte, 0, 4*len(v))
	for _, x := range v {
		b = binary.LittleEndian.AppendUint32(b, uint32(x))
	}
	return b
}

// Save writes the set into dir as FileName (written to a temporary file and
// renamed). baseName is recorded in the metadata.
func (s *Set) Save(dir string, m *model.Model, baseName string) error {
	var ts []safetensors.Tensor
	for _, a := range s.Matrices {
		idx, vals := a.Delta.Indices(), a.Delta.Val
		var u []float32
		if a.Warm != nil {
			u = a.Warm.U
		}
		if f := rowMap(m, a.Target, true); f != nil {
			r := 1
			if a.Warm != nil {
				r = a.Warm.R
			}
			idx, vals, u = remap(f, a.In, r, idx, vals, u)
		}
		if len(idx) > 0 {
			ts = append(ts,
				safetensors.Tensor{Name: a.Target + ".delta.indices", DType: "I32", Shape: []int64{int64(len(idx))}, Data: i32Bytes(idx)},
				safetensors.Tensor{Name: a.Target + ".delta.values", DType: "F32", Shape: []int64{int64(len(idx))}, Data: f32Bytes(vals)})
		}
		if a.Warm != nil {
			ts = append(ts,
				safetensors.Tensor{Name: a.Target + ".warm.U", DType: "F32", Shape: []int64{int64(a.Out), int64(a.Warm.R)}, Data: f32Bytes(u)},
				safetensors.Tensor{Name: a.Target + ".warm.V", DType: "F32", Shape: []int64{int64(a.Warm.R), int64(a.In)}, Data: f32Bytes(a.Warm.V)})
		}
	}
	for _, n := range s.Norms {
		ts = append(ts, safetensors.Tensor{Name: n.Name, DType: "F32", Shape: []int64{int64(len(n.W))}, Data: f32Bytes(n.W)})
	}
	fl := func(x float64) string { return strconv.FormatFloat(x, 'g', -1, 64) }
	meta := map[string]string{"format": fileFormat, "version": "1", "warm_start": fl(s.Config.WarmStart),
		"rank": strconv.Itoa(s.Config.Rank), "alpha": fl(s.Config.Alpha), "keep_ratio": fl(s.Config.KeepRatio),
		"row_order": "gguf", "base_model": baseName}
	if err := safetensors.WriteFile(filepath.Join(dir, FileName), ts, meta); err != nil {
		return fmt.Errorf("loreml: %w", err)
	}
	return nil
}

// ErrFile marks a delta file that does not fit the format or the model.
var ErrFile = errors.New("not a LoReML delta for this model")

// Load reads a delta (a folder holding FileName, or the file) for m, copies
// its norms into the model and sets m.Adapters, so that m's Forward
// (generate, eval) applies it. The returned set also gives the merge.
func Load(m *model.Model, path string) (*Set, error) {
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		path = filepath.Join(path, FileName)
	}
	b, err := fsx.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("loreml: %w", err)
	}
	s, err := Parse(m, b)
	if err != nil {
		return nil, fmt.Errorf("loreml: %s: %w", path, err)
	}
	m.Adapters = s.ByPos
	return s, nil
}

// Parse builds the set a delta file's bytes describe for m (copying its
// norms into the model, but not setting m.Adapters).
func Parse(m *model.Model, b []byte) (*Set, error) {
	f, err := safetensors.Parse(b)
	if err != nil {
		return nil, err
	}
	md := f.Metadata
	if md["format"] != fileFormat || md["version"] != "1" {
		return nil, fmt.Errorf("%w: metadata format %q version %q", ErrFile, md["format"], md["version"])
	}
	var c Config
	// γ scales every warm start term as float32: NaN, an infinity, a
	// negative γ or one past float32's range (1e308) would be applied.
	if c.WarmStart, err = strconv.ParseFloat(md["warm_start"], 64); err != nil || !(c.WarmStart >= 0) || c.WarmStart > math.MaxFloat32 {
		return nil, fmt.Errorf("%w: warm_start %q must be a finite float32 ≥ 0", ErrFile, md["warm_start"])
	}
	c.Rank, _ = strconv.Atoi(md["rank"])
	c.Alpha, _ = strconv.ParseFloat(md["alpha"], 64)
	c.KeepRatio, _ = strconv.ParseFloat(md["keep_ratio"], 64)
	if len(f.Tensors) == 0 {
		return nil, fmt.Errorf("%w: no tensors", ErrFile)
	}
	var bad error // the first non-finite value
	parts := map[string]*Part{}
	norms := map[string][]float32{}
	part := func(t string) *Part {
		if parts[t] == nil {
			parts[t] = &Part{Target: t}
		}
		return parts[t]
	}
	for _, t := range f.Tensors {
		want := "F32"
		if strings.HasSuffix(t.Name, ".delta.indices") {
			want = "I32"
		}
		if t.DType != want {
			return nil, fmt.Errorf("%w: tensor %s is %s, want %s", ErrFile, t.Name, t.DType, want)
		}
		n := len(t.Data) / 4
		fv := func() []float32 {
			v := make([]float32, n)
			for i := range v {
				v[i] = math.Float32frombits(binary.LittleEndian.Uint32(t.Data[4*i:]))
				if f := float64(v[i]); (math.IsNaN(f) || math.IsInf(f, 0)) && bad == nil {
					bad = fmt.Errorf("%w: tensor %s: value %d is %v", ErrFile, t.Name, i, v[i])
				}
			}
			return v
		}
		switch {
		case strings.HasSuffix(t.Name, ".delta.indices"):
			p := part(strings.TrimSuffix(t.Name, ".delta.indices"))
			p.Indices = make([]int32, n)
			for i := range p.Indices {
				p.Indices[i] = int32(binary.LittleEndian.Uint32(t.Data[4*i:]))
			}
		case strings.HasSuffix(t.Name, ".delta.values"):
			part(strings.TrimSuffix(t.Name, ".delta.values")).Values = fv()
		case strings.HasSuffix(t.Name, ".warm.U"):
			if len(t.Shape) != 2 {
				return nil, fmt.Errorf("%w: %s has shape %v", ErrFile, t.Name, t.Shape)
			}
			p := part(strings.TrimSuffix(t.Name, ".warm.U"))
			p.U, p.Rank = fv(), int(t.Shape[1])
		case strings.HasSuffix(t.Name, ".warm.V"):
			part(strings.TrimSuffix(t.Name, ".warm.V")).V = fv()
		case strings.HasSuffix(t.Name, "norm.weight"):
			norms[t.Name] = fv()
		default:
			return nil, fmt.Errorf("%w: unexpected tensor %s", ErrFile, t.Name)
		}
	}
	if bad != nil {
		return nil, bad
	}
	names := make([]string, 0, len(parts))
	for n := range parts {
		names = append(names, n)
	}
	slices.Sort(names) // NewSet checks targets; order: by name
	list := make([]Part, 0, len(parts))
	for _, n := range names {
		p := parts[n]
		if (p.U == nil) != (p.V == nil) {
			return nil, fmt.Errorf("%w: %s has only one warm start factor", ErrFile, n)
		}
		if p.Rank > 0 && c.WarmStart == 0 {
			return nil, fmt.Errorf("%w: %s has a warm start but γ = 0", ErrFile, n)
		}
		if p.Rank > 0 { // γ·U·V must stay finite in float32
			var mu, mv float64
			for _, x := range p.U {
				mu = max(mu, math.Abs(float64(x)))
			}
			for _, x := range p.V {
				mv = max(mv, math.Abs(float64(x)))
			}
			if c.WarmStart*mu*mv*float64(p.Rank) > math.MaxFloat32 {
				return nil, fmt.Errorf("%w: %s: warm_start γ = %g times its factors (|U| ≤ %g, |V| ≤ %g) overflows float32", ErrFile, n, c.WarmStart, mu, mv)
			}
		}
		if li, mod, ok := locate(m, n); ok {
			w := m.Layers[li].Matrix(mod)
			if f := rowMap(m, n, false); f != nil {
				if len(p.Values) != len(p.Indices) || (p.Rank > 0 && len(p.U) != w.Rows*p.Rank) {
					return nil, fmt.Errorf("%w: %s: sizes do not match", ErrFile, n)
				}
				r := max(p.Rank, 1)
				for _, x := range p.Indices {
					if x < 0 || int64(x) >= int64(w.Rows)*int64(w.Cols) {
						return nil, fmt.Errorf("%w: %s: index %d out of range", ErrFile, n, x)
					}
				}
				p.Indices, p.Values, p.U = remap(f, w.Cols, r, p.Indices, p.Values, p.U)
			}
		}
		list = append(list, *p)
	}
	s, err := NewSet(m, c, list, norms)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrFile, err)
	}
	return s, nil
}
