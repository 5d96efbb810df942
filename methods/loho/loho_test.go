package loho

import (
	"math"
	"math/rand/v2"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/qtune/qtune/model"
)

func randn(r *rand.Rand, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(r.NormFloat64())
	}
	return v
}

// TestSparseMatchesDense: forward, the SDDMM gradient and dx agree with the
// dense formulas on the mask (dense S, dense dW = dyᵀx sampled at the
// mask), and the gradient passes a finite-difference check.
func TestSparseMatchesDense(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	const out, in, M = 37, 53, 5
	s, err := NewSparse("blk.0.attn_q.weight", out, in, 0.3, 9, true, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if f := float64(s.Nnz()) / (out * in); math.Abs(f-0.3) > 0.05 {
		t.Fatalf("mask keeps %.3f of the entries, want 0.3", f)
	}
	for i := range s.Val {
		s.Val[i] = float32(r.NormFloat64())
	}
	dense := make([]float32, out*in)
	s.AddTo(dense)
	key := MaskKey(9, s.Target)
	for i, v := range dense {
		if v != 0 && !InMask(key, i, 0.3) {
			t.Fatalf("entry %d outside the mask holds %v", i, v)
		}
	}
	x, dy := randn(r, M*in), randn(r, M*out)
	y := make([]float32, M*out)
	s.Forward(y, x, M)
	dx := make([]float32, M*in)
	s.Backward(dx, dy, x, M)
	for m := 0; m < M; m++ {
		for o := 0; o < out; o++ {
			var ref float64
			for c := 0; c < in; c++ {
				ref += float64(x[m*in+c]) * float64(dense[o*in+c])
			}
			if math.Abs(ref-float64(y[m*out+o])) > 1e-4 {
				t.Fatalf("y[%d,%d] = %v, dense %v", m, o, y[m*out+o], ref)
			}
		}
		for c := 0; c < in; c++ {
			var ref float64
			for o := 0; o < out; o++ {
				ref += float64(dy[m*out+o]) * float64(dense[o*in+c])
			}
			if math.Abs(ref-float64(dx[m*in+c])) > 1e-4 {
				t.Fatalf("dx[%d,%d] = %v, dense %v", m, c, dx[m*in+c], ref)
			}
		}
	}
	idx := s.Entries()
	for k, i := range idx {
		o, c := int(i)/in, int(i)%in
		var ref float64
		for m := 0; m < M; m++ {
			ref += float64(dy[m*out+o]) * float64(x[m*in+c])
		}
		if math.Abs(ref-float64(s.Grad[k])) > 1e-4 {
			t.Fatalf("grad at (%d,%d) = %v, dense dW %v", o, c, s.Grad[k], ref)
		}
	}
	// Finite differences of f = Σ dy·y on a few values.
	f := func() float64 {
		y := make([]float32, M*out)
		s.Forward(y, x, M)
		var v float64
		for i := range y {
			v += float64(dy[i]) * float64(y[i])
		}
		return v
	}
	for _, k := range []int{0, s.Nnz() / 2, s.Nnz() - 1} {
		old := s.Val[k]
		s.Val[k] = old + 1e-2
		fp := f()
		s.Val[k] = old - 1e-2
		fm := f()
		s.Val[k] = old
		if num := (fp - fm) / 2e-2; math.Abs(num-float64(s.Grad[k])) > 1e-3*(1+math.Abs(num)) {
			t.Fatalf("grad[%d] = %v, finite difference %v", k, s.Grad[k], num)
		}
	}
}

// TestSparseBackwardAllocatesNoDenseGradient: a backward through a
// 1024×1024 delta at 50% allocates far less than one dense float matrix
// (4 MiB): the gradient exists only at the mask.
func TestSparseBackwardAllocatesNoDenseGradient(t *testing.T) {
	const out, in, M = 1024, 1024, 4
	s, err := NewSparse("w", out, in, 0.5, 1, true, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 1))
	x, dy, dx := randn(r, M*in), randn(r, M*out), make([]float32, M*in)
	var a, b runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&a)
	s.Backward(dx, dy, x, M)
	s.Forward(dy, x, M)
	runtime.ReadMemStats(&b)
	if got := b.TotalAlloc - a.TotalAlloc; got > 64<<10 {
		t.Fatalf("backward+forward allocated %d bytes", got)
	}
}

func TestSparseFileRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	var ds []*Sparse
	for _, name := range []string{"blk.0.attn_q.weight", "blk.1.ffn_down.weight"} {
		s, err := NewSparse(name, 12, 20, 0.25, 3, false, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		copy(s.Val, randn(r, s.Nnz()))
		ds = append(ds, s)
	}
	p := filepath.Join(t.TempDir(), SparseFile)
	if err := WriteSparse(p, ds, map[string]string{"mask_seed": "3"}); err != nil {
		t.Fatal(err)
	}
	got, meta, err := ReadSparse(p, nil, nil)
	if err != nil || len(got) != 2 || meta["mask_seed"] != "3" {
		t.Fatalf("%d deltas, %v, %v", len(got), meta, err)
	}
	for i, g := range got {
		w, v := make([]float32, 240), make([]float32, 240)
		ds[i].AddTo(w)
		g.AddTo(v)
		for j := range w {
			if w[j] != v[j] {
				t.Fatalf("%s: entry %d %v, read back %v", g.Target, j, v[j], w[j])
			}
		}
	}
	if _, err := FromEntries("w", 2, 2, []int32{1, 1}, []float32{1, 2}, nil); err == nil {
		t.Fatal("repeated index accepted")
	}
	if _, err := NewSparse("w", 2, 2, 0, 1, false, nil, nil); err == nil {
		t.Fatal("ratio 0 accepted")
	}
}

type rec struct{ f, b *int }

func (r rec) Forward(y, x []float32, M int)       { *r.f++ }
func (r rec) Backward(dx, dy, x []float32, M int) { *r.b++ }

func TestStack(t *testing.T) {
	var f, b int
	st := Stack{rec{&f, &b}, rec{&f, &b}}
	var _ model.Adapter = st
	st.Forward(nil, nil, 0)
	st.Backward(nil, nil, nil, 0)
	if f != 2 || b != 2 {
		t.Fatal("stack did not call every adapter")
	}
}

// TestPlan: the estimate grows with n by one block's activations and
// first-order state (less its zeroth-order state), and MaxFO picks the
// largest n under the budget.
func TestPlan(t *testing.T) {
	c := model.Config{Dim: 288, Hidden: 768, Layers: 6, Heads: 6, KVHeads: 6, HeadDim: 48, Vocab: 32000}
	p := PlanFor(c, 10<<20, 4, 64, false, 1<<20, 1<<18)
	if p.ActPerBlock != c.ActivationBytes(4, 64, false)/6 {
		t.Fatalf("per-block activations %d, model says %d", p.ActPerBlock, c.ActivationBytes(4, 64, false)/6)
	}
	step := p.ActPerBlock + p.FOPerBlock - p.ZOPerBlock
	for n := 0; n < 6; n++ {
		if p.Bytes(n+1)-p.Bytes(n) != step {
			t.Fatal("estimate not linear in n")
		}
	}
	for n := 0; n <= 6; n++ {
		got, err := p.MaxFO(p.Bytes(n) + step/2)
		if err != nil || got != n {
			t.Fatalf("budget for n=%d: MaxFO %d, %v", n, got, err)
		}
	}
	if got, _ := p.MaxFO(p.Bytes(6) * 10); got != 6 {
		t.Fatalf("large budget: %d", got)
	}
	if _, err := p.MaxFO(p.Bytes(0) - 1); err == nil {
		t.Fatal("a budget below the zeroth-order need was accepted")
	}
	ck := PlanFor(c, 10<<20, 4, 64, true, 1<<20, 1<<18)
	if ck.ActPerBlock != 4*4*64*288 || ck.ActPerBlock >= p.ActPerBlock {
		t.Fatalf("checkpointed per-block activations %d", ck.ActPerBlock)
	}
}
