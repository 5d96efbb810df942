package quant

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// ErrBadScale marks a block whose scale is NaN or infinite: the weights it
// scales would poison every activation they touch.
var ErrBadScale = errors.New("non-finite block scale")

// scaleFields lists, per block type, the byte offsets of its f16 scales
// (d, dmin, m, s) within one block.
var scaleFields = map[Type][]int{
	Q4_0: {0}, Q4_1: {0, 2}, Q5_0: {0}, Q5_1: {0, 2}, Q8_0: {0}, Q8_1: {0, 2},
	Q2_K: {80, 82}, Q3_K: {108}, Q4_K: {0, 2}, Q5_K: {0, 2}, Q6_K: {208}, IQ4_NL: {0},
}

// CheckScales scans the scales of a tensor of n elements stored as t and
// reports the first non-finite one (wrapping ErrBadScale). Float tensors and
// types without scales pass. It reads only the scale bytes.
func CheckScales(t Type, data []byte, n int64) error {
	want, err := Bytes(t, n)
	if err != nil {
		return err
	}
	if int64(len(data)) != want {
		return fmt.Errorf("quant: %s: %d bytes for %d elements, want %d", t, len(data), n, want)
	}
	switch t {
	case NF4:
		l := nf4LayoutOf(n)
		for g := int64(0); g <= l.groups; g++ { // the groups' c2, then μ
			v := math.Float32frombits(binary.LittleEndian.Uint32(data[l.c2+4*g:]))
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				what := fmt.Sprintf("group %d scale", g)
				if g == l.groups {
					what = "mean absmax"
				}
				return fmt.Errorf("quant: NF4 %s is %v: %w", what, v, ErrBadScale)
			}
		}
		return nil
	case MXFP4:
		for b := int64(0); b < int64(len(data)); b += 17 {
			if data[b] == 0xff {
				return fmt.Errorf("quant: MXFP4 block %d: NaN exponent: %w", b/17, ErrBadScale)
			}
		}
		return nil
	}
	fields, ok := scaleFields[t]
	if !ok {
		return nil
	}
	in := table[t]
	for b, off := int64(0), int64(0); off < int64(len(data)); b, off = b+1, off+int64(in.TypeSize) {
		for _, f := range fields {
			h := binary.LittleEndian.Uint16(data[off+int64(f):])
			if h&0x7c00 == 0x7c00 {
				return fmt.Errorf("quant: %s block %d: scale is %v: %w", t, b, F16ToF32(h), ErrBadScale)
			}
		}
	}
	return nil
}
