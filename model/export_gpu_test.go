package model

import "github.com/qtune/qtune/kernels/cuda"

// AdapterForBackForTest runs a GPU adapter's forward into y and backward
// into dx (and its gradient) outside a model, for the external tests.
func AdapterForBackForTest(d *cuda.Device, a GPUAdapter, y, dx, x, dy *cuda.Buffer, M int) error {
	g := &GPU{d: d}
	if err := a.gpuForward(g, y, x, M, nil); err != nil {
		return err
	}
	return a.gpuBackward(g, dx, dy, x, M, nil)
}
