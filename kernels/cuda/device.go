package cuda

import (
	"errors"
	"fmt"
	"math"
	"runtime"
	"sync"
	"unsafe"
)

// ErrVRAM says that an allocation would take the device past its budget
// (Options.MaxVRAM) or that the GPU itself is out of memory.
var ErrVRAM = errors.New("over the GPU memory budget")

// Options configure Open.
type Options struct {
	// MaxVRAM caps the bytes this process allocates on the device
	// (Alloc, the cuBLAS workspace); 0 is no cap beyond the GPU's.
	MaxVRAM int64
	// CacheDir holds compiled kernels (cubin per source hash and compute
	// capability); empty is the user cache folder's qtune/cuda.
	CacheDir string
}

// Device is one GPU with its primary context, owned by one goroutine
// locked to its OS thread (CUDA contexts are current per thread): every
// driver, cuBLAS and NVRTC call of the device runs there, and callers hand
// it their work. Methods are safe for concurrent use.
type Device struct {
	GPU        // ordinal, name, compute capability, memory
	Driver int // the CUDA version the driver supports (13000 = 13.0)

	drv        *driverAPI
	dev        int32
	ctx        uintptr
	stream     uintptr
	copyStream uintptr // the Copy queue, made on first use
	calls      chan func()
	tid        int    // the OS thread of the device's goroutine
	arena      []byte // launch arguments and C string arrays: mapped, never the Go heap
	opt        Options

	mu               sync.Mutex
	used, peak, max  int64
	fromFree         bool // max is BudgetFromFree's, not Options.MaxVRAM
	closed           bool
	mods             map[string]*module
	blas             *blasHandle
	workspace        *Buffer
	baseUsed         int64 // cuMemGetInfo's used bytes once the context was made
	maxSharedPerBloc int
}

// Open makes device ordinal's context and its owner goroutine.
func Open(ordinal int, opt Options) (*Device, error) {
	n, err := Count()
	if err != nil {
		return nil, err
	}
	if ordinal < 0 || ordinal >= n {
		return nil, fmt.Errorf("cuda: device %d: the driver sees %d GPU(s) (cuda:0 to cuda:%d)", ordinal, n, n-1)
	}
	arena, err := mapArena(arenaBytes)
	if err != nil {
		return nil, fmt.Errorf("cuda: mapping the argument arena: %w", err)
	}
	d := &Device{GPU: GPU{Ordinal: ordinal}, drv: drv, calls: make(chan func()), arena: arena, opt: opt, max: opt.MaxVRAM, mods: map[string]*module{}}
	ready := make(chan error, 1)
	go d.loop(ready)
	if err := <-ready; err != nil {
		close(d.calls)
		unmapArena(arena)
		return nil, err
	}
	return d, nil
}

const arenaBytes = 64 << 10

func (d *Device) loop(ready chan<- error) {
	runtime.LockOSThread()
	d.tid = threadID()
	ready <- d.setup()
	for f := range d.calls {
		f()
	}
}

func (d *Device) setup() error {
	c := d.drv
	var err error
	if d.GPU, d.dev, err = describe(c, d.Ordinal); err != nil {
		return err
	}
	var v, shm int32
	if err := c.err("cuDeviceGetAttribute", c.cuDeviceGetAttribute(&shm, attrMaxSharedOptin, d.dev)); err != nil {
		return err
	}
	d.maxSharedPerBloc = int(shm)
	if err := c.err("cuDriverGetVersion", c.cuDriverGetVersion(&v)); err != nil {
		return err
	}
	d.Driver = int(v)
	if err := c.err("cuDevicePrimaryCtxRetain", c.cuPrimaryCtxRetain(&d.ctx, d.dev)); err != nil {
		return err
	}
	if err := c.err("cuCtxSetCurrent", c.cuCtxSetCurrent(d.ctx)); err != nil {
		return err
	}
	// A blocking stream: it waits for the legacy default stream, so the
	// synchronous copies order with the kernels on it.
	if err := c.err("cuStreamCreate", c.cuStreamCreate(&d.stream, 0)); err != nil {
		return err
	}
	free, tot, err := d.memInfo()
	if err != nil {
		return err
	}
	d.baseUsed = tot - free
	return nil
}

