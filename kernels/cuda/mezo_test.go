package cuda_test

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/qtune/qtune/kernels/cuda"
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
	if err := d.MezoPerturb(zb, mezo.TensorKey(seed, tensor), off, n, 1e-3); err != nil {
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
