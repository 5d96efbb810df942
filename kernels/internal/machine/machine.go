// Package machine measures this machine's own limits for the kernel
// benchmarks: the float32 FMA peak (an assembly loop of independent FMAs on
// every core) and the memory bandwidth (a parallel stream copy). It is used
// by kernels/cmd/kbench only; the kernels never depend on it.
package machine

import (
	"runtime"
	"sync"
	"time"
	"unsafe"
)

// FMAPeak returns the best of tries measurements of float32 GFLOP/s with
// one FMA loop per core (GOMAXPROCS goroutines), and the ISA it used; 0 when
// there is no assembly loop on this platform.
func FMAPeak(tries int) (gflops float64, isa string) {
	loop, flopsPerIter, isa := fmaLoop()
	if loop == nil {
		return 0, "generic"
	}
	const iters = 4_000_000
	w := runtime.GOMAXPROCS(0)
	for t := 0; t < tries; t++ {
		var wg sync.WaitGroup
		start := time.Now()
		for i := 0; i < w; i++ {
			wg.Add(1)
			go func() { defer wg.Done(); loop(iters) }()
		}
		wg.Wait()
		g := float64(w) * iters * flopsPerIter / time.Since(start).Seconds() / 1e9
		gflops = max(gflops, g)
	}
	return gflops, isa
}

// StreamCopy returns the best of tries measurements of memory bandwidth in
// GB/s (bytes read + bytes written) copying a buffer of mib MiB (much larger
// than the last-level cache) in GOMAXPROCS parallel slices.
func StreamCopy(mib, tries int) float64 {
	n := mib << 20
	src, dst := make([]byte, n), make([]byte, n)
	for i := range src {
		src[i] = byte(i)
	}
	copy(dst, src) // fault the pages in
	copyPart := func(lo, hi int) { copy(dst[lo:hi], src[lo:hi]) }
	w := runtime.GOMAXPROCS(0)
	var best float64
	for t := 0; t < tries; t++ {
		var wg sync.WaitGroup
		start := time.Now()
		for i := 0; i < w; i++ {
			lo, hi := n*i/w, n*(i+1)/w
			wg.Add(1)
			go func() { defer wg.Done(); copyPart(lo, hi) }()
		}
		wg.Wait()
		best = max(best, 2*float64(n)/time.Since(start).Seconds()/1e9)
	}
	return best
}

// StreamRead returns the best of tries measurements of read bandwidth in GB/s
// (bytes read), folding a buffer of mib MiB in GOMAXPROCS parallel slices
// with vector loads: the bound of a matrix-vector product, which only reads
// its matrix.
func StreamRead(mib, tries int) float64 {
	n := mib << 20
	buf := make([]byte, n)
	for i := range buf {
		buf[i] = byte(i)
	}
	read := readLoop()
	if read == nil {
		read = func(b []byte) uint64 {
			w := unsafe.Slice((*uint64)(unsafe.Pointer(&b[0])), len(b)/8)
			var s0, s1, s2, s3 uint64
			for i := 0; i+4 <= len(w); i += 4 {
				s0 ^= w[i]
				s1 ^= w[i+1]
				s2 ^= w[i+2]
				s3 ^= w[i+3]
			}
			return s0 ^ s1 ^ s2 ^ s3
		}
	}
	w := runtime.GOMAXPROCS(0)
	var best float64
	sums := make([]uint64, w)
	for t := 0; t < tries; t++ {
		var wg sync.WaitGroup
		start := time.Now()
		for i := 0; i < w; i++ {
			lo, hi := n*i/w&^127, n*(i+1)/w&^127
			wg.Add(1)
			go func() { defer wg.Done(); sums[i] ^= read(buf[lo:hi]) }()
		}
		wg.Wait()
		best = max(best, float64(n)/time.Since(start).Seconds()/1e9)
	}
	return best
}