// do runs f on the device's thread and waits for it; called on that
// thread (inside a Batch) it runs f at once.
func (d *Device) do(f func() error) error {
	if d.tid > 0 && threadID() == d.tid {
		return f()
	}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return errors.New("cuda: device used after Close")
	}
	d.mu.Unlock()
	done := make(chan error, 1)
	d.calls <- func() { done <- f() }
	return <-done
}

// Batch runs f on the device's thread: the device calls f makes run there
// directly instead of each being handed over to that thread and waited
// for (BenchmarkGPUCallHop: about 27 µs a call on the machine that wrote
// this, and a training step of a 22-block model makes some 3,000). f must
// not wait for another goroutine that uses the device. Other goroutines'
// calls wait until f returns.
func (d *Device) Batch(f func() error) error { return d.do(f) }

// BindThread locks the calling goroutine to its OS thread and makes the
// device's context current there, so that MemInfoHere may be called from it
// while the device's own thread is busy (in a Batch).
func (d *Device) BindThread() error {
	runtime.LockOSThread()
	return d.drv.err("cuCtxSetCurrent", d.drv.cuCtxSetCurrent(d.ctx))
}

// MemInfoHere is MemInfo from a goroutine that called BindThread.
func (d *Device) MemInfoHere() (free, total int64, err error) { return d.memInfo() }

// Close frees the device's modules, cuBLAS handle and stream and releases
// its context. Buffers still allocated are freed with the context.
func (d *Device) Close() error {
	var err error
	if e := d.do(func() error {
		c := d.drv
		var errs []error
		for _, m := range d.mods {
			errs = append(errs, c.err("cuModuleUnload", c.cuModuleUnload(m.h)))
		}
		if d.blas != nil {
			errs = append(errs, d.blas.destroy())
		}
		if d.workspace != nil {
			errs = append(errs, c.err("cuMemFree", c.cuMemFree(d.workspace.ptr)))
		}
		errs = append(errs, c.err("cuStreamDestroy", c.cuStreamDestroy(d.stream)))
		if d.copyStream != 0 {
			errs = append(errs, c.err("cuStreamDestroy", c.cuStreamDestroy(d.copyStream)))
		}
		errs = append(errs, c.err("cuDevicePrimaryCtxRelease", c.cuPrimaryCtxRelease(d.dev)))
		return errors.Join(errs...)
	}); e != nil {
		err = e
	}
	d.mu.Lock()
	d.closed = true
	d.mu.Unlock()
	close(d.calls)
	unmapArena(d.arena)
	return err
}

// String names the device as `qtune devices` prints it.
func (d *Device) String() string {
	return fmt.Sprintf("cuda:%d %s (compute %d.%d, %d SMs, %s, driver CUDA %d.%d)", d.Ordinal, d.Name, d.Major, d.Minor, d.SMs,
		fmtBytes(d.TotalMem), d.Driver/1000, d.Driver%1000/10)
}

func fmtBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%d B", n)
}

func (d *Device) memInfo() (free, total int64, err error) {
	var f, t uint64
	if err := d.drv.err("cuMemGetInfo", d.drv.cuMemGetInfo(&f, &t)); err != nil {
		return 0, 0, err
	}
	return int64(f), int64(t), nil
}

// MemInfo is the device's free and total memory as the driver sees it
// (every process's allocations and contexts counted).
func (d *Device) MemInfo() (free, total int64, err error) {
	err = d.do(func() error {
		var e error
		free, total, e = d.memInfo()
		return e
	})
	return
}

// ContextBytes is what the device used, by cuMemGetInfo, when this
// process's context had just been made: the context itself and whatever
// other processes hold.
func (d *Device) ContextBytes() int64 { return d.baseUsed }

