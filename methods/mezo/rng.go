package mezo

import "math"

// The perturbation z is a function of (seed, tensor index, element index)
// only: a counter-based generator, so z is regenerated instead of stored,
// in any order and in parallel chunks, bit-identically on one platform.
//
// Reference (element i of tensor t under seed s):
//
//	k    = mix(s ^ mix(t+1))          // per-tensor key
//	a    = mix(k + (i/2)·γ)           // two 64-bit words per pair of elements
//	b    = mix(a ^ γ)
//	u1   = (a>>11 + 1)·2⁻⁵³ ∈ (0, 1]  // never 0, so log(u1) is finite
//	u2   = (b>>11)·2⁻⁵³     ∈ [0, 1)
//	r    = √(−2 ln u1)
//	z[i] = r·cos(2π u2) if i is even, r·sin(2π u2) if odd   // Box–Muller
//
// mix is splitmix64's finalizer and γ its increment (the golden ratio).

const gamma = 0x9e3779b97f4a7c15

// mix is splitmix64's output function.
func mix(z uint64) uint64 {
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}

// tensorKey is the per-tensor key of seed s.
func tensorKey(s uint64, t int) uint64 { return mix(s ^ mix(uint64(t)+1)) }

// TensorKey is the key of tensor t under seed s: what a device that
// regenerates z (kernels/cuda's MezoNormal) is given.
func TensorKey(s uint64, t int) uint64 { return tensorKey(s, t) }

// pair returns the two normals of pair j under key k.
func pair(k uint64, j int) (float64, float64) {
	a := mix(k + uint64(j)*gamma)
	b := mix(a ^ gamma)
	u1 := float64(a>>11+1) * (1.0 / (1 << 53))
	u2 := float64(b>>11) * (1.0 / (1 << 53))
	r := math.Sqrt(-2 * math.Log(u1))
	s, c := math.Sincos(2 * math.Pi * u2)
	return r * c, r * s
}

// Normal writes z[off : off+len(dst)] of tensor t under seed s into dst:
// standard normal values that depend on (s, t, element index) only.
func Normal(dst []float32, s uint64, t, off int) {
	k := tensorKey(s, t)
	i := 0
	if off%2 == 1 && len(dst) > 0 {
		_, z1 := pair(k, off/2)
		dst[0] = float32(z1)
		i = 1
	}
	for ; i+1 < len(dst); i += 2 {
		z0, z1 := pair(k, (off+i)/2)
		dst[i], dst[i+1] = float32(z0), float32(z1)
	}
	if i < len(dst) {
		z0, _ := pair(k, (off+i)/2)
		dst[i] = float32(z0)
	}
}

// DrawSeed is the seed of draw i (0-based) of optimizer step (1-based) under
// the run's seed: a pure function, so a resumed run redraws the same z.
func DrawSeed(run uint64, step, i int) uint64 {
	return mix(mix(run^0x6d657a6f) + uint64(step)*gamma + uint64(i)*0xd1b54a32d192ed03)
}
