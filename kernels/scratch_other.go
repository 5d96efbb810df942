//go:build !unix

package kernels

// Without mmap (Windows, wasm) scratch blocks are heap memory, still kept
// and counted by the arena.
func mapFloats(c int) []byte { return make([]byte, 4*c) }

func unmapFloats([]byte) {}
