// Package mpi is comm.Comm over the system's MPI library, opened at run
// time with purego (no cgo): Open MPI's libmpi.so.40, whose handles are the
// addresses of exported objects (ompi_mpi_comm_world, ompi_mpi_float,
// ompi_mpi_op_sum), MPICH's libmpi.so.12, whose handles are integers
// fixed by its mpi.h, or a library of the MPI 5.0 standard ABI
// (libmpi_abi.so: small constant handles, exports MPI_Abi_get_version);
// which one is read from the library's symbols.
//
// MPI wants its calls from one thread (MPI_THREAD_FUNNELED): one goroutine,
// locked to its OS thread, makes every call; the others hand it theirs.
// MPI has no timeouts, so a collective that does not complete within the
// group's timeout (a rank killed, a network gone) returns an error wrapping
// comm.ErrComm while the call stays blocked: the group is then unusable,
// and the process should report and exit.
package mpi

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/qtune/qtune/budget"
	"github.com/qtune/qtune/offload/comm"
)

// Libraries are tried in this order after $QTUNE_MPI_LIB: Open MPI's, then
// MPICH's (Debian names it libmpich.so.12), then whatever libmpi.so is, then
// the MPI 5.0 standard ABI's libmpi_abi.so; a process that MPICH's launcher
// started (PMI_SIZE without Open MPI's variables) tries MPICH's first, so
// that with both installed each launcher gets its own library.
var Libraries = []string{"libmpi.so.40", "libmpi.so.12", "libmpich.so.12", "libmpi.so", "libmpi_abi.so.0", "libmpi_abi.so"}

func libraries() []string {
	if p := os.Getenv("QTUNE_MPI_LIB"); p != "" {
		return []string{p}
	}
	if os.Getenv("OMPI_COMM_WORLD_SIZE") == "" && os.Getenv("PMI_SIZE") != "" {
		return []string{"libmpi.so.12", "libmpich.so.12", "libmpi.so.40", "libmpi.so", "libmpi_abi.so.0", "libmpi_abi.so"}
	}
	return Libraries
}

// ErrNoMPI says that no MPI library could be loaded.
var ErrNoMPI = errors.New("no MPI library")

// Launched reports whether a launcher (mpirun, mpiexec, srun with PMI)
// started this process as one of several ranks: Open MPI's
// OMPI_COMM_WORLD_SIZE, PMI's PMI_SIZE (MPICH's Hydra, Slurm), PMIx's.
func Launched() bool {
	_, ok := envInt(func(n int) bool { return n > 1 }, "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")
	return ok
}

// LaunchedRank is this process's rank as its launcher set it (Open MPI's
// OMPI_COMM_WORLD_RANK, PMI's PMI_RANK, PMIx's PMIX_RANK), when Launched.
func LaunchedRank() (int, bool) {
	if !Launched() {
		return 0, false
	}
	return envInt(func(n int) bool { return n >= 0 }, "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")
}

// envInt is the first of the launcher's variables that holds an integer
// for which ok holds.
func envInt(ok func(int) bool, names ...string) (int, bool) {
	for _, v := range names {
		if n, err := strconv.Atoi(os.Getenv(v)); err == nil && ok(n) {
			return n, true
		}
	}
	return 0, false
}

// handles are the MPI objects the calls name.
type handles struct {
	world, float, double, byte_, sum uintptr
	inPlace                          uintptr // MPI_IN_PLACE, a sentinel address
}

// MPICH's mpi.h: handles are ints; MPI_IN_PLACE is (void *)-1.
var mpich = handles{world: 0x44000000, float: 0x4c00040a, double: 0x4c00080b, byte_: 0x4c00010d, sum: 0x58000003, inPlace: ^uintptr(0)}

