package kernels

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