// BudgetFromFree gives a device opened without a budget (Options.MaxVRAM)
// one: what it holds now and what the GPU has free, less FreeMargin, so
// that work without --max-vram is planned within the memory there is
// (blocks streamed when the model does not fit) instead of failing at an
// allocation. What CUDA and cuBLAS load lazily once work starts is left
// to the caller's warm-up to measure, as under --max-vram. It returns the
// budget: Options.MaxVRAM when one was given, 0 when the driver does not
// say what is free.
func (d *Device) BudgetFromFree() int64 {
	free, _, err := d.MemInfo()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.max > 0 || err != nil || free <= 0 {
		return d.max
	}
	d.max, d.fromFree = d.used+free-FreeMargin(free), true
	return d.max
}

// FreeMargin is what a budget taken from free device memory leaves free:
// the driver's rounding of allocations to 2 MiB pages and other processes'
// growth (64 MiB and a 32nd, or half of a smaller free share).
func FreeMargin(free int64) int64 { return min(64<<20+free/32, free/2) }

// Used and Peak are the bytes this process has allocated on the device
// through Alloc (and the cuBLAS workspace), now and at most.
func (d *Device) Used() int64 { d.mu.Lock(); defer d.mu.Unlock(); return d.used }
func (d *Device) Peak() int64 { d.mu.Lock(); defer d.mu.Unlock(); return d.peak }

// allocGranule is the driver's allocation alignment: every cuMemAlloc
// takes a multiple of it, so accounting rounds up to it.
const allocGranule = 512

// Buffer is device memory, or a view of part of one (Slice).
type Buffer struct {
	d     *Device
	ptr   uint64
	Bytes int64
	freed bool
	view  bool
}

// Slice is a view of n bytes of b at off: it shares b's memory and is not
// freed on its own.
func (b *Buffer) Slice(off, n int64) (*Buffer, error) {
	if err := b.check("Slice", off, n); err != nil {
		return nil, err
	}
	return &Buffer{d: b.d, ptr: b.ptr + uint64(off), Bytes: n, view: true}, nil
}

// F32 is Slice in float32 elements.
func (b *Buffer) F32(off, n int) (*Buffer, error) { return b.Slice(4*int64(off), 4*int64(n)) }

// Ptr is the buffer's device address.
func (b *Buffer) Ptr() uint64 { return b.ptr }

// Alloc takes n bytes of device memory, within the budget.
func (d *Device) Alloc(n int64) (*Buffer, error) {
	if n <= 0 || n > 1<<50 {
		return nil, fmt.Errorf("cuda: allocating %d bytes: not a size", n)
	}
	size := (n + allocGranule - 1) / allocGranule * allocGranule
	d.mu.Lock()
	if d.max > 0 && d.used+size > d.max {
		used, what := d.used, "--max-vram"
		if d.fromFree {
			what = "the budget of the GPU's free memory"
		}
		d.mu.Unlock()
		return nil, fmt.Errorf("cuda: allocating %s with %s in use passes %s %s: %w", fmtBytes(n), fmtBytes(used), what, fmtBytes(d.max), ErrVRAM)
	}
	d.used += size
	d.peak = max(d.peak, d.used)
	d.mu.Unlock()
	b := &Buffer{d: d, Bytes: n}
	err := d.do(func() error { return d.drv.err("cuMemAlloc", d.drv.cuMemAlloc(&b.ptr, uint64(n))) })
	if err != nil {
		d.mu.Lock()
		d.used -= size
		d.mu.Unlock()
		var ce *Error
		if errors.As(err, &ce) && ce.Name == "CUDA_ERROR_OUT_OF_MEMORY" {
			return nil, fmt.Errorf("%w: %w", err, ErrVRAM)
		}
		return nil, err
	}
	return b, nil
}

// Free returns the buffer's memory; a second Free does nothing.
func (b *Buffer) Free() error {
	if b == nil || b.freed {
		return nil
	}
	if b.view {
		return errors.New("cuda: Free of a view (Slice): free the buffer it is part of")
	}
	b.freed = true
	d := b.d
	err := d.do(func() error { return d.drv.err("cuMemFree", d.drv.cuMemFree(b.ptr)) })
	d.mu.Lock()
	d.used -= (b.Bytes + allocGranule - 1) / allocGranule * allocGranule
	d.mu.Unlock()
	return err
}

