package kernels

import "testing"

// Fuzz targets of the attention-side kernels, one per op: each runs every
// instruction-set level this machine has (so the fast paths against the
// generic loops) on a random length and seed, through the same checks and
// documented bounds as the table tests in ops_test.go.

func FuzzSoftmax(f *testing.F) {
	f.Add(uint16(1), uint64(1))
	f.Add(uint16(17), uint64(2))
	f.Add(uint16(513), uint64(3))
	f.Fuzz(func(t *testing.T, n uint16, seed uint64) { checkSoftmax(t, int(n%3000)+1, seed) })
}

func FuzzCrossEntropy(f *testing.F) {
	f.Add(uint16(1), uint64(1))
	f.Add(uint16(33), uint64(2))
	f.Add(uint16(1000), uint64(3))
	f.Fuzz(func(t *testing.T, n uint16, seed uint64) { checkCrossEntropy(t, int(n%3000)+1, seed) })
}

func FuzzRMSNorm(f *testing.F) {
	f.Add(uint16(1), uint64(1))
	f.Add(uint16(31), uint64(2))
	f.Add(uint16(288), uint64(3))
	f.Fuzz(func(t *testing.T, n uint16, seed uint64) { checkRMSNorm(t, int(n%3000)+1, seed) })
}

func FuzzSwiGLU(f *testing.F) {
	f.Add(uint16(1), uint64(1))
	f.Add(uint16(23), uint64(2))
	f.Add(uint16(768), uint64(3))
	f.Fuzz(func(t *testing.T, n uint16, seed uint64) { checkSwiGLU(t, int(n%3000)+1, seed) })
}

func FuzzRope(f *testing.F) {
	f.Add(uint16(1), uint64(1))
	f.Add(uint16(24), uint64(2))
	f.Add(uint16(33), uint64(3))
	f.Fuzz(func(t *testing.T, half uint16, seed uint64) { checkRope(t, int(half%100)+1, seed) })
}

func FuzzAttentionRows(f *testing.F) {
	f.Add(uint16(1), uint16(1), uint64(1))
	f.Add(uint16(7), uint16(48), uint64(2))
	f.Add(uint16(33), uint16(64), uint64(3))
	f.Add(uint16(5), uint16(8), uint64(4))
	f.Fuzz(func(t *testing.T, n, d uint16, seed uint64) { checkRows(t, int(n%80)+1, int(d%150)+1, seed) })
}

func FuzzAttention(f *testing.F) {
	f.Add(uint8(1), uint8(1), uint8(1), uint8(1), uint64(1))
	f.Add(uint8(70), uint8(4), uint8(2), uint8(16), uint64(2))
	f.Add(uint8(130), uint8(2), uint8(1), uint8(48), uint64(3))
	f.Fuzz(func(t *testing.T, tt, h, hkv, d uint8, seed uint64) {
		Hkv := int(hkv%4) + 1
		H := Hkv * (int(h%3) + 1)
		checkAttention(t, int(tt%150)+1, H, Hkv, int(d%70)+1, seed)
	})
}
