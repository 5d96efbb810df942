//go:build !unix

package budget

// Without mmap (Windows, wasm) slabs are heap memory: still booked, freed
// to the collector.
func MapAnon(n int) ([]byte, error) { return make([]byte, n), nil }

func Unmap([]byte) {}