// The MPI 5.0 standard ABI (MPI_ABI_VERSION 1.0): handles are pointers
// whose predefined values are small constants, MPI_IN_PLACE is (void *)1,
// and the thread levels are 0, 1024, 2048, 4096. A library that exports
// MPI_Abi_get_version is taken to follow it.
var abi = handles{world: 0x101, float: 0x210, double: 0x214, byte_: 0x247, sum: 0x21, inPlace: 1}

// Thread levels: MPI_THREAD_FUNNELED in Open MPI's and MPICH's mpi.h, and
// in the standard ABI.
const (
	funneled    = 1
	funneledABI = 1024
)

type library struct {
	path, flavour string
	h             handles
	funneled      int32 // MPI_THREAD_FUNNELED's value
	initThread    func(argc, argv unsafe.Pointer, required int32, provided *int32) int32
	finalize      func() int32
	commRank      func(c uintptr, r *int32) int32
	commSize      func(c uintptr, n *int32) int32
	allreduce     func(send uintptr, recv unsafe.Pointer, count int32, dtype, op, c uintptr) int32 // send: MPI_IN_PLACE here
	bcast         func(buf unsafe.Pointer, count int32, dtype uintptr, root int32, c uintptr) int32
	allgather     func(send unsafe.Pointer, scount int32, stype uintptr, recv unsafe.Pointer, rcount int32, rtype uintptr, c uintptr) int32
	barrier       func(c uintptr) int32
	version       func(buf *byte, n *int32) int32
}

