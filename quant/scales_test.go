package quant

import (
	"errors"
	"math"
	"testing"
)

func TestCheckScales(t *testing.T) {
	src := make([]float32, 1024)
	for i := range src {
		src[i] = float32(math.Sin(float64(i)))
	}
	for _, typ := range []Type{Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, IQ4_NL, MXFP4, NF4, F16} {
		size, _ := Bytes(typ, 1024)
		b := make([]byte, size)
		if err := Quantize(typ, b, src); err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
		if err := CheckScales(typ, b, 1024); err != nil {
			t.Fatalf("%s: clean tensor rejected: %v", typ, err)
		}
		bad := append([]byte(nil), b...)
		switch typ {
		case F16:
			continue // no scales
		case NF4:
			l := nf4LayoutOf(1024)
			copy(bad[l.mu:], []byte{0, 0, 0xc0, 0x7f}) // NaN mean
		case MXFP4:
			bad[17] = 0xff
		default:
			in, _ := Lookup(typ)
			f := scaleFields[typ][0]
			bad[in.TypeSize+f], bad[in.TypeSize+f+1] = 0x00, 0x7e // NaN in block 1
		}
		if err := CheckScales(typ, bad, 1024); !errors.Is(err, ErrBadScale) {
			t.Errorf("%s: NaN scale not reported (%v)", typ, err)
		}
	}
	if err := CheckScales(Q8_0, make([]byte, 10), 32); err == nil {
		t.Fatal("short data accepted")
	}
}
