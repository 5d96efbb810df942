package cuda

import (
	"os"
	"strings"
	"testing"
	"unsafe"
)

// The CUDA emulator (internal/cudaemu, `make test-gpu-emu`) runs the GPU
// tests on machines without a GPU; these tests check the emulator itself:
// the warp primitives future kernels may use give CUDA's answers, and the
// mistakes a GPU would punish late or silently are reported at the launch.

const emuProbe = `
extern "C" __global__ void probe(int* out, int n) {
    int lane = threadIdx.x & 31;
    int v = (int)threadIdx.x * 3 + 1;
    int* o = out + (blockIdx.x * blockDim.x + threadIdx.x) * 8;
    o[0] = __shfl_xor_sync(0xffffffffu, v, 5);
    o[1] = __shfl_down_sync(0xffffffffu, v, 3);
    o[2] = __shfl_up_sync(0xffffffffu, v, 2);
    o[3] = __shfl_sync(0xffffffffu, v, 7);
    o[4] = (int)__ballot_sync(0xffffffffu, lane % 3 == 0);
    o[5] = __shfl_xor_sync(0xffffffffu, v, 1, 8); // width 8
    __shared__ int s[64];
    s[threadIdx.x] = v;
    __syncthreads();
    o[6] = s[(threadIdx.x + 1) % blockDim.x];
    extern __shared__ int dyn[];
    dyn[threadIdx.x] = v * 2;
    __syncthreads();
    o[7] = dyn[blockDim.x - 1 - threadIdx.x] + n;
}
extern "C" __global__ void stuck(int* out) {
    if (threadIdx.x == 0) __syncthreads(); else __syncwarp();
    out[threadIdx.x] = 1;
}
`

func emulated(t *testing.T) *Device {
	d := gpu(t)
	if !strings.Contains(d.Name, "emulator") {
		t.Skipf("%s is not the emulator", d.Name)
	}
	return d
}

func TestEmulatorWarpPrimitives(t *testing.T) {
	d := emulated(t)
	m, err := d.module("probe", emuProbe)
	must(t, err)
	f, err := d.fn(m, "probe")
	must(t, err)
	const blocks, threads = 2, 64
	out, err := d.Alloc(4 * blocks * threads * 8)
	must(t, err)
	defer out.Free()
	must(t, d.do(func() error {
		return d.launch("probe", f, [3]uint32{blocks, 1, 1}, [3]uint32{threads, 1, 1}, 4*threads, out, int32(100))
	}))
	got := make([]int32, blocks*threads*8)
	must(t, out.Read(unsafe.Slice((*byte)(unsafe.Pointer(&got[0])), 4*len(got)), 0))
	for b := 0; b < blocks; b++ {
		for x := 0; x < threads; x++ {
			lane, w := x&31, x&^31
			v := func(lane int) int32 { return int32((w+lane)*3 + 1) }
			ballot := int32(0)
			for l := 0; l < 32; l += 3 {
				ballot |= 1 << l
			}
			down, up := lane+3, lane-2
			if down >= 32 {
				down = lane
			}
			if up < 0 {
				up = lane
			}
			want := []int32{v(lane ^ 5), v(down), v(up), v(7), ballot, v(lane ^ 1), int32(((x+1)%threads)*3 + 1), int32((threads-1-x)*3+1)*2 + 100}
			o := got[(b*threads+x)*8:][:8]
			for i := range want {
				if o[i] != want[i] {
					t.Errorf("block %d thread %d: result %d = %d, want %d", b, x, i, o[i], want[i])
				}
			}
		}
	}
}

func TestEmulatorReportsMistakes(t *testing.T) {
	d := emulated(t)
	m, err := d.module("probe", emuProbe)
	must(t, err)
	probe, err := d.fn(m, "probe")
	must(t, err)
	stuck, err := d.fn(m, "stuck")
	must(t, err)
	out, err := d.Alloc(4 * 64 * 8)
	must(t, err)
	defer out.Free()
	for _, c := range []struct {
		what string
		run  func() error
		want string
	}{
		{"threads that wait at different barriers", func() error {
			return d.launch("stuck", stuck, [3]uint32{1, 1, 1}, [3]uint32{32, 1, 1}, 0, out)
		}, "CUDA_ERROR_LAUNCH_FAILED"},
		{"a pointer argument outside device memory", func() error {
			return d.launch("probe", probe, [3]uint32{1, 1, 1}, [3]uint32{64, 1, 1}, 256, uint64(0x1000), int32(0))
		}, "CUDA_ERROR_ILLEGAL_ADDRESS"},
		{"64 KiB of shared memory without opting in", func() error {
			return d.launch("probe", probe, [3]uint32{1, 1, 1}, [3]uint32{64, 1, 1}, 64<<10, out, int32(0))
		}, "CUDA_ERROR_INVALID_VALUE"},
		{"2048 threads in a block", func() error {
			return d.launch("probe", probe, [3]uint32{1, 1, 1}, [3]uint32{2048, 1, 1}, 0, out, int32(0))
		}, "CUDA_ERROR_INVALID_VALUE"},
	} {
		err := d.do(c.run)
		if err == nil { // with QTUNE_CUDAEMU_ASYNC=1 a kernel's failure shows at the next synchronization, as on a GPU
			err = d.Sync()
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %s", c.what, err, c.want)
		}
	}
	// A kernel that does not compile: the compiler's message is the error's text.
	if _, err := d.module("broken", `extern "C" __global__ void k(float* x) { x[0] = undefined_name; }`); err == nil ||
		!strings.Contains(err.Error(), "NVRTC_ERROR_COMPILATION") || !strings.Contains(err.Error(), "undefined_name") {
		t.Errorf("a kernel that does not compile: %v", err)
	}
}

// Loading and initialising the driver is measured (DriverInitBytes: what a
// measure of the driver's host memory starting later adds), and the
// emulator says it is integrated (its device memory is the host's).
func TestEmulatorDriverHostMemory(t *testing.T) {
	if _, err := Count(); err != nil || !strings.Contains(os.Getenv("QTUNE_CUDA_DRIVER"), "cudaemu") {
		t.Skip("needs the CUDA emulator (make test-gpu-emu)")
	}
	n, loaded := DriverInitBytes()
	if !loaded || n <= 0 {
		t.Errorf("after Count: driver load measured %d bytes (loaded %v)", n, loaded)
	}
	d, err := Open(0, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if !d.Integrated {
		t.Error("the emulator does not say it is integrated")
	}
	t.Logf("loading and initialising the emulated driver: %.1f MiB resident", float64(n)/(1<<20))
}