// load opens the first MPI library found. RTLD_GLOBAL: Open MPI opens its
// components as plugins that resolve libmpi's symbols.
func load() (*library, error) {
	names := libraries()
	var errs []error
	for _, name := range names {
		h, err := dlopen(name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		l := &library{path: name}
		if err := l.bind(h); err != nil {
			return nil, fmt.Errorf("mpi: %s: %w", name, err)
		}
		return l, nil
	}
	return nil, fmt.Errorf("mpi: %w (tried %v; set QTUNE_MPI_LIB): %w", ErrNoMPI, names, errors.Join(errs...))
}

func (l *library) bind(h uintptr) (err error) {
	defer func() { // RegisterLibFunc panics on a missing symbol
		if r := recover(); r != nil {
			err = fmt.Errorf("not an MPI library: %v", r)
		}
	}()
	register(&l.initThread, h, "MPI_Init_thread")
	register(&l.finalize, h, "MPI_Finalize")
	register(&l.commRank, h, "MPI_Comm_rank")
	register(&l.commSize, h, "MPI_Comm_size")
	register(&l.allreduce, h, "MPI_Allreduce")
	register(&l.bcast, h, "MPI_Bcast")
	register(&l.allgather, h, "MPI_Allgather")
	register(&l.barrier, h, "MPI_Barrier")
	register(&l.version, h, "MPI_Get_library_version")
	sym := func(name string) uintptr {
		p, err := dlsym(h, name)
		if err != nil {
			return 0
		}
		return p
	}
	l.funneled = funneled
	if sym("MPI_Abi_get_version") != 0 {
		l.flavour, l.h, l.funneled = "MPI ABI", abi, funneledABI
		return nil
	}
	if w := sym("ompi_mpi_comm_world"); w != 0 { // Open MPI: handles are objects' addresses
		l.flavour = "Open MPI"
		l.h = handles{world: w, float: sym("ompi_mpi_float"), double: sym("ompi_mpi_double"), byte_: sym("ompi_mpi_byte"), sum: sym("ompi_mpi_op_sum"),
			inPlace: 1} // MPI_IN_PLACE is (void *)1
		if l.h.float == 0 || l.h.double == 0 || l.h.byte_ == 0 || l.h.sum == 0 {
			return errors.New("Open MPI without its predefined datatypes")
		}
		return nil
	}
	l.flavour, l.h = "MPICH", mpich
	return nil
}

// world is MPI_COMM_WORLD as a comm.Comm.
type world struct {
	l          *library
	calls      chan func()
	rank, size int
	timeout    time.Duration
	name       string
	mu         sync.Mutex
	broken     error
	closed     bool
	footprint  int64
}

// Open loads MPI, initializes it and returns MPI_COMM_WORLD. Collectives
// that take longer than timeout (0: no limit) fail with comm.ErrComm.
//
// The memory MPI takes in this process (its libraries, their heap, the
// shared-memory segments its on-node transport maps) is measured as the
// growth of the resident set from before loading it to after a first
// all-reduce of a whole bucket (comm.BucketFloats) and of a float64: its
// Footprint, which the plan counts.
func Open(timeout time.Duration) (comm.Comm, error) {
	rss0 := residentBytes()
	l, err := load()
	if err != nil {
		return nil, err
	}
	w := &world{l: l, calls: make(chan func(), maxQueued), timeout: timeout}
	ready := make(chan error, 1)
	go w.loop(ready)
	if err := <-ready; err != nil {
		return nil, err
	}
	if err := w.warmUp(); err != nil {
		return nil, err
	}
	// Every rank plans with the same figure (a plan that fits on one rank
	// and not on another would leave the other waiting in its first
	// collective): the largest rank's, rounded up to a whole MiB so that
	// the few hundred KiB it varies by from run to run seldom move the
	// smallest budget a refusal names.
	fp, err := w.largest(max(residentBytes()-rss0, 0))
	if err != nil {
		return nil, err
	}
	w.footprint = (fp + 1<<20 - 1) &^ (1<<20 - 1)
	return w, nil
}

// warmUp makes the first collectives of each kind the run makes, with a
// buffer outside the Go heap that is unmapped before the footprint is
// read.
func (w *world) warmUp() error {
	if w.size == 1 {
		return nil
	}
	b, err := budget.MapAnon(4 * comm.BucketFloats)
	if err != nil {
		return fmt.Errorf("mpi: a warm-up buffer: %w", err)
	}
	defer budget.Unmap(b)
	f := unsafe.Slice((*float32)(unsafe.Pointer(&b[0])), comm.BucketFloats)
	if err := w.AllReduceSum(f); err != nil {
		return err
	}
	if err := w.AllReduceSum64([]float64{0}); err != nil {
		return err
	}
	return w.Barrier()
}

// largest is the largest of every rank's v.
func (w *world) largest(v int64) (int64, error) {
	if w.size == 1 {
		return v, nil
	}
	send := binary.LittleEndian.AppendUint64(nil, uint64(v))
	recv := make([]byte, 8*w.size)
	if err := w.AllGather(send, recv); err != nil {
		return 0, err
	}
	for r := range w.size {
		v = max(v, int64(binary.LittleEndian.Uint64(recv[8*r:])))
	}
	return v, nil
}

// residentBytes is the process's resident set now (/proc/self/statm), or 0
// where that is not available.
func residentBytes() int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	n, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		return 0
	}
	return n * int64(os.Getpagesize())
}

func (w *world) Footprint() int64 { return w.footprint }

// loop is the one goroutine that calls MPI, on its own OS thread.
func (w *world) loop(ready chan<- error) {
	runtime.LockOSThread()
	var provided, rank, size int32
	if rc := w.l.initThread(nil, nil, w.l.funneled, &provided); rc != 0 {
		ready <- fmt.Errorf("mpi: MPI_Init_thread: error %d: %w", rc, comm.ErrComm)
		return
	}
	if provided < w.l.funneled {
		ready <- fmt.Errorf("mpi: the library gives thread level %d, qtune needs %d (funneled): %w", provided, w.l.funneled, comm.ErrComm)
		return
	}
	w.l.commRank(w.l.h.world, &rank)
	w.l.commSize(w.l.h.world, &size)
	w.rank, w.size = int(rank), int(size)
	buf := make([]byte, 8192) // MPI_MAX_LIBRARY_VERSION_STRING: 256 in Open MPI, 8192 in MPICH
	var n int32
	w.name = w.l.flavour
	if w.l.version(&buf[0], &n) == 0 && n > 0 && int(n) <= len(buf) {
		v := buf[:n]
		if i := bytes.IndexAny(v, ",\n\x00"); i >= 0 {
			v = v[:i]
		}
		w.name = strings.Join(strings.Fields(string(v)), " ") // "Open MPI v4.1.4", "MPICH Version: 4.0.2"
	}
	ready <- nil
	for f := range w.calls {
		f()
	}
}