func (b *Buffer) check(what string, off, n int64) error {
	if b.freed {
		return fmt.Errorf("cuda: %s: buffer used after Free", what)
	}
	if off < 0 || n < 0 || off+n > b.Bytes {
		return fmt.Errorf("cuda: %s of %d bytes at %d: the buffer holds %d", what, n, off, b.Bytes)
	}
	return nil
}

// Write copies src to the buffer at byte offset off. The copy is
// synchronous: src may be Go memory.
func (b *Buffer) Write(off int64, src []byte) error {
	if err := b.check("Write", off, int64(len(src))); err != nil || len(src) == 0 {
		return err
	}
	d := b.d
	return d.do(func() error {
		return d.drv.err("cuMemcpyHtoD", d.drv.cuMemcpyHtoD(b.ptr+uint64(off), unsafe.Pointer(&src[0]), uint64(len(src))))
	})
}

// WritePieces is Write in pieces of piece bytes (0 or less: one), calling
// after (when not nil) with each piece of src once it is on the device.
func (b *Buffer) WritePieces(off int64, src []byte, piece int, after func([]byte)) error {
	if piece <= 0 {
		piece = len(src)
	}
	for len(src) > 0 {
		n := min(piece, len(src))
		if err := b.Write(off, src[:n]); err != nil {
			return err
		}
		if after != nil {
			after(src[:n])
		}
		off += int64(n)
		src = src[n:]
	}
	return nil
}

// Read copies the buffer's bytes at off into dst, after the work queued
// on the device's stream.
func (b *Buffer) Read(dst []byte, off int64) error {
	if err := b.check("Read", off, int64(len(dst))); err != nil || len(dst) == 0 {
		return err
	}
	d := b.d
	return d.do(func() error {
		return d.drv.err("cuMemcpyDtoH", d.drv.cuMemcpyDtoH(unsafe.Pointer(&dst[0]), b.ptr+uint64(off), uint64(len(dst))))
	})
}

// WriteF32 and ReadF32 are Write and Read of float32 values at element
// offset off.
func (b *Buffer) WriteF32(off int, src []float32) error { return b.Write(int64(off)*4, f32Bytes(src)) }
func (b *Buffer) ReadF32(dst []float32, off int) error  { return b.Read(f32Bytes(dst), int64(off)*4) }

func f32Bytes(x []float32) []byte {
	if len(x) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&x[0])), 4*len(x))
}

// Zero sets the buffer's bytes to 0 (queued on the device's stream).
func (b *Buffer) Zero() error {
	if err := b.check("Zero", 0, b.Bytes); err != nil {
		return err
	}
	d := b.d
	return d.do(func() error {
		return d.drv.err("cuMemsetD8Async", d.drv.cuMemsetD8Async(b.ptr, 0, uint64(b.Bytes), d.stream))
	})
}

// Copy queues a device-to-device copy of n bytes.
func (d *Device) Copy(dst *Buffer, doff int64, src *Buffer, soff, n int64) error {
	if err := dst.check("Copy", doff, n); err != nil {
		return err
	}
	if err := src.check("Copy", soff, n); err != nil {
		return err
	}
	return d.do(func() error {
		return d.drv.err("cuMemcpyDtoDAsync", d.drv.cuMemcpyDtoDAsync(dst.ptr+uint64(doff), src.ptr+uint64(soff), uint64(n), d.stream))
	})
}

// Sync waits for the work queued on the device's stream.
func (d *Device) Sync() error {
	return d.do(func() error { return d.drv.err("cuStreamSynchronize", d.drv.cuStreamSynchronize(d.stream)) })
}

// Pinned is page-locked host memory from cuMemHostAlloc: the only host
// memory asynchronous copies read or write (never the Go heap).
type Pinned struct {
	d     *Device
	p     uintptr
	Bytes []byte
}

// AllocPinned takes n bytes of page-locked host memory (the host budget's
// to count, not the device's).
func (d *Device) AllocPinned(n int64) (*Pinned, error) {
	if n <= 0 || n > 1<<46 {
		return nil, fmt.Errorf("cuda: pinning %d bytes: not a size", n)
	}
	h := &Pinned{d: d}
	if err := d.do(func() error { return d.drv.err("cuMemHostAlloc", d.drv.cuMemHostAlloc(&h.p, uint64(n), 0)) }); err != nil {
		return nil, err
	}
	h.Bytes = unsafe.Slice((*byte)(pinnedPtr(h.p)), n)
	return h, nil
}

