//go:build !unix

package budget

// Without mmap (Windows, wasm) slabs are heap memory: still booked, freed
// to the collector.
func mapAnon(n int) ([]byte, error) { return make([]byte, n), nil }

func unmap([]byte) {}
