package quant

import (
	"errors"
	"math"
	"strings"
	"testing"
)

// dequantTypes is every type Dequantize supports.
var dequantTypes = []Type{F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, MXFP4, NF4, IQ4_XS}

func wantErr(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: no error", what)
		return
	}
	if !strings.HasPrefix(err.Error(), "quant: ") {
		t.Errorf("%s: error %q lacks the quant: prefix", what, err)
	}
}

func TestDequantizeBadLengths(t *testing.T) {
	for _, typ := range dequantTypes {
		in, _ := Lookup(typ)
		bs := int64(in.BlockSize)
		n := 4 * bs
		size, _ := Bytes(typ, n)
		data := make([]byte, size)
		dst := make([]float32, n)
		if err := Dequantize(typ, dst, data); err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
		wantErr(t, typ.String()+" short src", Dequantize(typ, dst, data[:size-1]))
		wantErr(t, typ.String()+" long src", Dequantize(typ, dst, append(data, 0)))
		wantErr(t, typ.String()+" nil src", Dequantize(typ, dst, nil))
		if bs > 1 {
			wantErr(t, typ.String()+" partial block", Dequantize(typ, dst[:n-1], data))
			wantErr(t, typ.String()+" misaligned off", DequantizeRange(typ, dst[:bs], data, n, 1))
			wantErr(t, typ.String()+" misaligned len", DequantizeRange(typ, dst[:bs+1], data, n, 0))
			wantErr(t, typ.String()+" n not whole blocks", DequantizeRange(typ, dst[:bs], data, n-1, 0))
		}
		wantErr(t, typ.String()+" negative off", DequantizeRange(typ, dst[:bs], data, n, -bs))
		wantErr(t, typ.String()+" off past end", DequantizeRange(typ, dst[:bs], data, n, n))
		wantErr(t, typ.String()+" range past end", DequantizeRange(typ, dst, data, n, bs))
		wantErr(t, typ.String()+" negative n", DequantizeRange(typ, nil, data, -n, 0))
		wantErr(t, typ.String()+" wrong n", DequantizeRange(typ, dst[:bs], data, 2*n, 0))
		wantErr(t, typ.String()+" huge n", DequantizeRange(typ, dst[:bs], data, math.MaxInt64/bs*bs, 0))
		if err := DequantizeRange(typ, nil, data, n, n); err != nil {
			t.Errorf("%s: empty range at the end: %v", typ, err)
		}
	}
}

func TestUnsupportedTypes(t *testing.T) {
	dst := make([]float32, 256)
	for _, typ := range []Type{Q8_K, I8, I16, I32, I64, F64} {
		err := Dequantize(typ, dst, make([]byte, 292))
		wantErr(t, typ.String(), err)
		if !errors.Is(err, ErrUnsupported) {
			t.Errorf("%s: %v does not wrap ErrUnsupported", typ, err)
		}
		if CanQuantize(typ) {
			t.Errorf("CanQuantize(%s)", typ)
		}
	}
	if err := Dequantize(Q8_K, dst, make([]byte, 292)); err == nil || !strings.Contains(err.Error(), "dequantize Q8_K not supported") {
		t.Errorf("Q8_K: %v", err)
	}
	for _, typ := range []Type{Q8_K} {
		err := Quantize(typ, make([]byte, 292), dst)
		if !errors.Is(err, ErrUnsupported) {
			t.Errorf("Quantize(%s): %v", typ, err)
		}
	}
	for _, typ := range []Type{43, 999, NF4 + 1} {
		if err := Dequantize(typ, dst, nil); !errors.Is(err, ErrUnknownType) {
			t.Errorf("Dequantize(%d): %v", typ, err)
		}
		if err := Quantize(typ, nil, dst); !errors.Is(err, ErrUnknownType) {
			t.Errorf("Quantize(%d): %v", typ, err)
		}
	}
}

