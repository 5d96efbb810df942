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
