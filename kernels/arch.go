package kernels

// level is an instruction-set tier; the fast paths are chosen once from the
// CPU's features (detectLevel) and can be lowered by tests (setLevel).
type level int

const (
	levelGeneric level = iota // plain Go: the reference loops
	levelAVX2                 // amd64 AVX2 + FMA
	levelAVX512               // amd64 AVX-512 F/BW/VL
	levelNEON                 // arm64 Advanced SIMD (the only tier there)
)

func (l level) String() string {
	switch l {
	case levelAVX2:
		return "avx2"
	case levelAVX512:
		return "avx512"
	case levelNEON:
		return "neon"
	}
	return "generic"
}

// microKernel computes one MR×NR tile of C from packed panels:
//
//	for i < mr { for j < nr {
//		var s float32                       // one FMA chain, k ascending
//		for k := 0; k < kc; k++ { s = fma(a[k*mr+i], b[k*nr+j], s) }
//		if accum != 0 { c[i*ldc+j] += s } else { c[i*ldc+j] = s }
//	}}
type microKernel struct {
	mr, nr int
	fn     func(k int, a, b, c *float32, ldc int, accum int)
}

var (
	maxLevel = detectLevel()
	curLevel = maxLevel
	kern     = kernelFor(maxLevel)
)

// setLevel lowers (or restores) the instruction-set tier; tests use it to
// run every variant on one machine. It returns the previous level and must
// not be called while kernels run.
func setLevel(l level) level {
	old := curLevel
	if l > maxLevel {
		l = maxLevel
	}
	curLevel = l
	kern = kernelFor(l)
	return old
}

// ISA names the instruction set the kernels use on this machine: "avx512",
// "avx2", "neon" or "generic".
func ISA() string { return curLevel.String() }
