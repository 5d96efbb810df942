//go:build (!amd64 && !arm64) || noasm

package kernels

func detectLevel() level { return levelGeneric }

func kernelFor(level) microKernel { return microKernel{} }

func dotF32Fast(x, w []float32) float32 { return Dot(x, w) }

func fusedRowDot(*Matrix, int, []float32) (float32, bool) { return 0, false }
