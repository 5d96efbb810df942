package cuda

import "testing"

// BenchmarkGPUCallHop is the host's cost of one device call: handed over to
// the device's goroutine and waited for (hop), or made on the device's
// thread inside a Batch (batched), as a step's kernels and copies are.
func BenchmarkGPUCallHop(b *testing.B) {
	d := gpu(b)
	nop := func() error { return nil }
	b.Run("hop", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			must(b, d.do(nop))
		}
	})
	b.Run("batched", func(b *testing.B) {
		must(b, d.Batch(func() error {
			for i := 0; i < b.N; i++ {
				must(b, d.do(nop))
			}
			return nil
		}))
	})
}

// Inside a Batch the device's calls run on its thread (a kernel, a copy, a
// read back), nested batches too, and other goroutines' calls wait their
// turn instead of deadlocking; MemInfoHere answers from a bound thread
// while a batch holds the device's.
func TestGPUBatch(t *testing.T) {
	d := gpu(t)
	x := up(t, d, []float32{1, 2, 3, 4})
	other := make(chan error)
	err := d.Batch(func() error {
		go func() { _, _, err := d.MemInfo(); other <- err }()
		if err := d.Scale(x, 2, 4); err != nil {
			return err
		}
		if err := d.Batch(func() error { return d.Scale(x, 3, 4) }); err != nil {
			return err
		}
		bound := make(chan error)
		go func() {
			if err := d.BindThread(); err != nil {
				bound <- err
				return
			}
			_, total, err := d.MemInfoHere()
			if err == nil && total <= 0 {
				t.Errorf("MemInfoHere: total %d", total)
			}
			bound <- err
		}()
		return <-bound
	})
	must(t, err)
	must(t, <-other)
	near(t, "batched scales", down(t, x, 4), []float32{6, 12, 18, 24}, 0)
}