// LocalSize reads the launcher's count of ranks on this machine: Open
// MPI's OMPI_COMM_WORLD_LOCAL_SIZE, MPICH's (Hydra's) MPI_LOCALNRANKS,
// PMIx's PMIX_LOCAL_SIZE; Size() when none is set.
func (w *world) LocalSize() int {
	if n, ok := envInt(func(n int) bool { return n >= 1 && n <= w.size }, "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "PMIX_LOCAL_SIZE"); ok {
		return n
	}
	return w.size
}

// LocalRank reads the launcher's place of this rank on its machine: Open
// MPI's OMPI_COMM_WORLD_LOCAL_RANK, MPICH's MPI_LOCALRANKID, PMIx's
// PMIX_LOCAL_RANK; Rank() modulo LocalSize() when none is set.
func (w *world) LocalRank() int {
	local := w.LocalSize()
	if n, ok := envInt(func(n int) bool { return n >= 0 && n < local }, "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "PMIX_LOCAL_RANK"); ok {
		return n
	}
	return w.rank % local
}

func (w *world) Rank() int    { return w.rank }
func (w *world) Size() int    { return w.size }
func (w *world) Name() string { return fmt.Sprintf("%s (%s), %d ranks", w.name, w.l.path, w.size) }

// do runs one MPI call on the MPI thread and waits for it, at most the
// timeout.
func (w *world) do(what string, f func() int32) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	done := make(chan int32, 1)
	if err := w.enqueue(what, func() { done <- f() }); err != nil {
		return err
	}
	return w.wait(what, done)
}

// maxQueued bounds the calls queued for the MPI thread: a step starts one
// sum per block before it waits for them.
const maxQueued = 1024

// enqueue hands f to the MPI thread, unless the group is broken or closed
// (or the queue stays full for the timeout). The caller holds mu.
func (w *world) enqueue(what string, f func()) error {
	if w.broken != nil {
		return w.broken
	}
	if w.closed {
		return fmt.Errorf("mpi: %s after Close: %w", what, comm.ErrComm)
	}
	expired, stop := w.deadline()
	defer stop()
	select {
	case w.calls <- f:
		return nil
	case <-expired:
		w.broken = fmt.Errorf("mpi: rank %d of %d: %s could not be queued in %s (the MPI thread is stuck in an earlier call): %w",
			w.rank, w.size, what, w.timeout, comm.ErrComm)
		return w.broken
	}
}

// deadline fires after the group's timeout (never without one); stop
// releases its timer.
func (w *world) deadline() (<-chan time.Time, func()) {
	if w.timeout <= 0 {
		return nil, func() {}
	}
	t := time.NewTimer(w.timeout)
	return t.C, func() { t.Stop() }
}

// wait waits for a queued call's result, at most the timeout; a call that
// does not complete in it breaks the group. The caller holds mu.
func (w *world) wait(what string, done <-chan int32) error {
	expired, stop := w.deadline()
	defer stop()
	select {
	case rc := <-done:
		if rc != 0 {
			return fmt.Errorf("mpi: %s: error %d: %w", what, rc, comm.ErrComm)
		}
		return nil
	case <-expired:
		w.broken = fmt.Errorf("mpi: rank %d of %d: %s did not complete in %s (another rank stopped or cannot be reached): %w",
			w.rank, w.size, what, w.timeout, comm.ErrComm)
		return w.broken
	}
}

