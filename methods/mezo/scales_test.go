package mezo

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/qtune/qtune/kernels"
	"github.com/qtune/qtune/model"
	"github.com/qtune/qtune/quant"
)

// qmatrix quantizes a random (rows, cols) matrix to typ.
func qmatrix(t *testing.T, typ quant.Type, rows, cols int, r *rand.Rand) kernels.Matrix {
	f := make([]float32, rows*cols)
	for i := range f {
		f[i] = float32(r.NormFloat64())
	}
	n, err := quant.Bytes(typ, int64(len(f)))
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, n)
	if err := quant.Quantize(typ, b, f); err != nil {
		t.Fatal(err)
	}
	return kernels.Matrix{Type: typ, Rows: rows, Cols: cols, Data: b}
}

// TestScalesAdapter: the adapter's output is x·(R∘W)ᵀ with R broadcast over
// each file block, and its backward matches
// central finite differences for R and x.
func TestScalesAdapter(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, typ := range []quant.Type{quant.Q8_0, quant.Q4_0, quant.NF4} {
		const rows, cols, M = 4, 128, 3
		w := qmatrix(t, typ, rows, cols, r)
		s, err := NewScales("w", w, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		for i := range s.R {
			s.R[i] = float32(r.NormFloat64() * 0.1)
		}
		x := make([]float32, M*cols)
		dy := make([]float32, M*rows)
		for i := range x {
			x[i] = float32(r.NormFloat64())
		}
		for i := range dy {
			dy[i] = float32(r.NormFloat64())
		}
		dense := make([]float32, rows*cols)
		quant.Dequantize(typ, dense, w.Data)
		y := make([]float32, M*rows)
		s.Forward(y, x, M)
		for m := 0; m < M; m++ {
			for o := 0; o < rows; o++ {
				var ref float64
				for j := 0; j < cols; j++ {
					ref += float64(x[m*cols+j]) * float64(dense[o*cols+j]) * float64(s.R[(o*cols+j)/s.Block])
				}
				if d := math.Abs(ref - float64(y[m*rows+o])); d > 1e-4*(1+math.Abs(ref)) {
					t.Fatalf("%s: y[%d,%d] = %v, reference %v", typ, m, o, y[m*rows+o], ref)
				}
			}
		}
		f := func() float64 { // Σ dy·y
			y := make([]float32, M*rows)
			s.Forward(y, x, M)
			var v float64
			for i := range y {
				v += float64(dy[i]) * float64(y[i])
			}
			return v
		}
		s.GR = make([]float32, len(s.R))
		dx := make([]float32, len(x))
		s.Backward(dx, dy, x, M)
		const h = 1e-2 // f is linear in R and in x: the difference is exact but for rounding
		check := func(name string, p []float32, g []float32) {
			for i := range p {
				old := p[i]
				p[i] = old + h
				fp := f()
				p[i] = old - h
				fm := f()
				p[i] = old
				num := (fp - fm) / (2 * h)
				if math.Abs(num-float64(g[i])) > 2e-3*(1+math.Abs(num)) {
					t.Fatalf("%s: d%s[%d] = %v, finite difference %v", typ, name, i, g[i], num)
				}
			}
		}
		check("R", s.R, s.GR)
		check("x", x, dx)
	}
	if _, err := NewScales("f", kernels.Matrix{Type: quant.F32, Rows: 1, Cols: 4, Data: make([]byte, 16)}, nil, nil); err == nil {
		t.Fatal("an F32 matrix got block scales")
	}
}

// TestScalesMeZOLowersLoss: QZO (MeZO on block scales, codes fixed) on an
// NF4 stories260K lowers the loss of a fixed batch.
func TestScalesMeZOLowersLoss(t *testing.T) {
	m := quantized(t, quant.NF4)
	ss, ad, err := NewScaleSet(m, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	var ts []Tensor
	for _, s := range ss {
		ts = append(ts, Tensor{Name: s.Target, Data: s.R})
	}
	s, err := New(ts, Config{Epsilon: 1e-3, LR: 1e-2, N: 1, Seed: 1}, m.Pool())
	if err != nil {
		t.Fatal(err)
	}
	loss := repeatLoss(m, model.StepOptions{Adapters: ad})
	l0, _ := loss()
	for k := 1; k <= 40; k++ {
		if _, err := s.Step(k, loss); err != nil {
			t.Fatal(err)
		}
	}
	l1, _ := loss()
	t.Logf("%d scales in %d matrices: loss %.4f -> %.4f", s.Params(), len(ss), l0, l1)
	if !(l1 < 0.9*l0) {
		t.Fatalf("loss %.4f -> %.4f", l0, l1)
	}
	if _, _, err := NewScaleSet(openStories(t), 0, nil); err == nil {
		t.Fatal("scales on an F32 base did not fail")
	}
}
