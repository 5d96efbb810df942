package cuda

import "fmt"

// Stream names one of a device's two queues: Compute runs kernels, cuBLAS
// and the synchronous copies; Copy runs uploads that overlap with it
// (layers streamed from the host while the previous one computes). Work
// on one queue waits for the other only through events.
type Stream int

const (
	Compute Stream = iota
	Copy
)

// streamOf returns the queue's CUstream, making the copy queue on first
// use (non-blocking: the synchronous copies on the legacy stream do not
// serialise it).
func (d *Device) streamOf(s Stream) (uintptr, error) {
	if s == Compute {
		return d.stream, nil
	}
	if d.copyStream == 0 {
		const nonBlocking = 1 // CU_STREAM_NON_BLOCKING
		if err := d.drv.err("cuStreamCreate", d.drv.cuStreamCreate(&d.copyStream, nonBlocking)); err != nil {
			return 0, err
		}
	}
	return d.copyStream, nil
}

// Event marks a point in a queue that another queue, or the host, waits
// for. Waiting for an event never recorded returns at once.
type Event struct {
	d *Device
	e uintptr
}

// NewEvent makes an event without timing (the cheap kind).
func (d *Device) NewEvent() (*Event, error) {
	ev := &Event{d: d}
	const disableTiming = 2 // CU_EVENT_DISABLE_TIMING
	err := d.do(func() error { return d.drv.err("cuEventCreate", d.drv.cuEventCreate(&ev.e, disableTiming)) })
	if err != nil {
		return nil, err
	}
	return ev, nil
}

// Record marks the point the queue has reached now.
func (e *Event) Record(s Stream) error {
	d := e.d
	return d.do(func() error {
		st, err := d.streamOf(s)
		if err != nil {
			return err
		}
		return d.drv.err("cuEventRecord", d.drv.cuEventRecord(e.e, st))
	})
}

// Sync waits on the host until the event's point is passed.
func (e *Event) Sync() error {
	d := e.d
	return d.do(func() error { return d.drv.err("cuEventSynchronize", d.drv.cuEventSynchronize(e.e)) })
}

// Free destroys the event.
func (e *Event) Free() error {
	if e == nil || e.e == 0 {
		return nil
	}
	d := e.d
	err := d.do(func() error { return d.drv.err("cuEventDestroy", d.drv.cuEventDestroy(e.e)) })
	e.e = 0
	return err
}

// Wait makes queue s wait for the event's point before its later work.
func (d *Device) Wait(s Stream, e *Event) error {
	return d.do(func() error {
		st, err := d.streamOf(s)
		if err != nil {
			return err
		}
		return d.drv.err("cuStreamWaitEvent", d.drv.cuStreamWaitEvent(st, e.e, 0))
	})
}

// UploadOn queues a copy of n bytes of pinned memory at hoff into dst at
// doff on queue s. The host bytes must stay untouched until the copy is
// done (an event recorded after it on s).
func (d *Device) UploadOn(s Stream, dst *Buffer, doff int64, src *Pinned, hoff, n int64) error {
	if err := dst.check("Upload", doff, n); err != nil {
		return err
	}
	if hoff < 0 || n < 0 || hoff+n > int64(len(src.Bytes)) {
		return fmt.Errorf("cuda: Upload of %d bytes at %d: the pinned buffer holds %d", n, hoff, len(src.Bytes))
	}
	return d.do(func() error {
		st, err := d.streamOf(s)
		if err != nil {
			return err
		}
		return d.drv.err("cuMemcpyHtoDAsync", d.drv.cuMemcpyHtoDAsync(dst.ptr+uint64(doff), src.p+uintptr(hoff), uint64(n), st))
	})
}