// count checks that n elements fit MPI's int count.
func count(what string, n int) (int32, error) {
	if n > 1<<31-1 {
		return 0, fmt.Errorf("mpi: %s of %d elements: more than an MPI count holds: %w", what, n, comm.ErrComm)
	}
	return int32(n), nil
}

// AllReduceSum sums buf in pieces of at most comm.BucketFloats: a started
// sum, waited for.
func (w *world) AllReduceSum(buf []float32) error { return w.StartAllReduceSum(buf)() }

// StartAllReduceSum queues buf's sum (in buckets, as AllReduceSum) on the
// MPI thread and returns at once; the wait it returns gives the sum the
// group's timeout from when it is called (a block's backward may take
// longer than the timeout, and the sum cannot finish before every rank
// reaches it).
func (w *world) StartAllReduceSum(buf []float32) func() error {
	if w.size == 1 || len(buf) == 0 {
		return func() error { return nil }
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	done := make(chan int32, 1)
	err := w.enqueue("MPI_Allreduce", func() {
		for b := buf; len(b) > 0; {
			n := min(len(b), comm.BucketFloats)
			if rc := w.l.allreduce(w.l.h.inPlace, unsafe.Pointer(&b[0]), int32(n), w.l.h.float, w.l.h.sum, w.l.h.world); rc != 0 {
				done <- rc
				return
			}
			b = b[n:]
		}
		done <- 0
	})
	return func() error {
		if err != nil {
			return err
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		if w.broken != nil {
			return w.broken
		}
		return w.wait("MPI_Allreduce", done)
	}
}

func (w *world) AllReduceSum64(buf []float64) error {
	if len(buf) == 0 {
		return nil
	}
	return w.allReduceSum(unsafe.Pointer(&buf[0]), len(buf), w.l.h.double)
}

// allReduceSum sums n elements of dtype at p over the ranks, in place.
func (w *world) allReduceSum(p unsafe.Pointer, n int, dtype uintptr) error {
	if w.size == 1 {
		return nil
	}
	c, err := count("all-reduce", n)
	if err != nil {
		return err
	}
	return w.do("MPI_Allreduce", func() int32 { return w.l.allreduce(w.l.h.inPlace, p, c, dtype, w.l.h.sum, w.l.h.world) })
}

func (w *world) Broadcast(buf []byte, root int) error {
	if root < 0 || root >= w.size {
		return fmt.Errorf("mpi: broadcast from rank %d of %d: %w", root, w.size, comm.ErrComm)
	}
	if len(buf) == 0 || w.size == 1 {
		return nil
	}
	n, err := count("broadcast", len(buf))
	if err != nil {
		return err
	}
	p := unsafe.Pointer(&buf[0])
	return w.do("MPI_Bcast", func() int32 { return w.l.bcast(p, n, w.l.h.byte_, int32(root), w.l.h.world) })
}

func (w *world) AllGather(send, recv []byte) error {
	if len(recv) != w.size*len(send) {
		return fmt.Errorf("mpi: all-gather of %d bytes from %d ranks into %d: %w", len(send), w.size, len(recv), comm.ErrComm)
	}
	if len(send) == 0 {
		return nil
	}
	if w.size == 1 {
		copy(recv, send)
		return nil
	}
	n, err := count("all-gather", len(send))
	if err != nil {
		return err
	}
	s, r := unsafe.Pointer(&send[0]), unsafe.Pointer(&recv[0])
	return w.do("MPI_Allgather", func() int32 { return w.l.allgather(s, n, w.l.h.byte_, r, n, w.l.h.byte_, w.l.h.world) })
}

func (w *world) Barrier() error {
	return w.do("MPI_Barrier", func() int32 { return w.l.barrier(w.l.h.world) })
}

// Close finalizes MPI (a broken group is left as it is: the process should
// exit).
func (w *world) Close() error {
	if err := w.do("MPI_Finalize", func() int32 { return w.l.finalize() }); err != nil {
		return err
	}
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	return nil
}
