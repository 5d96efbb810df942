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

// SetGPUUploadPieceForTest makes the weights go to the device n bytes at a
// time and calls seen with each piece before its pages drop; restore puts
// the defaults back.
func SetGPUUploadPieceForTest(n int64, seen func([]byte)) (restore func()) {
	old, oldHook := gpuUploadPiece, uploadHook
	gpuUploadPiece, uploadHook = n, seen
	return func() { gpuUploadPiece, uploadHook = old, oldHook }
}
