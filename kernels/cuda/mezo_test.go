package cuda_test

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/qtune/qtune/kernels/cuda"
	"github.com/qtune/qtune/methods/loho"
	"github.com/qtune/qtune/methods/mezo"
)

// MeZO's z regenerated on the device is the CPU generator's, element for
// element (double-precision log and sincos on both sides, so at most a
// last-place difference), and the perturbation adds exactly it. External
// (package cuda_test): methods/mezo imports the model, which imports this
// package.
func TestGPUMezoNormalIsTheCPUs(t *testing.T) {
	d := cuda.GPUForTest(t)
	const n = 10007
	const seed, tensor, off = 0x1234abcd, 5, 333 // an odd offset: a pair split
	want := make([]float32, n)
	mezo.Normal(want, seed, tensor, off)
	zb, err := d.Alloc(4 * n)
	if err != nil {
		t.Fatal(err)
	}
	defer zb.Free()
	if err := d.MezoNormal(zb, mezo.TensorKey(seed, tensor), off, n); err != nil {
		t.Fatal(err)
	}
	got := make([]float32, n)
	if err := zb.ReadF32(got, 0); err != nil {
		t.Fatal(err)
	}
	for i := range want {
		if diff := math.Abs(float64(got[i] - want[i])); diff > math.Abs(float64(want[i]))*math.Ldexp(1, -22) {
			t.Fatalf("z[%d] = %g, CPU %g", off+i, got[i], want[i])
		}
	}
	r := rand.New(rand.NewPCG(1, 2))
	w0 := make([]float32, n)
	for i := range w0 {
		w0[i] = float32(r.NormFloat64())
	}
	if err := zb.WriteF32(0, w0); err != nil {
		t.Fatal(err)
	}
	if err := d.MezoApply(zb, mezo.TensorKey(seed, tensor), off, n, 1e-3, 1, cuda.MezoMask{}); err != nil {
		t.Fatal(err)
	}
	if err := zb.ReadF32(got, 0); err != nil {
		t.Fatal(err)
	}
	for i := range w0 {
		if want := w0[i] + 1e-3*want[i]; math.Abs(float64(got[i]-want)) > 1e-6 {
			t.Fatalf("perturbed w[%d] = %g, want %g", i, got[i], want)
		}
	}
}

// LoHO-intra's dense zeroth-order delta trained on the device: MeZO's
// update (two draws, weight decay on the first) with z cleared at the
// first-order mask gives the CPU's SPSA.Update over the same tensor, and
// leaves the mask's entries zero.
func TestGPUMezoMaskedUpdateIsTheCPUs(t *testing.T) {
	d := cuda.GPUForTest(t)
	const out, in = 37, 53
	dense, err := loho.NewDense("blk.0.attn_q.weight", out, in, 0.3, 11, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	key, ratio := dense.Mask()
	r := rand.New(rand.NewPCG(5, 6))
	masked := 0
	for i := range dense.Val {
		if loho.InMask(key, i, ratio) {
			masked++
		} else {
			dense.Val[i] = float32(r.NormFloat64()) * 1e-2
		}
	}
	w0 := append([]float32(nil), dense.Val...)
	s, err := mezo.New([]mezo.Tensor{{Name: "d", Data: dense.Val, Decay: true, Mask: dense.ZeroMasked}},
		mezo.Config{Epsilon: 1e-3, LR: 1e-2, WeightDecay: 0.1, N: 2, Seed: 9}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ds := []mezo.Draw{{Seed: mezo.DrawSeed(9, 3, 0), G: 1.7}, {Seed: mezo.DrawSeed(9, 3, 1), G: -0.4}}
	wb, err := d.Alloc(4 * out * in)
	if err != nil {
		t.Fatal(err)
	}
	defer wb.Free()
	if err := wb.WriteF32(0, w0); err != nil {
		t.Fatal(err)
	}
	s.Update(ds) // the CPU's, in dense.Val
	if err := s.UpdateWith(ds, func(seed uint64, c, a float64) error {
		return d.MezoApply(wb, mezo.TensorKey(seed, 0), 0, out*in, float32(c), float32(a), cuda.MezoMask{Key: key, Ratio: ratio})
	}); err != nil {
		t.Fatal(err)
	}
	got := make([]float32, out*in)
	if err := wb.ReadF32(got, 0); err != nil {
		t.Fatal(err)
	}
	moved := 0
	for i, want := range dense.Val {
		if loho.InMask(key, i, ratio) {
			if got[i] != 0 {
				t.Fatalf("entry %d is in the first-order mask and became %g", i, got[i])
			}
			continue
		}
		if math.Abs(float64(got[i]-want)) > 1e-7 {
			t.Fatalf("entry %d: %g on the device, %g on the CPU (was %g)", i, got[i], want, w0[i])
		}
		if want != w0[i] {
			moved++
		}
	}
	if masked < out*in/5 || masked > out*in*2/5 || moved < out*in/2 {
		t.Errorf("%d of %d entries masked (ratio 0.3), %d moved", masked, out*in, moved)
	}
}

// LoRA dropout's mask on the device is methods/lora's: Go's PCG stream
// (rand.New(rand.NewPCG(seed, id)).Uint32()) drawn per element, including
// chunks that start deep into the stream.
func TestGPUDropoutIsGoPCG(t *testing.T) {
	d := cuda.GPUForTest(t)
	const n = 70001
	const seed, id = 0x9e3779b97f4a7c15 ^ 12345, 7*16 + 3
	p := float32(0.1)
	keep := 1 / (1 - p)
	th := uint32(float64(p) * math.MaxUint32)
	r := rand.New(rand.NewPCG(3, 4))
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(r.NormFloat64())
	}
	want := make([]float32, n)
	g := rand.New(rand.NewPCG(seed, id))
	dropped := 0
	for i := range want {
		if g.Uint32() >= th {
			want[i] = x[i] * keep
		} else {
			dropped++
		}
	}
	xb, err := d.Alloc(4 * n)
	if err != nil {
		t.Fatal(err)
	}
	defer xb.Free()
	if err := xb.WriteF32(0, x); err != nil {
		t.Fatal(err)
	}
	if err := d.Dropout(xb, xb, n, seed, id, th, keep); err != nil { // in place
		t.Fatal(err)
	}
	got := make([]float32, n)
	if err := xb.ReadF32(got, 0); err != nil {
		t.Fatal(err)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("element %d: %g, want %g (%d of %d dropped on the CPU)", i, got[i], want[i], dropped, n)
		}
	}
	if dropped < n/20 || dropped > n/5 {
		t.Errorf("%d of %d dropped at p = 0.1", dropped, n)
	}
}
