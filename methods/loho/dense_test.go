package loho

import (
	"math"
	"math/rand/v2"
	"testing"
)

// TestDenseMatchesReference: Dense's forward and input gradient against
// float64 loops over the dense matrix, and ZeroMasked clears exactly the
// mask's entries (the complement of what NewSparse stores).
func TestDenseMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	const out, in, M, ratio, seed = 37, 53, 5, 0.3, 9
	d, err := NewDense("blk.0.attn_q.weight", out, in, ratio, seed, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	z := randn(r, out*in)
	d.ZeroMasked(0, z[:100])
	d.ZeroMasked(100, z[100:])
	s, err := NewSparse("blk.0.attn_q.weight", out, in, ratio, seed, false, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	inS := make([]bool, out*in)
	for _, e := range s.Entries() {
		inS[e] = true
	}
	for i, v := range z {
		if (v == 0) != inS[i] {
			t.Fatalf("entry %d: z %v, in the first-order mask %v", i, v, inS[i])
		}
	}
	if got, want := d.Trainable(), int64(out*in-s.Nnz()); got != want {
		t.Fatalf("Trainable %d, want %d", got, want)
	}
	copy(d.Val, z)
	x, dy := randn(r, M*in), randn(r, M*out)
	y0, dx0 := randn(r, M*out), randn(r, M*in)
	y, dx := append([]float32(nil), y0...), append([]float32(nil), dx0...)
	d.Forward(y, x, M)
	d.Backward(dx, dy, x, M)
	for m := 0; m < M; m++ {
		for o := 0; o < out; o++ {
			want := float64(y0[m*out+o])
			for c := 0; c < in; c++ {
				want += float64(x[m*in+c]) * float64(z[o*in+c])
			}
			if math.Abs(float64(y[m*out+o])-want) > 1e-4 {
				t.Fatalf("y[%d,%d] = %v, want %v", m, o, y[m*out+o], want)
			}
		}
		for c := 0; c < in; c++ {
			want := float64(dx0[m*in+c])
			for o := 0; o < out; o++ {
				want += float64(dy[m*out+o]) * float64(z[o*in+c])
			}
			if math.Abs(float64(dx[m*in+c])-want) > 1e-4 {
				t.Fatalf("dx[%d,%d] = %v, want %v", m, c, dx[m*in+c], want)
			}
		}
	}
	if _, err := NewDense("x", out, in, 1, seed, nil, nil); err == nil {
		t.Fatal("a first-order share of 1 (no zeroth-order entries) was accepted")
	}
	if _, err := DenseFrom("x", out, in, make([]float32, 3), nil); err == nil {
		t.Fatal("3 values for a 37x53 delta were accepted")
	}
}