// TestRefusedTypesByName: the ggml types qtune does not read (the IQ1, IQ2
// and IQ3 codebook formats among them) are refused by name, listing what is
// supported, in every entry point that takes a type.
func TestRefusedTypesByName(t *testing.T) {
	cases := map[Type]string{
		16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 21: "IQ3_S", 22: "IQ2_S", 29: "IQ1_M",
		34: "TQ1_0", 35: "TQ2_0", 40: "NVFP4", 5: "Q4_3",
	}
	for typ, name := range cases {
		want := "quant: tensor type " + name + " is not supported (supported: F32, F16, Q4_0, "
		_, err := Lookup(typ)
		if err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("Lookup(%d) = %v, want %q…", typ, err, want)
			continue
		}
		if !errors.Is(err, ErrUnsupported) || errors.Is(err, ErrUnknownType) {
			t.Errorf("Lookup(%s): %v should wrap ErrUnsupported only", name, err)
		}
		for _, s := range []string{"IQ4_XS", "IQ4_NL", "Q2_K", "BF16", "NF4"} {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("Lookup(%s): supported list lacks %s: %v", name, s, err)
			}
		}
		if strings.Contains(err.Error(), "Q8_K") || strings.Contains(err.Error(), "I32") {
			t.Errorf("Lookup(%s): lists a type no weight can have: %v", name, err)
		}
		if typ.String() != name || typ.Known() {
			t.Errorf("%d: String %q, Known %v", typ, typ, typ.Known())
		}
		if _, err := ParseType(strings.ToLower(name)); err == nil || !strings.Contains(err.Error(), name+" is not supported") {
			t.Errorf("ParseType(%s): %v", name, err)
		}
		dst := make([]float32, 256)
		if err := Dequantize(typ, dst, make([]byte, 256)); !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), name) {
			t.Errorf("Dequantize(%s): %v", name, err)
		}
		if err := Quantize(typ, make([]byte, 256), dst); !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), name) {
			t.Errorf("Quantize(%s): %v", name, err)
		}
		if _, err := Bytes(typ, 256); !errors.Is(err, ErrUnsupported) {
			t.Errorf("Bytes(%s): %v", name, err)
		}
	}
}

func TestQuantizeBadLengths(t *testing.T) {
	for _, typ := range dequantTypes {
		if !CanQuantize(typ) {
			continue
		}
		in, _ := Lookup(typ)
		n := 2 * in.BlockSize
		size, _ := Bytes(typ, int64(n))
		src := make([]float32, n)
		wantErr(t, typ.String()+" short dst", Quantize(typ, make([]byte, size-1), src))
		wantErr(t, typ.String()+" long dst", Quantize(typ, make([]byte, size+1), src))
		if in.BlockSize > 1 {
			wantErr(t, typ.String()+" partial block", Quantize(typ, make([]byte, size), src[:n-1]))
		}
	}
}

// TestNonFiniteScales: f16 scales that are Inf or NaN decode as IEEE (and
// ggml) arithmetic says, never panic.
func TestNonFiniteScales(t *testing.T) {
	blk := make([]byte, 34)
	blk[0], blk[1] = 0x00, 0x7c // +Inf
	blk[2], blk[3], blk[4] = 1, 0, 0xff
	y := make([]float32, 32)
	if err := Dequantize(Q8_0, y, blk); err != nil {
		t.Fatal(err)
	}
	if !math.IsInf(float64(y[0]), 1) || !math.IsNaN(float64(y[1])) || !math.IsInf(float64(y[2]), -1) {
		t.Errorf("Inf scale: %v %v %v, want +Inf NaN -Inf", y[0], y[1], y[2])
	}
	// Every type decodes all-0xff blocks (NaN scales in most) without panic.
	for _, typ := range dequantTypes {
		in, _ := Lookup(typ)
		n := int64(in.BlockSize)
		size, _ := Bytes(typ, n)
		data := make([]byte, size)
		for i := range data {
			data[i] = 0xff
		}
		if err := Dequantize(typ, make([]float32, n), data); err != nil {
			t.Errorf("%s: %v", typ, err)
		}
	}
}

// TestQuantizeNonFinite: ggml's quantizers take NaN, Inf and huge values
// without panicking (their bytes are whatever ggml's C would give); NF4
// rejects them.
func TestQuantizeNonFinite(t *testing.T) {
	x := gaussian(512, 9)
	x[1], x[40], x[300] = float32(math.NaN()), float32(math.Inf(1)), -3e38
	for _, typ := range dequantTypes {
		if !CanQuantize(typ) {
			continue
		}
		size, _ := Bytes(typ, int64(len(x)))
		err := Quantize(typ, make([]byte, size), x)
		if (err != nil) != (typ == NF4) {
			t.Errorf("%s: %v", typ, err)
		}
	}
}

