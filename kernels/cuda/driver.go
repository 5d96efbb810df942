package cuda

import (
	"fmt"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/qtune/qtune/internal/procmem"
)

// driverAPI is the part of libcuda.so.1 qtune calls. Every function
// returns a CUresult (0 = CUDA_SUCCESS); check turns others into errors
// naming the call.
type driverAPI struct {
	path string

	cuInit               func(flags uint32) int32
	cuDriverGetVersion   func(v *int32) int32
	cuDeviceGetCount     func(n *int32) int32
	cuDeviceGet          func(d *int32, ordinal int32) int32
	cuDeviceGetName      func(name *byte, n int32, d int32) int32
	cuDeviceGetAttribute func(v *int32, attr int32, d int32) int32
	cuDeviceTotalMem     func(b *uint64, d int32) int32
	cuPrimaryCtxRetain   func(ctx *uintptr, d int32) int32
	cuPrimaryCtxRelease  func(d int32) int32
	cuCtxSetCurrent      func(ctx uintptr) int32
	cuCtxSynchronize     func() int32
	cuMemGetInfo         func(free, total *uint64) int32
	cuMemAlloc           func(p *uint64, n uint64) int32
	cuMemFree            func(p uint64) int32
	cuMemHostAlloc       func(p *uintptr, n uint64, flags uint32) int32
	cuMemFreeHost        func(p uintptr) int32
	cuMemcpyHtoD         func(dst uint64, src unsafe.Pointer, n uint64) int32
	cuMemcpyDtoH         func(dst unsafe.Pointer, src uint64, n uint64) int32
	cuMemcpyHtoDAsync    func(dst uint64, src uintptr, n uint64, s uintptr) int32
	cuMemcpyDtoHAsync    func(dst uintptr, src uint64, n uint64, s uintptr) int32
	cuMemcpyDtoDAsync    func(dst, src uint64, n uint64, s uintptr) int32
	cuMemsetD8Async      func(dst uint64, v uint8, n uint64, s uintptr) int32
	cuStreamCreate       func(s *uintptr, flags uint32) int32
	cuStreamDestroy      func(s uintptr) int32
	cuStreamSynchronize  func(s uintptr) int32
	cuStreamWaitEvent    func(s, e uintptr, flags uint32) int32
	cuEventCreate        func(e *uintptr, flags uint32) int32
	cuEventRecord        func(e, s uintptr) int32
	cuEventSynchronize   func(e uintptr) int32
	cuEventElapsedTime   func(ms *float32, start, end uintptr) int32
	cuEventDestroy       func(e uintptr) int32
	cuModuleLoadData     func(m *uintptr, image unsafe.Pointer) int32
	cuModuleGetFunction  func(f *uintptr, m uintptr, name string) int32
	cuModuleUnload       func(m uintptr) int32
	cuLaunchKernel       func(f uintptr, gx, gy, gz, bx, by, bz, shared uint32, s uintptr, params, extra uintptr) int32
	cuFuncSetAttribute   func(f uintptr, attr int32, v int32) int32
	cuGetErrorName       func(code int32, s **byte) int32
	cuGetErrorString     func(code int32, s **byte) int32
}

// Device attributes (CUdevice_attribute).
const (
	attrMultiprocessors = 16
	attrIntegrated      = 18
	attrCCMajor         = 75
	attrCCMinor         = 76
	attrMaxSharedOptin  = 97
)

var (
	drvOnce sync.Once
	drv     *driverAPI
	drvErr  error
	// drvHost is what loading and initialising the driver added to the
	// resident set (its code, cuInit's state); drvLoaded says it was tried.
	drvHost   atomic.Int64
	drvLoaded atomic.Bool
)

// DriverInitBytes is what loading and initialising the CUDA driver added
// to the process's resident set, and whether that has happened: a
// measure of the driver's host memory that starts after it (train's)
// adds it.
func DriverInitBytes() (int64, bool) { return drvHost.Load(), drvLoaded.Load() }

