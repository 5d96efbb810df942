package loreml

import (
	"bytes"
	"errors"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"testing"

	"github.com/qtune/qtune/internal/shared"
	"github.com/qtune/qtune/kernels"
	"github.com/qtune/qtune/model"
	"github.com/qtune/qtune/quant"
)

func randVec(r *rand.Rand, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(r.NormFloat64())
	}
	return v
}

// randomMask picks k distinct ascending flat indices of an out×in matrix.
func randomMask(r *rand.Rand, out, in, k int) []int32 {
	perm := r.Perm(out * in)[:k]
	idx := make([]int32, k)
	for i, p := range perm {
		idx[i] = int32(p)
	}
	slices.Sort(idx)
	return idx
}

// TestSparseMatchesDense: Forward is x·Δᵀ with Δ dense, the SDDMM gradient
// equals the dense dW = dyᵀ·x at every kept entry, and dx += dy·Δ, for 1 and
// 3 workers (identical results).
func TestSparseMatchesDense(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	const out, in, M, k = 7, 9, 5, 20
	idx := randomMask(r, out, in, k)
	vals := randVec(r, k)
	x, dy := randVec(r, M*in), randVec(r, M*out)
	dense := make([]float32, out*in)
	for p, f := range idx {
		dense[f] = vals[p]
	}
	var ref []float32
	for _, workers := range []int{1, 3} {
		pool := kernels.NewPool(workers)
		s, err := newSparse(out, in, idx, vals, pool, nil)
		if err != nil {
			t.Fatal(err)
		}
		s.Grad = make([]float32, k)
		if got := s.Indices(); !slices.Equal(got, idx) {
			t.Fatalf("Indices %v, want %v", got, idx)
		}
		y := randVec(r, M*out)
		y0 := slices.Clone(y)
		s.Forward(y, x, M)
		for m := 0; m < M; m++ {
			for i := 0; i < out; i++ {
				var want float64 = float64(y0[m*out+i])
				for j := 0; j < in; j++ {
					want += float64(dense[i*in+j]) * float64(x[m*in+j])
				}
				if d := math.Abs(want - float64(y[m*out+i])); d > 1e-5 {
					t.Fatalf("forward y[%d,%d] = %v, dense %v", m, i, y[m*out+i], want)
				}
			}
		}
		dx := make([]float32, M*in)
		s.Backward(dx, dy, x, M)
		for p, f := range idx {
			i, j := int(f)/in, int(f)%in
			var want float64
			for m := 0; m < M; m++ {
				want += float64(dy[m*out+i]) * float64(x[m*in+j])
			}
			if d := math.Abs(want - float64(s.Grad[p])); d > 1e-5 {
				t.Fatalf("grad at (%d,%d) = %v, dense dW %v", i, j, s.Grad[p], want)
			}
		}
		for m := 0; m < M; m++ {
			for j := 0; j < in; j++ {
				var want float64
				for i := 0; i < out; i++ {
					want += float64(dy[m*out+i]) * float64(dense[i*in+j])
				}
				if d := math.Abs(want - float64(dx[m*in+j])); d > 1e-5 {
					t.Fatalf("dx[%d,%d] = %v, dense %v", m, j, dx[m*in+j], want)
				}
			}
		}
		got := append(slices.Clone(s.Grad), dx...)
		if ref == nil {
			ref = got
		} else if !slices.Equal(ref, got) {
			t.Fatal("results depend on the number of workers")
		}
		pool.Close()
	}
}

// TestMatrixFiniteDifference checks the whole stage-2 adapter (warm start +
// sparse delta) by finite differences of L = Σ c·y: dL/dx against Backward's
// dx and dL/dΔ against Grad.
func TestMatrixFiniteDifference(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	const out, in, M, R, k = 6, 8, 3, 2, 10
	pool := kernels.NewPool(2)
	defer pool.Close()
	a := &Matrix{Out: out, In: in,
		Warm:  &LowRank{Out: out, In: in, R: R, Scale: 0.7, U: randVec(r, out*R), V: randVec(r, R*in), pool: pool},
		Delta: mustSparse(t, out, in, randomMask(r, out, in, k), randVec(r, k), pool)}
	a.Delta.Grad = make([]float32, k)
	x, c := randVec(r, M*in), randVec(r, M*out)
	loss := func() float64 {
		y := make([]float32, M*out)
		a.Forward(y, x, M)
		var s float64
		for i := range y {
			s += float64(c[i]) * float64(y[i])
		}
		return s
	}
	dx := make([]float32, M*in)
	a.Backward(dx, c, x, M)
	const eps = 1e-2
	fd := func(v *float32) float64 {
		old := *v
		*v = old + eps
		lp := loss()
		*v = old - eps
		lm := loss()
		*v = old
		return (lp - lm) / (2 * eps)
	}
	for i := range x {
		if want := fd(&x[i]); math.Abs(want-float64(dx[i])) > 1e-3*(1+math.Abs(want)) {
			t.Fatalf("dx[%d] = %v, finite difference %v", i, dx[i], want)
		}
	}
	for p := range a.Delta.Val {
		if want := fd(&a.Delta.Val[p]); math.Abs(want-float64(a.Delta.Grad[p])) > 1e-3*(1+math.Abs(want)) {
			t.Fatalf("dΔ[%d] = %v, finite difference %v", p, a.Delta.Grad[p], want)
		}
	}
	// AddTo gives the dense matrix the adapter applies.
	w := make([]float32, out*in)
	a.AddTo(w)
	y := make([]float32, M*out)
	a.Forward(y, x, M)
	for m := 0; m < M; m++ {
		for i := 0; i < out; i++ {
			want := float64(kernels.Dot(w[i*in:(i+1)*in], x[m*in:(m+1)*in]))
			if math.Abs(want-float64(y[m*out+i])) > 1e-4 {
				t.Fatalf("AddTo row %d disagrees with Forward: %v vs %v", i, want, y[m*out+i])
			}
		}
	}
}