// TestQuantizeDegenerate: whole super-blocks of zeros, NaN, ±Inf, one
// huge value, or subnormals quantize without panicking, and an all-zero
// input gives blocks that decode to zeros.
func TestQuantizeDegenerate(t *testing.T) {
	nan, inf := float32(math.NaN()), float32(math.Inf(1))
	fill := func(v float32) []float32 {
		x := make([]float32, 512)
		for i := range x {
			x[i] = v
		}
		return x
	}
	spike := make([]float32, 512)
	spike[17] = 3e38
	inputs := map[string][]float32{"zero": fill(0), "NaN": fill(nan), "+Inf": fill(inf), "-Inf": fill(-inf),
		"subnormal": fill(1e-42), "spike": spike}
	for _, typ := range dequantTypes {
		if !CanQuantize(typ) {
			continue
		}
		for name, x := range inputs {
			size, _ := Bytes(typ, int64(len(x)))
			b := make([]byte, size)
			err := Quantize(typ, b, x)
			if typ == NF4 && name != "zero" && name != "subnormal" && name != "spike" {
				continue // NF4 rejects non-finite input (TestQuantizeNonFinite)
			}
			if err != nil {
				t.Errorf("%s %s: %v", typ, name, err)
				continue
			}
			y := make([]float32, len(x))
			if err := Dequantize(typ, y, b); err != nil {
				t.Errorf("%s %s: dequantize: %v", typ, name, err)
			}
			if name == "zero" {
				for i, v := range y {
					if v != 0 {
						t.Errorf("%s: zero input decodes to %g at %d", typ, v, i)
						break
					}
				}
			}
		}
	}
}

func TestRMSE(t *testing.T) {
	if got := RMSE([]float32{1, 2, 3}, []float32{1, 2, 7}); math.Abs(got-4/math.Sqrt(3)) > 1e-15 {
		t.Errorf("RMSE = %v", got)
	}
	if got := RMSE(nil, nil); got != 0 {
		t.Errorf("empty RMSE = %v", got)
	}
	if got := RMSE([]float32{1}, nil); !math.IsNaN(got) {
		t.Errorf("mismatched RMSE = %v", got)
	}
}

// TestRoundTripBounds: every quantizer's round trip on gaussian data stays
// within an RMSE bound (σ = 1; the design's "round-trip bound for every
// codec"), about 1.2x the measured value.
func TestRoundTripBounds(t *testing.T) {
	bounds := map[Type]float64{ // measured ×~1.2; measured values in the comments
		F32: 0, F16: 2.6e-4 /* 2.16e-4 */, BF16: 2.1e-3 /* 1.72e-3 */, Q8_0: 6.6e-3 /* 5.46e-3 */, Q8_1: 6.6e-3,
		Q6_K: 0.022 /* 0.0180 */, Q5_K: 0.045 /* 0.0372 */, Q5_1: 0.046 /* 0.0386 */, Q5_0: 0.052, /* 0.0434 */
		Q4_K: 0.087 /* 0.0723 */, Q4_1: 0.096 /* 0.0799 */, Q4_0: 0.105 /* 0.0876 */, IQ4_NL: 0.093, /* 0.0777 */
		MXFP4: 0.137 /* 0.1139 */, NF4: 0.1, /* 0.0924 */
		Q3_K: 0.19 /* 0.1564 */, Q2_K: 0.36 /* 0.2973 */, IQ4_XS: 0.094, /* 0.0783 */
	}
	x := gaussian(4096, 21)
	for _, typ := range dequantTypes {
		if !CanQuantize(typ) {
			continue
		}
		bound, ok := bounds[typ]
		if !ok {
			t.Errorf("%s: no bound", typ)
			continue
		}
		size, _ := Bytes(typ, int64(len(x)))
		q := make([]byte, size)
		if err := Quantize(typ, q, x); err != nil {
			t.Fatal(err)
		}
		y := make([]float32, len(x))
		if err := Dequantize(typ, y, q); err != nil {
			t.Fatal(err)
		}
		if r := RMSE(x, y); r > bound {
			t.Errorf("%s: round-trip RMSE %.5gσ above %.5g", typ, r, bound)
		} else {
			t.Logf("%-6s RMSE %.5gσ", typ, r)
		}
	}
}