// loadDriver opens and initialises the driver once per process.
func loadDriver() (*driverAPI, error) {
	drvOnce.Do(func() {
		before, _ := procmem.Resident()
		defer func() {
			after, _ := procmem.Resident()
			drvHost.Store(max(after-before, 0))
			drvLoaded.Store(true)
		}()
		h, path, err := open(Driver, OSEnv())
		if err != nil {
			drvErr = err
			return
		}
		d := &driverAPI{path: path}
		err = bind(h, Driver.Name, map[string]any{
			"cuInit": &d.cuInit, "cuDriverGetVersion": &d.cuDriverGetVersion,
			"cuDeviceGetCount": &d.cuDeviceGetCount, "cuDeviceGet": &d.cuDeviceGet,
			"cuDeviceGetName": &d.cuDeviceGetName, "cuDeviceGetAttribute": &d.cuDeviceGetAttribute,
			"cuDeviceTotalMem_v2": &d.cuDeviceTotalMem, "cuDevicePrimaryCtxRetain": &d.cuPrimaryCtxRetain,
			"cuDevicePrimaryCtxRelease_v2": &d.cuPrimaryCtxRelease, "cuCtxSetCurrent": &d.cuCtxSetCurrent,
			"cuCtxSynchronize": &d.cuCtxSynchronize, "cuMemGetInfo_v2": &d.cuMemGetInfo,
			"cuMemAlloc_v2": &d.cuMemAlloc, "cuMemFree_v2": &d.cuMemFree,
			"cuMemHostAlloc": &d.cuMemHostAlloc, "cuMemFreeHost": &d.cuMemFreeHost,
			"cuMemcpyHtoD_v2": &d.cuMemcpyHtoD, "cuMemcpyDtoH_v2": &d.cuMemcpyDtoH,
			"cuMemcpyHtoDAsync_v2": &d.cuMemcpyHtoDAsync, "cuMemcpyDtoHAsync_v2": &d.cuMemcpyDtoHAsync,
			"cuMemcpyDtoDAsync_v2": &d.cuMemcpyDtoDAsync, "cuMemsetD8Async": &d.cuMemsetD8Async,
			"cuStreamCreate": &d.cuStreamCreate, "cuStreamDestroy_v2": &d.cuStreamDestroy,
			"cuStreamSynchronize": &d.cuStreamSynchronize, "cuStreamWaitEvent": &d.cuStreamWaitEvent,
			"cuEventCreate": &d.cuEventCreate, "cuEventRecord": &d.cuEventRecord,
			"cuEventSynchronize": &d.cuEventSynchronize, "cuEventDestroy_v2": &d.cuEventDestroy,
			"cuModuleLoadData": &d.cuModuleLoadData, "cuModuleGetFunction": &d.cuModuleGetFunction,
			"cuModuleUnload": &d.cuModuleUnload, "cuLaunchKernel": &d.cuLaunchKernel,
			"cuFuncSetAttribute": &d.cuFuncSetAttribute,
			"cuGetErrorName":     &d.cuGetErrorName, "cuGetErrorString": &d.cuGetErrorString,
		})
		if err != nil {
			drvErr = err
			return
		}
		// CUDA 12.8 added cuEventElapsedTime_v2 and CUDA 13 headers map the
		// name to it; older drivers have only the first.
		if err := bind(h, Driver.Name, map[string]any{"cuEventElapsedTime_v2": &d.cuEventElapsedTime}); err != nil {
			if err := bind(h, Driver.Name, map[string]any{"cuEventElapsedTime": &d.cuEventElapsedTime}); err != nil {
				drvErr = err
				return
			}
		}
		if rc := d.cuInit(0); rc != 0 {
			drvErr = fmt.Errorf("%w: %w", d.err("cuInit", rc), ErrNoCUDA)
			return
		}
		drv = d
	})
	return drv, drvErr
}

// Error is a failed CUDA call: which call, its code and the library's
// name and text for it.
type Error struct {
	Call string
	Code int32
	Name string // CUDA_ERROR_OUT_OF_MEMORY, CUBLAS_STATUS_NOT_SUPPORTED, NVRTC_ERROR_COMPILATION
	Text string
}

func (e *Error) Error() string {
	s := fmt.Sprintf("cuda: %s: %s (%d)", e.Call, e.Name, e.Code)
	if e.Text != "" && e.Text != e.Name {
		s += ": " + e.Text
	}
	return s
}

// cstring reads a NUL-terminated C string (at most 4 KiB).
func cstring(p *byte) string {
	if p == nil {
		return ""
	}
	var b []byte
	for i := 0; i < 4096; i++ {
		c := *(*byte)(unsafe.Add(unsafe.Pointer(p), i))
		if c == 0 {
			break
		}
		b = append(b, c)
	}
	return string(b)
}

// err maps a driver CUresult to an *Error (nil for success).
func (d *driverAPI) err(call string, rc int32) error {
	if rc == 0 {
		return nil
	}
	e := &Error{Call: call, Code: rc, Name: fmt.Sprintf("CUDA_ERROR_%d", rc)}
	var p *byte
	if d.cuGetErrorName != nil && d.cuGetErrorName(rc, &p) == 0 {
		e.Name = cstring(p)
	}
	if d.cuGetErrorString != nil && d.cuGetErrorString(rc, &p) == 0 {
		e.Text = cstring(p)
	}
	return e
}

// Count is the number of CUDA devices, or an error wrapping ErrNoCUDA.
func Count() (int, error) {
	d, err := loadDriver()
	if err != nil {
		return 0, err
	}
	var n int32
	if err := d.err("cuDeviceGetCount", d.cuDeviceGetCount(&n)); err != nil {
		return 0, fmt.Errorf("%w: %w", err, ErrNoCUDA)
	}
	if n == 0 {
		return 0, fmt.Errorf("cuda: the driver (%s) sees no GPU: %w", d.path, ErrNoCUDA)
	}
	return int(n), nil
}
