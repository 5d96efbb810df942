// Package comm is what data-parallel training needs from the processes it
// runs in: every rank's float32 buffers summed (the gradients), bytes
// broadcast from one rank and gathered from all, and a barrier. A single
// process is a group of one, where every call is a no-op; offload/mpi
// implements it over the system's MPI library, loaded at run time.
package comm

import (
	"errors"
	"fmt"
)

// Comm is a group of ranks that run the same program. Calls are
// collective: every rank makes the same calls, in the same order, with
// buffers of the same lengths. A Comm may be used by one goroutine at a
// time.
type Comm interface {
	Rank() int
	Size() int
	// LocalSize is how many of the group's ranks run on this machine, as
	// the launcher says (Size() when it does not say).
	LocalSize() int
	// LocalRank is this rank's place among those on this machine
	// (0..LocalSize()-1), as the launcher says (Rank() modulo LocalSize()
	// when it does not say).
	LocalRank() int
	// AllReduceSum replaces buf, on every rank, with the element-wise sum
	// of every rank's buf.
	AllReduceSum(buf []float32) error
	// StartAllReduceSum is AllReduceSum begun and not waited for: the
	// returned function waits for it (and must be called, once). buf must
	// not be touched until then. Started sums complete in the order they
	// were started, before any later call's; a backward pass starts each
	// block's sum as the block is done, so the sums overlap the blocks
	// below.
	StartAllReduceSum(buf []float32) (wait func() error)
	// AllReduceSum64 is AllReduceSum for float64 (losses, token counts).
	AllReduceSum64(buf []float64) error
	// Broadcast copies root's buf into every other rank's buf.
	Broadcast(buf []byte, root int) error
	// AllGather puts rank r's send at recv[r*len(send):], on every rank
	// (len(recv) = Size()*len(send)).
	AllGather(send, recv []byte) error
	Barrier() error
	// Close ends the rank's part in the group (MPI_Finalize).
	Close() error
	// Name says what carries the group ("single process", "Open MPI 4.1.4").
	Name() string
	// Footprint is the memory the group's library holds in this process
	// (its code, heap and shared memory), measured when it started, after
	// one all-reduce of BucketFloats values: a plan counts it.
	Footprint() int64
}

// BucketFloats bounds one collective: an AllReduceSum of more values is made
// in pieces of at most this many (1 MiB), so that what the library
// allocates for a message (Open MPI's ring all-reduce holds a copy of it) is
// bounded, and counted in Footprint.
const BucketFloats = 1 << 18

// ErrComm marks a failed collective (a rank gone, a timeout, the MPI
// library's error).
var ErrComm = errors.New("communication failed")

// Single is the group of one process.
func Single() Comm { return single{} }

type single struct{}

func (single) Rank() int                      { return 0 }
func (single) Size() int                      { return 1 }
func (single) LocalSize() int                 { return 1 }
func (single) LocalRank() int                 { return 0 }
func (single) AllReduceSum([]float32) error   { return nil }
func (single) AllReduceSum64([]float64) error { return nil }
func (single) StartAllReduceSum([]float32) func() error {
	return func() error { return nil }
}
func (single) Barrier() error   { return nil }
func (single) Footprint() int64 { return 0 }
func (single) Close() error     { return nil }
func (single) Name() string     { return "single process" }
func (single) Broadcast(_ []byte, root int) error {
	if root != 0 {
		return fmt.Errorf("comm: broadcast from rank %d of 1: %w", root, ErrComm)
	}
	return nil
}

func (single) AllGather(send, recv []byte) error {
	if len(recv) != len(send) {
		return fmt.Errorf("comm: all-gather of %d bytes into %d: %w", len(send), len(recv), ErrComm)
	}
	copy(recv, send)
	return nil
}