// pinnedPtr turns a cuMemHostAlloc address (memory outside the Go heap)
// into a pointer.
func pinnedPtr(p uintptr) unsafe.Pointer { return *(*unsafe.Pointer)(unsafe.Pointer(&p)) }

// Free releases pinned memory after the stream's work (copies may still
// read it).
func (h *Pinned) Free() error {
	if h == nil || h.p == 0 {
		return nil
	}
	d := h.d
	err := d.do(func() error {
		if err := d.drv.err("cuStreamSynchronize", d.drv.cuStreamSynchronize(d.stream)); err != nil {
			return err
		}
		return d.drv.err("cuMemFreeHost", d.drv.cuMemFreeHost(h.p))
	})
	h.p, h.Bytes = 0, nil
	return err
}

// Timer measures device time between two points of the stream with CUDA
// events.
type Timer struct {
	d          *Device
	start, end uintptr
}

// StartTimer records a start event on the stream.
func (d *Device) StartTimer() (*Timer, error) {
	t := &Timer{d: d}
	err := d.do(func() error {
		c := d.drv
		if err := c.err("cuEventCreate", c.cuEventCreate(&t.start, 0)); err != nil {
			return err
		}
		if err := c.err("cuEventCreate", c.cuEventCreate(&t.end, 0)); err != nil {
			return err
		}
		return c.err("cuEventRecord", c.cuEventRecord(t.start, d.stream))
	})
	return t, err
}

// Stop records the end event, waits for it and returns the milliseconds
// between the two; the timer is then spent.
func (t *Timer) Stop() (float64, error) {
	d := t.d
	var ms float32
	err := d.do(func() error {
		c := d.drv
		defer c.cuEventDestroy(t.start)
		defer c.cuEventDestroy(t.end)
		if err := c.err("cuEventRecord", c.cuEventRecord(t.end, d.stream)); err != nil {
			return err
		}
		if err := c.err("cuEventSynchronize", c.cuEventSynchronize(t.end)); err != nil {
			return err
		}
		return c.err("cuEventElapsedTime", c.cuEventElapsedTime(&ms, t.start, t.end))
	})
	return float64(ms), err
}

// arg is one kernel argument: a device buffer, an integer or a float.
type arg = any

// launch queues kernel f with the arguments packed into the arena (on the
// device's thread: the arena is the thread's).
func (d *Device) launch(name string, f uintptr, grid, block [3]uint32, shared uint32, args ...arg) error {
	if len(args) > 64 {
		return fmt.Errorf("cuda: %s: %d arguments", name, len(args))
	}
	vals := d.arena[:512]
	ptrs := d.arena[512:1024]
	base := uintptr(unsafe.Pointer(&d.arena[0]))
	for i, a := range args {
		v := vals[8*i : 8*i+8]
		var u uint64
		switch x := a.(type) {
		case *Buffer:
			if x == nil || x.freed {
				return fmt.Errorf("cuda: %s: argument %d is a freed or nil buffer", name, i)
			}
			u = x.ptr
		case uint64:
			u = x
		case int:
			u = uint64(int64(x))
		case int64:
			u = uint64(x)
		case int32:
			u = uint64(uint32(x))
		case uint32:
			u = uint64(x)
		case float32:
			u = uint64(math.Float32bits(x))
		case float64:
			u = math.Float64bits(x)
		default:
			return fmt.Errorf("cuda: %s: argument %d of type %T", name, i, a)
		}
		*(*uint64)(unsafe.Pointer(&v[0])) = u
		*(*uintptr)(unsafe.Pointer(&ptrs[8*i])) = base + uintptr(8*i)
	}
	return d.drv.err("cuLaunchKernel "+name, d.drv.cuLaunchKernel(f, grid[0], grid[1], grid[2], block[0], block[1], block[2], shared, d.stream, base+512, 0))
}
