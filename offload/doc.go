// Package offload decides where weights live. Today that is the read-only
// Store: model files memory-mapped with golang.org/x/exp/mmap, whose bytes
// the format readers slice into tensor views without copying. The kernel
// pages weights in on first touch and may drop them under pressure, so a
// model larger than RAM still runs.
//
// Not here: parsing (format/), math (kernels/), or the budget itself
// (budget/). The per-layer placement (device, host, disk) and streaming
// arrive with the memory-budget work; the Store is the seam they build on.
//
// Trade-off: x/exp/mmap exposes an io.ReaderAt, not the mapped slice. The
// slice is recovered once at Open (the ReaderAt's only field), and verified
// against At/Len so a layout change in that package fails loudly instead of
// silently reading garbage.
package offload
