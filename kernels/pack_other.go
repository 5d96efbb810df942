//go:build !amd64 || noasm

package kernels

// transposeFast has no fast routine here: transposeRows does all the work.
func transposeFast(pan, src []float32, ld, kc, nn, nr int) (g, kd int) { return 0, 0 }

// copyFast has no fast routine here: copyPanel does the work.
func copyFast(pan, src []float32, ld, kc, n, nr int) bool { return false }

// prefetchTile is a hint only; without assembly it does nothing.
func prefetchTile(c *float32, ldc, mr, nr int) {}