// TestTopKIsExact: the mask holds exactly the k largest |U·V| (ties to the
// lower index), whatever the number of workers, with and without ties.
func TestTopKIsExact(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for _, tc := range []struct {
		out, in, rank int
		keep          float64
		ties          bool
	}{{13, 17, 3, 0.1, false}, {32, 8, 2, 0.3, true}, {5, 5, 1, 1, false}, {40, 30, 4, 0.005, false}} {
		u, v := randVec(r, tc.out*tc.rank), randVec(r, tc.rank*tc.in)
		if tc.ties { // few distinct values: many equal |S|
			for i := range u {
				u[i] = float32(math.Round(float64(u[i])))
			}
			for i := range v {
				v[i] = float32(math.Round(float64(v[i])))
			}
		}
		k := KeptEntries(tc.out, tc.in, tc.keep)
		if want := int(math.Floor(float64(tc.out*tc.in) * tc.keep)); k != want {
			t.Fatalf("KeptEntries = %d, want %d", k, want)
		}
		// Dense reference with the same row computation.
		type e struct {
			v   float32
			idx int32
		}
		all := make([]e, 0, tc.out*tc.in)
		for i := 0; i < tc.out; i++ {
			row := make([]float32, tc.in)
			for q := 0; q < tc.rank; q++ {
				kernels.Axpy(row, u[i*tc.rank+q], v[q*tc.in:(q+1)*tc.in])
			}
			for j, s := range row {
				all = append(all, e{float32(math.Abs(float64(s))), int32(i*tc.in + j)})
			}
		}
		sort.SliceStable(all, func(a, b int) bool { return all[a].v > all[b].v })
		want := make([]int32, k)
		for i := range want {
			want[i] = all[i].idx
		}
		slices.Sort(want)
		for _, workers := range []int{1, 2, 5} {
			pool := kernels.NewPool(workers)
			got := TopK(pool, u, v, tc.out, tc.in, tc.rank, k)
			pool.Close()
			if !slices.Equal(got, want) {
				t.Fatalf("%+v, %d workers: top-k %v, want %v", tc, workers, got, want)
			}
		}
	}
}

func TestRemapRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	const out, in, R, D = 16, 5, 2, 8
	idx := randomMask(r, out, in, 30)
	vals, u := randVec(r, 30), randVec(r, out*R)
	m := &model.Model{Format: "safetensors", Config: model.Config{RopeNeox: true, HeadDim: D}}
	to, from := rowMap(m, "blk.0.attn_q.weight", true), rowMap(m, "blk.0.attn_q.weight", false)
	for row := 0; row < out; row++ {
		if from(to(row)) != row {
			t.Fatalf("row %d: maps are not inverse", row)
		}
	}
	if to(1) != 2 || to(D/2) != 1 { // HF row 1 (a=0, j=1) is GGUF 2; HF row D/2 (a=1, j=0) is GGUF 1
		t.Fatalf("to(1) = %d, to(D/2) = %d", to(1), to(D/2))
	}
	i2, v2, u2 := remap(to, in, R, idx, vals, u)
	i3, v3, u3 := remap(from, in, R, i2, v2, u2)
	if !slices.Equal(i3, idx) || !slices.Equal(v3, vals) || !slices.Equal(u3, u) {
		t.Fatal("remap there and back changes the delta")
	}
	if rowMap(m, "blk.0.ffn_up.weight", true) != nil || rowMap(&model.Model{Format: "gguf"}, "blk.0.attn_q.weight", true) != nil {
		t.Fatal("rows of other matrices or GGUF models must not move")
	}
}

