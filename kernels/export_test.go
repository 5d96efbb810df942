package kernels

import (
	"encoding/binary"
	"math/rand/v2"

	"github.com/qtune/qtune/quant"
)

// RandBlocks fills b with random blocks of typ for a type quant cannot
// quantize: random bytes whose f16 super-block scales are set to small
// normal values (0.01, and 0.005 for a min), so decoded weights are finite
// and of the size of quantized gaussian weights.
func RandBlocks(b []byte, typ quant.Type, r *rand.Rand) {
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	var ts int
	var scales []int
	switch typ {
	case quant.IQ4_XS:
		ts, scales = 136, []int{0}
	case quant.Q2_K:
		ts, scales = 84, []int{80, 82}
	case quant.Q3_K:
		ts, scales = 110, []int{108}
	default:
		panic("kernels: RandBlocks: no layout for " + typ.String())
	}
	for blk := 0; blk+ts <= len(b); blk += ts {
		for i, off := range scales {
			binary.LittleEndian.PutUint16(b[blk+off:], quant.F32ToF16(0.01/float32(i+1)))
		}
	}
}

// SetISA lowers the instruction-set level for the benchmark table
// (kbench_ops_test.go), which measures generic and fast paths in one run.
// It returns a function that restores the previous level.
func SetISA(name string) (restore func()) {
	l := levelGeneric
	for _, c := range []level{levelAVX2, levelAVX512} {
		if c.String() == name {
			l = c
		}
	}
	old := setLevel(l)
	return func() { setLevel(old) }
}