func openStories(t *testing.T) *model.Model {
	t.Helper()
	m, err := model.Open(shared.Path(t, "assets", "models", "stories260K.gguf"), model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func logits(t *testing.T, m *model.Model) []float32 {
	t.Helper()
	toks := []int{1, 403, 407, 261, 378, 432, 383}
	out := make([]float32, len(toks)*m.Config.Vocab)
	if err := m.Forward(m.NewState(len(toks)), toks, out, true); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestScoresBuildSaveLoadMerge on stories260K: the stage-1 scores start at
// zero with U random and V zero; Build keeps ⌊numel·keep⌋ entries per matrix;
// a set with non-zero delta and norms survives Save/Load bit for bit; and
// the merged float model gives the applied set's logits within 1e-4.
func TestScoresBuildSaveLoadMerge(t *testing.T) {
	m := openStories(t)
	base := logits(t, m)
	c := Config{Rank: 4, Alpha: 8, Seed: 3, KeepRatio: 0.01, WarmStart: 0.5}
	sc, err := NewScores(m, c)
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(9, 10))
	for _, l := range sc {
		lim := float32(1 / math.Sqrt(4))
		for _, a := range l.V {
			if a != 0 {
				t.Fatal("V must start at zero")
			}
		}
		if slices.Max(l.U) > lim || slices.Min(l.U) < -lim || slices.Max(l.U) == 0 {
			t.Fatalf("U not Kaiming-uniform in ±%v", lim)
		}
		for i := range l.V { // as if trained
			l.V[i] = 0.1 * float32(r.NormFloat64())
		}
	}
	set, err := Build(m, c, sc)
	if err != nil {
		t.Fatal(err)
	}
	plan, _ := Plan(m, c)
	if len(set.Matrices) != 35 || set.Kept() != plan.Kept || set.NormValues() != plan.NormValues || plan.NormValues != 11*int64(m.Config.Dim) {
		t.Fatalf("%d matrices, %d kept (plan %d), %d norm values (plan %d)", len(set.Matrices), set.Kept(), plan.Kept, set.NormValues(), plan.NormValues)
	}
	for _, a := range set.Matrices {
		if a.Delta.K() != KeptEntries(a.Out, a.In, c.KeepRatio) || a.Warm == nil {
			t.Fatalf("%s: %d kept", a.Target, a.Delta.K())
		}
		copy(a.Delta.Val, randVec(r, a.Delta.K()))
		for i := range a.Delta.Val {
			a.Delta.Val[i] *= 0.05
		}
	}
	for _, n := range set.Norms {
		for i := range n.W {
			n.W[i] *= 1 + 0.1*float32(r.NormFloat64())
		}
	}
	m.Adapters = set.ByPos
	want := logits(t, m)
	diff := 0.0
	for i := range want {
		diff = math.Max(diff, math.Abs(float64(want[i]-base[i])))
	}
	if diff < 0.05 {
		t.Fatalf("the delta barely changes the logits (%g)", diff)
	}
	dir := t.TempDir()
	if err := set.Save(dir, m, "stories260K"); err != nil {
		t.Fatal(err)
	}
	if !Has(dir) || !Has(filepath.Join(dir, FileName)) || Has(t.TempDir()) {
		t.Fatal("Has does not recognise the folder")
	}
	m2 := openStories(t)
	got, err := Load(m2, dir)
	if err != nil {
		t.Fatal(err)
	}
	if got.Kept() != set.Kept() || len(got.Norms) != len(set.Norms) {
		t.Fatalf("loaded %d kept, %d norms", got.Kept(), len(got.Norms))
	}
	if l2 := logits(t, m2); !slices.Equal(l2, want) {
		t.Fatal("the loaded delta gives other logits than the saved one")
	}
	// Merge into a float model.
	m3 := openStories(t)
	var buf bytes.Buffer
	if _, err := model.QuantizeWith(m3, &buf, quant.F32, got.Merge()); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "merged.gguf")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	mm, err := model.Open(p, model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer mm.Close()
	merged := logits(t, mm)
	worst := 0.0
	for i := range want {
		d := math.Abs(float64(merged[i] - want[i]))
		worst = math.Max(worst, d)
		if d > 1e-4 {
			t.Fatalf("merged logit %d = %v, adapter %v", i, merged[i], want[i])
		}
	}
	t.Logf("merged vs applied: max |Δlogit| %.2g (logits move up to %.2g from the base)", worst, diff)
	// A damaged file is refused with ErrFile.
	b, _ := os.ReadFile(filepath.Join(dir, FileName))
	bad := bytes.Replace(b, []byte("qtune-loreml"), []byte("qtune-lorexx"), 1)
	if _, err := Parse(openStories(t), bad); !errors.Is(err, ErrFile) {
		t.Fatalf("wrong format accepted: %v", err)
	}
}

func mustSparse(t *testing.T, out, in int, idx []int32, vals []float32, pool *kernels.Pool) *Sparse {
	t.Helper()
	s, err := newSparse(out, in, idx, vals, pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
