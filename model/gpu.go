package model

import (
	"context"
	"errors"
	"fmt"
	"math"
	"unsafe"

	"github.com/qtune/qtune/budget"
	"github.com/qtune/qtune/kernels"
	"github.com/qtune/qtune/kernels/cuda"
	"github.com/qtune/qtune/nn"
	"github.com/qtune/qtune/quant"
)

// GPU is a model's frozen weights resident on a CUDA device in their
// file's encoding, and LossGrad run there: the forward and backward of
// LossGrad with LoRA adapters on the device (GPULoRA), every product,
// norm, rotation, attention and loss a kernel of kernels/cuda. The
// embedding stays in host memory (one row per token is looked up there
// and copied over).
//
// Families: the Llama shape and its relatives (Llama 2/3, Mistral, SmolLM,
// TinyLlama, Phi-3 with unfused weights), Qwen2's projection biases,
// Qwen3's and Gemma 3's per-head q/k norms, Gemma 3's post-norms and GeGLU
// feed-forward; sliding windows, layers without RoPE, embedding and
// attention scales. What is refused is named (GPUSupported).
type GPU struct {
	m       *Model
	d       *cuda.Device
	prec    cuda.Precision
	layers  []gpuLayer
	outNorm *cuda.Buffer
	output  *cuda.Matrix
	freq    [2]*cuda.Buffer // the ropes' half frequencies (float64): rope, ropeSWA
	bufs    []*cuda.Buffer  // what Close frees
	ws      *cuda.Buffer    // the MatMul workspace: the largest weight decoded, and its activations rounded
	wsBytes int64
	wsM     int          // the row count wsBytes was sized for
	arena   *cuda.Buffer // LossGrad's activations and gradients, kept between calls of the same shape
	arenaBT int
	ckpt    bool                    // activation checkpointing (GPUOptions.Checkpoint)
	first   int                     // the lowest block the backward reaches (SetFirstLayer)
	normDW  map[string]*cuda.Buffer // SetNormGrads

	// Streaming: layers [0, resident) stay on the device; the others pass
	// through two device slots, uploaded from two pinned host buffers on
	// the device's Copy queue while the previous layer computes (layer l
	// takes slot l%2, so the forward's and the backward's neighbours
	// alternate).
	resident  int
	slotBytes int64
	slots     [2]*cuda.Buffer
	staging   [2]*cuda.Pinned
	copied    [2]*cuda.Event // the slot's upload is done (its staging is free again)
	released  [2]*cuda.Event // the slot's layer has finished computing
	inSlot    [2]int
	// pinnedBooked is what the staging buffers hold booked with the
	// model's accountant (released by Close).
	pinnedBooked int64
	uploads      int // layers uploaded so far (for tests and logs)
}

// GPUOptions control ToGPUWith.
type GPUOptions struct {
	// Resident is how many blocks, from the first, stay on the device;
	// the others are streamed from host memory each time they are used
	// (twice a training step). Negative or ≥ the block count: all.
	Resident int
	// Checkpoint keeps only each block's input through the forward pass
	// (one row of C floats per position and block) and recomputes the
	// block's activations, into one block's worth of buffers, just before
	// its backward: an extra forward of every block for activations that
	// no longer grow with the depth.
	Checkpoint bool
}

type gpuLayer struct {
	attnNorm, ffnNorm *cuda.Buffer
	w                 [NumModules]*cuda.Matrix
	// The families' extras, nil where the layer has none; like the norms
	// they stay on the device when the block is streamed.
	bq, bk, bv, qNorm, kNorm, postAttn, postFFN *cuda.Buffer
}

// GPUSupported says why m cannot run on the GPU path, or nil.
func (m *Model) GPUSupported() error {
	c := &m.Config
	var why []string
	if c.Act != nn.SiLU && c.Act != nn.GELUTanh {
		why = append(why, "llama.cpp's table GELU (an inference-only reproduction)")
	}
	for _, w := range append([]*kernels.Matrix{&m.Output}, m.allMatrices()...) {
		if !cuda.Supported(w.Type) {
			why = append(why, fmt.Sprintf("%s weights", w.Type))
			break
		}
	}
	if len(why) > 0 {
		return fmt.Errorf("model: the GPU path does not run %s yet (%s); use --device cpu", joinAnd(why), c.Arch)
	}
	return nil
}

func (m *Model) allMatrices() []*kernels.Matrix {
	var out []*kernels.Matrix
	for l := range m.Layers {
		for mod := Module(0); mod < NumModules; mod++ {
			out = append(out, m.Layers[l].Matrix(mod))
		}
	}
	return out
}

func joinAnd(s []string) string {
	switch len(s) {
	case 0:
		return ""
	case 1:
		return s[0]
	}
	out := s[0]
	for _, x := range s[1 : len(s)-1] {
		out += ", " + x
	}
	return out + " and " + s[len(s)-1]
}

// ToGPU copies the model's weights (as stored: 4-bit stays 4-bit) and norms
// to device d; products run at precision p (F32, or BF16 inputs with FP32
// accumulation).
func (m *Model) ToGPU(d *cuda.Device, p cuda.Precision) (*GPU, error) {
	return m.ToGPUWith(d, p, GPUOptions{Resident: -1})
}

// ToGPUWith is ToGPU with only the first o.Resident blocks' weights kept
// on the device and the others streamed through two slots.
func (m *Model) ToGPUWith(d *cuda.Device, p cuda.Precision, o GPUOptions) (g *GPU, err error) {
	if err := m.GPUSupported(); err != nil {
		return nil, err
	}
	if p == cuda.F16 {
		return nil, errors.New("model: GPU products in f16: f32 or bf16")
	}
	nl := len(m.Layers)
	res := o.Resident
	if res < 0 || res > nl {
		res = nl
	}
	g = &GPU{m: m, d: d, prec: p, resident: res, ckpt: o.Checkpoint, inSlot: [2]int{-1, -1}}
	made := g // the error returns below return a nil g: free what was made
	defer func() {
		if err != nil {
			made.Close()
		}
	}()
	vec := func(v []float32) (*cuda.Buffer, error) {
		b, err := d.Alloc(int64(4 * len(v)))
		if err != nil {
			return nil, err
		}
		g.bufs = append(g.bufs, b)
		return b, b.WriteF32(0, v)
	}
	mat := func(w *kernels.Matrix) (*cuda.Matrix, error) {
		// On the device now: each piece's pages of a mapped file may go as
		// it is copied (the host keeps no copy of the weights resident).
		dm, err := d.UploadMatrixPieces(w.Type, w.Rows, w.Cols, w.Data, int(gpuUploadPiece), m.uploaded)
		if err != nil {
			return nil, err
		}
		g.bufs = append(g.bufs, dm.Buf)
		return dm, nil
	}
	g.layers = make([]gpuLayer, len(m.Layers))
	for l := range m.Layers {
		L := &m.Layers[l]
		gl := &g.layers[l]
		if gl.attnNorm, err = vec(L.AttnNorm); err != nil {
			return nil, err
		}
		if gl.ffnNorm, err = vec(L.FFNNorm); err != nil {
			return nil, err
		}
		for _, e := range []struct {
			dst **cuda.Buffer
			v   []float32
		}{{&gl.bq, L.BQ}, {&gl.bk, L.BK}, {&gl.bv, L.BV}, {&gl.qNorm, L.QNorm}, {&gl.kNorm, L.KNorm}, {&gl.postAttn, L.PostAttnNorm}, {&gl.postFFN, L.PostFFNNorm}} {
			if e.v == nil {
				continue
			}
			if *e.dst, err = vec(e.v); err != nil {
				return nil, err
			}
		}
		if l >= res {
			continue // streamed
		}
		for mod := Module(0); mod < NumModules; mod++ {
			if gl.w[mod], err = mat(L.Matrix(mod)); err != nil {
				return nil, fmt.Errorf("model: %s to the GPU: %w", TensorName(l, mod), err)
			}
		}
	}
	if g.outNorm, err = vec(m.OutNorm); err != nil {
		return nil, err
	}
	for i, r := range m.tabledRopes() {
		if r == nil {
			continue
		}
		if g.freq[i], err = d.Alloc(8 * int64(len(r.Freq))); err != nil {
			return nil, err
		}
		g.bufs = append(g.bufs, g.freq[i])
		if err := g.freq[i].Write(0, unsafe.Slice((*byte)(unsafe.Pointer(&r.Freq[0])), 8*len(r.Freq))); err != nil {
			return nil, err
		}
	}
	// Tied, the host still reads embedding rows from it: they come back
	// from the file as they are looked up.
	if g.output, err = mat(&m.Output); err != nil {
		return nil, err
	}
	if res < nl {
		for l := res; l < nl; l++ {
			g.slotBytes = max(g.slotBytes, layerBytes(&m.Layers[l]))
		}
		// The pinned host buffers are host memory outside the Go heap:
		// booked with the host's accountant, so --max-mem holds them.
		if err := m.Acct.Reserve(budget.Pinned, -1, 2*g.slotBytes); err != nil {
			return nil, fmt.Errorf("model: the pinned host buffers the streamed blocks pass through (2 × %.1f MiB): %w", float64(g.slotBytes)/(1<<20), err)
		}
		g.pinnedBooked = 2 * g.slotBytes
		for i := range 2 {
			if g.slots[i], err = d.Alloc(g.slotBytes); err != nil {
				return nil, fmt.Errorf("model: a streaming slot: %w", err)
			}
			if g.staging[i], err = d.AllocPinned(g.slotBytes); err != nil {
				return nil, fmt.Errorf("model: a streaming buffer: %w", err)
			}
			if g.copied[i], err = d.NewEvent(); err != nil {
				return nil, err
			}
			if g.released[i], err = d.NewEvent(); err != nil {
				return nil, err
			}
		}
	}
	return g, nil
}

// slotAlign is where each matrix of a streamed layer starts in its slot.
const slotAlign = 512

// gpuUploadPiece is how much of a mapped matrix the host holds at a time
// while it goes to the device: each piece's pages leave the resident set
// once copied (a variable for the tests).
var gpuUploadPiece int64 = 4 << 20

// gpuUploadMargin is how far either side of a piece its release reaches:
// the kernel maps pages around each fault (fault-around, and the whole of
// a large folio: 2 MiB seen), behind it too and across tensors. A margin of
// 128 KiB left more resident than none (its releases ahead of the reads
// made the folios fault in again); 1 MiB left none.
const gpuUploadMargin = 1 << 20

// uploadHook, when set (tests), sees each piece of a mapped matrix before
// its pages are dropped.
var uploadHook func(piece []byte)

// uploaded ends a piece of a matrix's copy to the device: a mapped file's
// pages of it, and those mapped around it, leave the resident set.
func (m *Model) uploaded(piece []byte) {
	if uploadHook != nil {
		uploadHook(piece)
	}
	m.store.ReleaseAround(piece, gpuUploadMargin)
}

// GPUUploadHeld is the most of a matrix's pages the host holds while the
// weights go to the device: a piece and the large folios a fault maps
// around it (4 MiB above a 256 KiB piece measured: TestGPUDropsHostWeights),
// or the largest matrix when that is less.
func GPUUploadHeld(m *Model) int64 {
	var n int64
	for _, w := range append(m.allMatrices(), &m.Output) {
		n = max(n, int64(len(w.Data)))
	}
	return min(n, gpuUploadPiece+4<<20)
}

// GPUStagingBytes is the pinned host memory a GPU run holds when its
// blocks stream: two buffers the size of the largest block.
func GPUStagingBytes(m *Model) int64 {
	var n int64
	for l := range m.Layers {
		n = max(n, layerBytes(&m.Layers[l]))
	}
	return 2 * n
}

// layerBytes is what a block's seven matrices take in a slot.
func layerBytes(L *Layer) int64 {
	var n int64
	for mod := Module(0); mod < NumModules; mod++ {
		n += (int64(len(L.Matrix(mod).Data)) + slotAlign - 1) &^ (slotAlign - 1)
	}
	return n
}

// Uploads is how many times a streamed block's weights have been copied
// to the device.
func (g *GPU) Uploads() int { return g.uploads }

// load queues block l's upload into its slot (l%2) unless it is there:
// the host copies the mapped weights into the slot's pinned buffer once
// the previous upload from it is done, and the Copy queue copies them to
// the device once the slot's previous block has finished computing.
func (g *GPU) load(l int) error {
	if l < g.resident || l >= len(g.layers) {
		return nil
	}
	s := l % 2
	if g.inSlot[s] == l {
		return nil
	}
	d := g.d
	if err := g.copied[s].Sync(); err != nil {
		return err
	}
	L := &g.m.Layers[l]
	gl := &g.layers[l]
	var off int64
	for mod := Module(0); mod < NumModules; mod++ {
		w := L.Matrix(mod)
		n := int64(len(w.Data))
		// Read again from the file (or page cache) next time: streamed from
		// disk, a piece resident at a time.
		for p := int64(0); p < n; p += gpuUploadPiece {
			piece := w.Data[p:min(p+gpuUploadPiece, n)]
			copy(g.staging[s].Bytes[off+p:], piece)
			g.m.uploaded(piece)
		}
		view, err := g.slots[s].Slice(off, n)
		if err != nil {
			return err
		}
		gl.w[mod] = &cuda.Matrix{Type: w.Type, Rows: w.Rows, Cols: w.Cols, Buf: view}
		off += (n + slotAlign - 1) &^ (slotAlign - 1)
	}
	if err := d.Wait(cuda.Copy, g.released[s]); err != nil {
		return err
	}
	if err := d.UploadOn(cuda.Copy, g.slots[s], 0, g.staging[s], 0, off); err != nil {
		return err
	}
	if err := g.copied[s].Record(cuda.Copy); err != nil {
		return err
	}
	g.inSlot[s] = l
	g.uploads++
	return nil
}

// acquire makes block l's weights usable by the kernels queued next.
func (g *GPU) acquire(l int) error {
	if l < g.resident {
		return nil
	}
	if err := g.load(l); err != nil {
		return err
	}
	return g.d.Wait(cuda.Compute, g.copied[l%2])
}

// release marks block l's computing done (its slot may be refilled).
func (g *GPU) release(l int) error {
	if l < g.resident {
		return nil
	}
	return g.released[l%2].Record(cuda.Compute)
}

// Close frees the device memory the model holds.
func (g *GPU) Close() error {
	var errs []error
	for _, b := range append(g.bufs, g.ws, g.arena, g.slots[0], g.slots[1]) {
		if b != nil {
			errs = append(errs, b.Free())
		}
	}
	for i := range 2 {
		if g.staging[i] != nil {
			errs = append(errs, g.staging[i].Free())
		}
		errs = append(errs, g.copied[i].Free(), g.released[i].Free())
	}
	g.bufs, g.ws, g.arena, g.slots, g.staging = nil, nil, nil, [2]*cuda.Buffer{}, [2]*cuda.Pinned{}
	g.m.Acct.Release(budget.Pinned, -1, g.pinnedBooked)
	g.pinnedBooked = 0
	return errors.Join(errs...)
}

// GPULoRA is one LoRA adapter on the device: y += s·(x·Aᵀ)·Bᵀ, with its
// gradients GA, GB accumulated by LossGrad's backward (methods/lora's
// Layer without dropout).
type GPULoRA struct {
	In, Out, R int
	Scale      float32
	A, B       *cuda.Buffer // (R, In), (Out, R)
	GA, GB     *cuda.Buffer // same shapes
	// NoGrad: the factors do not train here (a zeroth-order part, a warm
	// start): the backward only adds the input gradient.
	NoGrad bool

	// Dropout on the A path's input, methods/lora's mask: element i of
	// the (M, In) input kept (×1/(1−p)) when the i-th draw of Go's
	// rand.NewPCG(seed, id) is ≥ p·(2³²−1). SetDropout sets it per step.
	Dropout  float32
	seed, id uint64
}

// SetDropout sets the adapter's dropout probability and the step's mask
// stream (lora.Layer.DropoutStream).
func (l *GPULoRA) SetDropout(p float32, seed, id uint64) { l.Dropout, l.seed, l.id = p, seed, id }

// drop applies the step's mask to n values of x into out (out may be x).
func (l *GPULoRA) drop(d *cuda.Device, out, x *cuda.Buffer, n int) error {
	keep := 1 / (1 - l.Dropout)
	th := uint32(float64(l.Dropout) * math.MaxUint32)
	return d.Dropout(out, x, int64(n), l.seed, l.id, th, keep)
}

// GPUAdapter is an adapter on the device, added to one linear layer y =
// x·Wᵀ: its forward adds to y, its backward accumulates its own gradients
// (when it trains) and adds its share of dx. The kinds: *GPULoRA,
// *GPUSparse, *GPUDense, and GPUStack of several.
type GPUAdapter interface {
	gpuForward(g *GPU, y, x *cuda.Buffer, M int, s *gpuStep) error
	gpuBackward(g *GPU, dx, dy, x *cuda.Buffer, M int, s *gpuStep) error
}

// GPUStack applies several adapters to one layer: outputs and input
// gradients add (loho.Stack on the device).
type GPUStack []GPUAdapter

func (st GPUStack) gpuForward(g *GPU, y, x *cuda.Buffer, M int, s *gpuStep) error {
	for _, a := range st {
		if err := a.gpuForward(g, y, x, M, s); err != nil {
			return err
		}
	}
	return nil
}

func (st GPUStack) gpuBackward(g *GPU, dx, dy, x *cuda.Buffer, M int, s *gpuStep) error {
	for _, a := range st {
		if err := a.gpuBackward(g, dx, dy, x, M, s); err != nil {
			return err
		}
	}
	return nil
}

// GPUAdapters holds an optional device adapter per layer and module.
type GPUAdapters [][NumModules]GPUAdapter

// loras calls f for every LoRA adapter of ad, inside stacks too.
func (ad GPUAdapters) loras(f func(*GPULoRA)) {
	var each func(a GPUAdapter)
	each = func(a GPUAdapter) {
		switch x := a.(type) {
		case *GPULoRA:
			f(x)
		case GPUStack:
			for _, y := range x {
				each(y)
			}
		}
	}
	for _, row := range ad {
		for _, a := range row {
			if a != nil {
				each(a)
			}
		}
	}
}

// maxRank is the largest rank of ad's adapters (the step's scratch for
// their products is sized by it), 1 without any.
func (ad GPUAdapters) maxRank() int {
	R := 1
	ad.loras(func(a *GPULoRA) { R = max(R, a.R) })
	return R
}

// dropIn is the widest input of ad's adapters with dropout (the step's
// scratch for the masked input is sized by it), 0 without any.
func (ad GPUAdapters) dropIn() int {
	n := 0
	ad.loras(func(a *GPULoRA) {
		if a.Dropout > 0 {
			n = max(n, a.In)
		}
	})
	return n
}

// NewGPULoRA copies an adapter's factors to d, with zeroed gradients.
func NewGPULoRA(d *cuda.Device, in, out, r int, scale float32, a, b []float32) (*GPULoRA, error) {
	if len(a) != r*in || len(b) != out*r {
		return nil, fmt.Errorf("model: LoRA factors of %d and %d values for r=%d, %d→%d", len(a), len(b), r, in, out)
	}
	l := &GPULoRA{In: in, Out: out, R: r, Scale: scale}
	for _, p := range []struct {
		dst **cuda.Buffer
		v   []float32
		n   int
	}{{&l.A, a, r * in}, {&l.B, b, out * r}, {&l.GA, nil, r * in}, {&l.GB, nil, out * r}} {
		buf, err := d.Alloc(int64(4 * p.n))
		if err != nil {
			l.Free()
			return nil, err
		}
		*p.dst = buf
		if p.v != nil {
			err = buf.WriteF32(0, p.v)
		} else {
			err = buf.Zero()
		}
		if err != nil {
			l.Free()
			return nil, err
		}
	}
	return l, nil
}

// Free releases the adapter's device memory.
func (l *GPULoRA) Free() error {
	return errors.Join(l.A.Free(), l.B.Free(), l.GA.Free(), l.GB.Free())
}

// carver hands out float32 views of one device buffer in order.
type carver struct {
	b   *cuda.Buffer
	off int
	err error
}

func (c *carver) take(n int) *cuda.Buffer {
	if c.err != nil {
		return nil
	}
	v, err := c.b.F32(c.off, n)
	if err != nil {
		c.err = err
		return nil
	}
	c.off += (n + 63) &^ 63 // 256-byte aligned views
	return v
}

// gpuActs are one block's activations on the device, as layerActs (qraw,
// kraw: the q/k norms' inputs; ao, fo: the post-norms' inputs; nil where
// the family has none).
type gpuActs struct {
	xin, xn1, q, k, v, lse, att, xmid, xn2, g, u, h *cuda.Buffer
	qraw, kraw, ao, fo                              *cuda.Buffer
}

// gpuStep is LossGrad's device memory for BT rows: the kept activations of
// every block, the residual streams, the logits, the backward's gradients
// and the adapters' scratch.
type gpuStep struct {
	acts                                  []gpuActs
	x, tmp, xnf, logits, loss, targets    *cuda.Buffer
	dx, dxn, dh, dg, du, datt, dq, dk, dv *cuda.Buffer
	delta                                 *cuda.Buffer // attention backward scratch (H, T) per sequence
	lh, ldh                               *cuda.Buffer // adapter (M, R) products
	cos, sin, cosSWA, sinSWA              *cuda.Buffer
	dpost, dnorm                          *cuda.Buffer // post-norm and q/k-norm backward scratch (nil where unused)
	xdrop, tdrop                          *cuda.Buffer // LoRA dropout: the masked input, the input gradient through the mask
	recomp                                *cuda.Buffer // checkpointing: the recomputed block's output
	kv                                    *GPUSession  // decoding: the KV cache the rows join, at position pos
	pos                                   int
	w                                     *cuda.Matrix // the frozen weight of the layer whose adapter runs
	part                                  *cuda.Buffer // decoding: a token's attention split across blocks
}

// al rounds a carved buffer's floats up as the carver does.
func al(n int) int { return (n + 63) &^ 63 }

// actFloats is one block's activations for BT rows (carveActs).
func (g *GPU) actFloats(BT int) int {
	c := g.m.Config
	C, F := c.Dim, c.Hidden
	qd, kvd := c.Heads*c.HeadDim, c.KVHeads*c.HeadDim
	per := al(BT*C)*4 + al(BT*qd)*2 + al(BT*kvd)*2 + al(BT*c.Heads) + al(BT*F)*3
	if c.qkNorm {
		per += al(BT*qd) + al(BT*kvd)
	}
	if c.postNorms {
		per += al(BT*C) * 2
	}
	return per
}

// carveActs carves one block's activations for BT rows.
func (g *GPU) carveActs(cv *carver, a *gpuActs, BT int) {
	c := g.m.Config
	C, F := c.Dim, c.Hidden
	qd, kvd := c.Heads*c.HeadDim, c.KVHeads*c.HeadDim
	a.xin, a.xn1, a.q, a.k, a.v = cv.take(BT*C), cv.take(BT*C), cv.take(BT*qd), cv.take(BT*kvd), cv.take(BT*kvd)
	a.lse, a.att, a.xmid, a.xn2 = cv.take(BT*c.Heads), cv.take(BT*qd), cv.take(BT*C), cv.take(BT*C)
	a.g, a.u, a.h = cv.take(BT*F), cv.take(BT*F), cv.take(BT*F)
	if c.qkNorm {
		a.qraw, a.kraw = cv.take(BT*qd), cv.take(BT*kvd)
	}
	if c.postNorms {
		a.ao, a.fo = cv.take(BT*C), cv.take(BT*C)
	}
}

func (g *GPU) stepFloats(BT, T, R, dropIn int) int {
	c := g.m.Config
	C, F, V := c.Dim, c.Hidden, c.Vocab
	qd, kvd := c.Heads*c.HeadDim, c.KVHeads*c.HeadDim
	per := g.actFloats(BT)
	n := c.Layers * per
	if g.ckpt { // each block's input, and one block's activations
		n = c.Layers*al(BT*C) + per + al(BT*C)
	}
	if c.qkNorm {
		n += al(BT * qd)
	}
	if c.postNorms {
		n += al(BT * C)
	}
	n += 2 * al(BT*dropIn)
	n += al(BT*C)*3 + al(BT*V) + al(BT) + al(BT)                           // x, tmp, xnf, logits, loss, targets
	n += al(BT*C)*2 + al(BT*F)*3 + al(BT*qd)*2 + al(BT*kvd)*2 + al(BT*R)*2 // gradients, adapter scratch
	n += al(BT * c.Heads)                                                  // attention backward scratch
	n += 4 * al(T*max(g.m.rope.Dims/2, 1))                                 // rope tables
	return n
}

// GPUWeightBytes is what ToGPU puts on the device for the weights: each
// block's seven matrices as stored (what a streaming slot holds too), and
// the rest (the output projection, apart even when tied, and the norms).
func GPUWeightBytes(m *Model) (layers []int64, other int64) {
	al := func(n int64) int64 { return (n + 511) &^ 511 }
	layers = make([]int64, len(m.Layers))
	for l := range m.Layers {
		layers[l] = layerBytes(&m.Layers[l])
	}
	other = al(int64(len(m.Output.Data))) + al(4*int64(len(m.OutNorm)))
	for _, r := range m.tabledRopes() {
		if r != nil {
			other += al(8 * int64(len(r.Freq))) // the frequencies (ropeTables)
		}
	}
	for l := range m.Layers {
		L := &m.Layers[l]
		for _, v := range [][]float32{L.AttnNorm, L.FFNNorm, L.BQ, L.BK, L.BV, L.QNorm, L.KNorm, L.PostAttnNorm, L.PostFFNNorm} {
			if v != nil {
				other += al(4 * int64(len(v)))
			}
		}
	}
	return layers, other
}

// GPUStepBytes is what LossGrad of micro-batches B×T with adapters of
// rank up to R holds on the device at precision p: activations,
// gradients, logits and the products' workspace; dropIn is the widest
// input of an adapter with dropout (0: none); ckpt: with activation
// checkpointing.
func GPUStepBytes(m *Model, B, T, R, dropIn int, p cuda.Precision, ckpt bool) int64 {
	g := &GPU{m: m, prec: p, ckpt: ckpt}
	var ws int64
	for _, w := range append(m.allMatrices(), &m.Output) {
		ws = max(ws, cuda.MatMulWorkspace(B*T, &cuda.Matrix{Type: w.Type, Rows: w.Rows, Cols: w.Cols}, p))
	}
	return 4*int64(g.stepFloats(B*T, T, max(R, 1), dropIn)) + (ws+511)&^511
}

func (g *GPU) workspace(M int) (*cuda.Buffer, error) {
	if g.ws != nil && M == g.wsM {
		return g.ws, nil
	}
	var need int64 // from the host's shapes: a streamed block has no device matrix until loaded
	for _, w := range append(g.m.allMatrices(), &g.m.Output) {
		need = max(need, cuda.MatMulWorkspace(M, &cuda.Matrix{Type: w.Type, Rows: w.Rows, Cols: w.Cols}, g.prec))
	}
	if g.ws != nil && g.wsBytes >= need {
		g.wsM = M
		return g.ws, nil
	}
	if g.ws != nil {
		g.ws.Free()
		g.ws = nil
	}
	ws, err := g.d.Alloc(need)
	if err != nil {
		return nil, err
	}
	g.ws, g.wsBytes, g.wsM = ws, need, M
	return ws, nil
}

// linear is y = x·Wᵀ (+ the adapter) for M rows.
func (g *GPU) linear(y, x *cuda.Buffer, M int, w *cuda.Matrix, a GPUAdapter, s *gpuStep) error {
	if err := g.matmul(y, x, M, w); err != nil {
		return err
	}
	if a == nil {
		return nil
	}
	s.w = w
	return a.gpuForward(g, y, x, M, s)
}

func (l *GPULoRA) gpuForward(g *GPU, y, x *cuda.Buffer, M int, s *gpuStep) error {
	d := g.d
	h := s.lh
	xd, err := g.dropped(x, M, l, s)
	if err != nil {
		return err
	}
	if err := d.GemmNT(h, xd, l.A, M, l.R, l.In, false, cuda.F32); err != nil {
		return err
	}
	if err := d.Scale(h, l.Scale, int64(M*l.R)); err != nil {
		return err
	}
	return d.GemmNT(y, h, l.B, M, l.Out, l.R, true, cuda.F32)
}

// dropped is the adapter's input x (M rows) with the step's dropout mask
// applied (in s.xdrop), or x itself without dropout.
func (g *GPU) dropped(x *cuda.Buffer, M int, a *GPULoRA, s *gpuStep) (*cuda.Buffer, error) {
	if a.Dropout <= 0 {
		return x, nil
	}
	if s.xdrop == nil || s.xdrop.Bytes < 4*int64(M*a.In) {
		return nil, fmt.Errorf("model: no room for the dropout mask of %d×%d", M, a.In)
	}
	return s.xdrop, a.drop(g.d, s.xdrop, x, M*a.In)
}

func (g *GPU) matmul(y, x *cuda.Buffer, M int, w *cuda.Matrix) error {
	if M <= 4 {
		return g.d.MatVec(y, x, M, w)
	}
	ws, err := g.workspace(M)
	if err != nil {
		return err
	}
	return g.d.MatMul(y, x, M, w, ws, g.prec)
}

// linearBack is dx += dy·W (+ the adapter's input gradient) and the
// adapter's gradients, for M rows whose input was x.
func (g *GPU) linearBack(dx, dy, x *cuda.Buffer, M int, w *cuda.Matrix, a GPUAdapter, s *gpuStep) error {
	d := g.d
	ws, err := g.workspace(M)
	if err != nil {
		return err
	}
	if err := d.MatMulT(dx, dy, M, w, ws, g.prec); err != nil {
		return err
	}
	if a == nil {
		return nil
	}
	s.w = w
	return a.gpuBackward(g, dx, dy, x, M, s)
}

func (a *GPULoRA) gpuBackward(g *GPU, dx, dy, x *cuda.Buffer, M int, s *gpuStep) error {
	d := g.d
	h, dh := s.lh, s.ldh
	// h = s·xd·Aᵀ; GB += dyᵀ·h; dh = s·dy·B; GA += dhᵀ·xd; dx += mask(dh·A)
	// (xd: x through the step's dropout mask, x itself without); a
	// NoGrad adapter only passes dx on.
	xd, err := g.dropped(x, M, a, s)
	if err != nil {
		return err
	}
	if !a.NoGrad {
		if err := d.GemmNT(h, xd, a.A, M, a.R, a.In, false, cuda.F32); err != nil {
			return err
		}
		if err := d.Scale(h, a.Scale, int64(M*a.R)); err != nil {
			return err
		}
		if err := d.GemmTN(a.GB, dy, h, a.Out, a.R, M, cuda.F32); err != nil {
			return err
		}
	}
	if err := dh.Zero(); err != nil {
		return err
	}
	if err := d.GemmNN(dh, dy, a.B, M, a.R, a.Out, cuda.F32); err != nil {
		return err
	}
	if err := d.Scale(dh, a.Scale, int64(M*a.R)); err != nil {
		return err
	}
	if !a.NoGrad {
		if err := d.GemmTN(a.GA, dh, xd, a.R, a.In, M, cuda.F32); err != nil {
			return err
		}
	}
	if a.Dropout <= 0 {
		return d.GemmNN(dx, dh, a.A, M, a.In, a.R, cuda.F32)
	}
	t, err := s.tdrop.F32(0, M*a.In)
	if err != nil {
		return err
	}
	if err := t.Zero(); err != nil {
		return err
	}
	if err := d.GemmNN(t, dh, a.A, M, a.In, a.R, cuda.F32); err != nil {
		return err
	}
	if err := a.drop(d, t, t, M*a.In); err != nil {
		return err
	}
	return d.Axpy(dx, t, 1, int64(M*a.In))
}

func adapterAt(ad GPUAdapters, l int, mod Module) GPUAdapter {
	if l < len(ad) {
		return ad[l][mod]
	}
	return nil
}

// LossGrad is Model.LossGrad on the device for LoRA adapters (nil: none):
// the summed cross-entropy over targeted positions and their count, and
// with backward the gradients of scale·loss accumulated into each
// adapter's GA and GB. Every block's activations are kept on the device
// (no checkpointing).
func (g *GPU) LossGrad(tokens, targets []int, B, T int, ad GPUAdapters, backward bool, scale float64) (loss float64, n int, err error) {
	err = g.d.Batch(func() (e error) { // one hand-over to the device's thread for the step's thousands of calls
		loss, n, e = g.lossGrad(tokens, targets, B, T, ad, backward, scale)
		return e
	})
	return loss, n, err
}

func (g *GPU) lossGrad(tokens, targets []int, B, T int, ad GPUAdapters, backward bool, scale float64) (float64, int, error) {
	m := g.m
	c := m.Config
	BT := B * T
	if err := c.checkBatch(tokens, targets, B, T); err != nil {
		return 0, 0, err
	}
	tg32 := make([]int32, BT)
	count := 0
	for i, t := range targets {
		tg32[i] = int32(t)
		if t >= 0 {
			count++
		}
	}
	s, err := g.forward(tokens, tg32, B, T, ad)
	if err != nil {
		return 0, 0, err
	}
	d := g.d
	C, V := c.Dim, c.Vocab
	var dlog *cuda.Buffer
	if backward {
		dlog = s.logits // the gradient replaces the logits in place, row by row
	}
	if err := d.CrossEntropyInPlace(dlog, s.loss, s.logits, s.targets, BT, V, float32(scale)); err != nil {
		return 0, 0, err
	}
	rowLoss := make([]float32, BT)
	if err := s.loss.ReadF32(rowLoss, 0); err != nil {
		return 0, 0, err
	}
	var loss float64
	for _, v := range rowLoss {
		loss += float64(v)
	}
	if math.IsNaN(loss) || math.IsInf(loss, 0) {
		return loss, count, fmt.Errorf("model: loss is %v", loss)
	}
	if !backward {
		return loss, count, nil
	}
	// Backward: dxnf = dlogits·Wout, then the final norm into dx.
	if err := s.dx.Zero(); err != nil {
		return 0, 0, err
	}
	dxnf := s.tmp
	if err := dxnf.Zero(); err != nil {
		return 0, 0, err
	}
	ws, err := g.workspace(BT)
	if err != nil {
		return 0, 0, err
	}
	if err := d.MatMulT(dxnf, dlog, BT, g.output, ws, g.prec); err != nil {
		return 0, 0, err
	}
	if err := d.RMSNormBackward(s.dx, g.normDW["output_norm.weight"], dxnf, s.x, g.outNorm, BT, C, c.Eps); err != nil {
		return 0, 0, err
	}
	for l := len(m.Layers) - 1; l >= g.first; l-- {
		if err := g.acquire(l); err != nil {
			return 0, 0, err
		}
		if g.ckpt { // the block's activations again, from its kept input
			a := &s.acts[l]
			if err := d.Copy(s.recomp, 0, a.xin, 0, int64(4*B*T*C)); err != nil {
				return 0, 0, err
			}
			if err := g.layerForward(l, a, s.recomp, B, T, ad, s); err != nil {
				return 0, 0, err
			}
		}
		if err := g.layerBackward(l, &s.acts[l], B, T, ad, s); err != nil {
			return 0, 0, err
		}
		if err := g.release(l); err != nil {
			return 0, 0, err
		}
		if l > g.first {
			if err := g.load(l - 1); err != nil {
				return 0, 0, err
			}
		}
	}
	return loss, count, d.Sync()
}

// SetFirstLayer makes LossGrad's backward stop at block l (StepOptions.
// FirstLayer): the blocks below get no gradients, their adapters none
// (LoHO's inter-layer split: first order above, zeroth order below).
func (g *GPU) SetFirstLayer(l int) { g.first = min(max(l, 0), len(g.m.Layers)) }

// SetNormGrads makes LossGrad's backward accumulate the gradients of the
// norm weights it names (blk.N.attn_norm.weight, blk.N.ffn_norm.weight,
// output_norm.weight: StepOptions.WeightGrads's names) into the device
// buffers given; nil: none. LoReML's second stage trains the norms.
func (g *GPU) SetNormGrads(dw map[string]*cuda.Buffer) { g.normDW = dw }

// normGrad is the gradient buffer of block l's norm kind (attn_norm,
// ffn_norm), nil when none is trained (no name formatted then).
func (g *GPU) normGrad(l int, kind string) *cuda.Buffer {
	if len(g.normDW) == 0 {
		return nil
	}
	return g.normDW[fmt.Sprintf("blk.%d.%s.weight", l, kind)]
}

// FloatBuffer is the device's copy of the float32 tensor name as the host
// names it (a norm; an F32 matrix of a resident block; the F32 output
// projection, which is also token_embd.weight's copy when tied): what a
// zeroth-order method perturbs there. An error where the device has none.
func (g *GPU) FloatBuffer(name string) (*cuda.Buffer, error) {
	if b := g.NormWeight(name); b != nil {
		return b, nil
	}
	mat := func(w *cuda.Matrix) (*cuda.Buffer, error) {
		if w == nil {
			return nil, fmt.Errorf("model: %s is not resident on the GPU (streamed)", name)
		}
		if w.Type != quant.F32 {
			return nil, fmt.Errorf("model: %s is %s on the GPU, not F32", name, w.Type)
		}
		return w.Buf, nil
	}
	if name == "output.weight" || name == "token_embd.weight" && g.m.Config.Tied {
		return mat(g.output)
	}
	for l := range g.layers {
		for mod := Module(0); mod < NumModules; mod++ {
			if TensorName(l, mod) == name {
				if l >= g.resident {
					return mat(nil)
				}
				return mat(g.layers[l].w[mod])
			}
		}
	}
	return nil, fmt.Errorf("model: no device copy of %s", name)
}

// NormWeight is the device copy of a norm weight by its GGUF name (the
// names SetNormGrads takes), nil when the model has none: a run that
// trains norms writes their new values there.
func (g *GPU) NormWeight(name string) *cuda.Buffer {
	if name == "output_norm.weight" {
		return g.outNorm
	}
	var l int
	var kind string
	if n, _ := fmt.Sscanf(name, "blk.%d.%s", &l, &kind); n != 2 || l < 0 || l >= len(g.layers) {
		return nil
	}
	switch kind {
	case "attn_norm.weight":
		return g.layers[l].attnNorm
	case "ffn_norm.weight":
		return g.layers[l].ffnNorm
	}
	return nil
}

// forward runs the blocks, the final norm and the output projection:
// s.logits holds (B·T, V).
func (g *GPU) forward(tokens []int, targets []int32, B, T int, ad GPUAdapters) (*gpuStep, error) {
	c := g.m.Config
	s, err := g.step(B*T, T, ad.maxRank(), ad.dropIn())
	if err != nil {
		return nil, err
	}
	if err := g.embed(s.x, tokens); err != nil {
		return nil, err
	}
	if len(targets) > 0 {
		tb := unsafe.Slice((*byte)(unsafe.Pointer(&targets[0])), 4*len(targets))
		if err := s.targets.Write(0, tb); err != nil {
			return nil, err
		}
	}
	if err := g.ropeTables(s, 0, T); err != nil {
		return nil, err
	}
	if err := g.blocks(s, B, T, ad); err != nil {
		return nil, err
	}
	if err := g.d.RMSNorm(s.xnf, s.x, g.outNorm, B*T, c.Dim, c.Eps); err != nil {
		return nil, err
	}
	return s, g.matmul(s.logits, s.xnf, B*T, g.output)
}

// blocks runs every block on s.x (B sequences of T rows), the streamed
// ones through their slots.
func (g *GPU) blocks(s *gpuStep, B, T int, ad GPUAdapters) error {
	for l := range g.m.Layers {
		if err := g.acquire(l); err != nil {
			return err
		}
		if err := g.layerForward(l, &s.acts[l], s.x, B, T, ad, s); err != nil {
			return err
		}
		if err := g.release(l); err != nil {
			return err
		}
		if err := g.load(l + 1); err != nil { // overlaps block l's work
			return err
		}
	}
	return nil
}

// Greedy continues prompt by n tokens, each the argmax of the last
// position's logits, through a GPU session (the KV cache on the device).
// It stops at the context length.
func (g *GPU) Greedy(prompt []int, n int, ad GPUAdapters) ([]int, error) {
	se, err := g.Session(len(prompt)+n, ad)
	if err != nil {
		return nil, err
	}
	defer se.Free()
	return se.Generate(context.Background(), prompt, GenerateOptions{MaxTokens: n})
}

func zero(bs ...*cuda.Buffer) error {
	for _, b := range bs {
		if err := b.Zero(); err != nil {
			return err
		}
	}
	return nil
}

// step carves (or keeps) the device memory of a step of BT rows.
func (g *GPU) step(BT, T, R, dropIn int) (*gpuStep, error) {
	n := g.stepFloats(BT, T, max(R, 1), dropIn)
	if g.arena == nil || g.arena.Bytes < int64(4*n) {
		if g.arena != nil {
			g.arena.Free()
			g.arena = nil
		}
		b, err := g.d.Alloc(int64(4 * n))
		if err != nil {
			return nil, fmt.Errorf("model: the GPU step of %d rows: %w", BT, err)
		}
		g.arena = b
	}
	c := g.m.Config
	C, F, V := c.Dim, c.Hidden, c.Vocab
	qd, kvd := c.Heads*c.HeadDim, c.KVHeads*c.HeadDim
	cv := &carver{b: g.arena}
	s := &gpuStep{acts: make([]gpuActs, c.Layers)}
	carve := s.acts
	if g.ckpt { // one block's activations, shared; each block's own input
		carve = make([]gpuActs, 1)
	}
	for l := range carve {
		g.carveActs(cv, &carve[l], BT)
	}
	if g.ckpt {
		for l := range s.acts {
			s.acts[l] = carve[0]
			s.acts[l].xin = cv.take(BT * C)
		}
		s.recomp = cv.take(BT * C)
	}
	if c.qkNorm {
		s.dnorm = cv.take(BT * qd)
	}
	if c.postNorms {
		s.dpost = cv.take(BT * C)
	}
	if dropIn > 0 {
		s.xdrop, s.tdrop = cv.take(BT*dropIn), cv.take(BT*dropIn)
	}
	s.x, s.tmp, s.xnf, s.logits, s.loss, s.targets = cv.take(BT*C), cv.take(BT*C), cv.take(BT*C), cv.take(BT*V), cv.take(BT), cv.take(BT)
	s.dx, s.dxn = cv.take(BT*C), cv.take(BT*C)
	s.dh, s.dg, s.du = cv.take(BT*F), cv.take(BT*F), cv.take(BT*F)
	s.datt, s.dq, s.dk, s.dv = cv.take(BT*qd), cv.take(BT*qd), cv.take(BT*kvd), cv.take(BT*kvd)
	r := max(R, 1)
	s.lh, s.ldh = cv.take(BT*r), cv.take(BT*r)
	s.delta = cv.take(BT * c.Heads)
	half := max(g.m.rope.Dims/2, 1)
	s.cos, s.sin, s.cosSWA, s.sinSWA = cv.take(T*half), cv.take(T*half), cv.take(T*half), cv.take(T*half)
	return s, cv.err
}

// embed writes the (scaled) embedding rows of tokens to x.
func (g *GPU) embed(x *cuda.Buffer, tokens []int) error {
	m := g.m
	C := m.Config.Dim
	e := make([]float32, len(tokens)*C)
	for r, id := range tokens {
		m.Embed.Row(e[r*C:(r+1)*C], id)
	}
	if es := m.Config.EmbedScale; es != 0 && es != 1 {
		for i := range e {
			e[i] *= es
		}
	}
	return x.WriteF32(0, e)
}

// tabledRopes are the model's ropes (the global one, the sliding window's)
// that rotate anything, nil for one that does not: those the device makes
// tables of.
func (m *Model) tabledRopes() [2]*nn.Rope {
	var rs [2]*nn.Rope
	for i, r := range []*nn.Rope{&m.rope, &m.ropeSWA} {
		if len(r.Freq) > 0 && r.Dims/2 > 0 {
			rs[i] = r
		}
	}
	return rs
}

// ropeTables makes the rotation tables of positions p0..p0+T−1 on the
// device (nn.Rope.Row there: a decoded token costs a launch, not four
// copies from the host).
func (g *GPU) ropeTables(s *gpuStep, p0, T int) error {
	for i, r := range g.m.tabledRopes() {
		if r == nil {
			continue
		}
		dc, ds := s.cos, s.sin
		if i == 1 {
			dc, ds = s.cosSWA, s.sinSWA
		}
		if err := g.d.RopeTable(dc, ds, g.freq[i], len(r.Freq), int64(p0), T, r.Scale, float32(r.Mscale)); err != nil {
			return err
		}
	}
	return nil
}

// rope rotates M rows of n heads (forward, or back) with layer l's table.
func (g *GPU) rope(l int, y *cuda.Buffer, M, T, n int, s *gpuStep, back bool) error {
	r := g.m.ropeOf(l)
	if r == nil || r.Dims == 0 {
		return nil
	}
	cs, sn := s.cos, s.sin
	if r == &g.m.ropeSWA {
		cs, sn = s.cosSWA, s.sinSWA
	}
	return g.d.RopeSeqs(y, cs, sn, M, T, n, g.m.Config.HeadDim, r.Dims/2, r.Neox, back)
}

// block returns what a block's passes use: the config, the layer, its
// device weights, and each module's weight and adapter.
func (g *GPU) block(l int, ad GPUAdapters) (Config, *Layer, *gpuLayer, func(Module) (*cuda.Matrix, GPUAdapter)) {
	gl := &g.layers[l]
	return g.m.Config, &g.m.Layers[l], gl, func(mod Module) (*cuda.Matrix, GPUAdapter) { return gl.w[mod], adapterAt(ad, l, mod) }
}

// runSteps runs a block's queued operations in order, naming the block
// (format takes l and the error) in the first that fails.
func runSteps(format string, l int, steps []func() error) error {
	for _, f := range steps {
		if err := f(); err != nil {
			return fmt.Errorf(format, l, err)
		}
	}
	return nil
}

// layerForward is Model.layerForward on the device: block l on a.xin = x,
// the block output written back to x.
func (g *GPU) layerForward(l int, a *gpuActs, x *cuda.Buffer, B, T int, ad GPUAdapters, s *gpuStep) error {
	m, d := g.m, g.d
	c, L, gl, w := g.block(l, ad)
	D := c.HeadDim
	qd, kvd := c.Heads*D, c.KVHeads*D
	BT := B * T
	C, F := c.Dim, c.Hidden
	return runSteps("model: GPU block %d: %w", l, []func() error{
		func() error { return d.Copy(a.xin, 0, x, 0, int64(4*BT*C)) },
		func() error { return d.RMSNorm(a.xn1, a.xin, gl.attnNorm, BT, C, c.Eps) },
		func() error { wq, aq := w(ModQ); return g.linear(a.q, a.xn1, BT, wq, aq, s) },
		func() error { return g.finishQK(l, a.q, BT, c.Heads, gl.bq, gl.qNorm, a.qraw) },
		func() error { return g.rope(l, a.q, BT, T, c.Heads, s, false) },
		func() error {
			if q := m.qScale(); q != 1 {
				return d.Scale(a.q, q, int64(BT*qd))
			}
			return nil
		},
		func() error { wk, ak := w(ModK); return g.linear(a.k, a.xn1, BT, wk, ak, s) },
		func() error { return g.finishQK(l, a.k, BT, c.KVHeads, gl.bk, gl.kNorm, a.kraw) },
		func() error { return g.rope(l, a.k, BT, T, c.KVHeads, s, false) },
		func() error { wv, av := w(ModV); return g.linear(a.v, a.xn1, BT, wv, av, s) },
		func() error {
			if gl.bv != nil {
				return d.AddRows(a.v, gl.bv, BT, kvd)
			}
			return nil
		},
		func() error {
			if kv := s.kv; kv != nil { // decoding: the new rows join the cache, the queries see all of it
				n := int64(4 * T * kvd)
				if err := d.Copy(kv.k[l], int64(4*s.pos*kvd), a.k, 0, n); err != nil {
					return err
				}
				if err := d.Copy(kv.v[l], int64(4*s.pos*kvd), a.v, 0, n); err != nil {
					return err
				}
				if T == 1 && s.part != nil { // one token over a cache that may be long: the keys split across blocks
					return d.AttentionDecode(a.att, a.lse, a.q, kv.k[l], kv.v[l], s.part, s.pos+1, c.Heads, c.KVHeads, D, L.Window)
				}
				return d.AttentionCached(a.att, a.lse, a.q, kv.k[l], kv.v[l], T, s.pos+T, c.Heads, c.KVHeads, D, L.Window)
			}
			return d.Attention(a.att, a.lse, a.q, a.k, a.v, B, T, c.Heads, c.KVHeads, D, L.Window)
		},
		func() error { wo, ao := w(ModO); return g.linear(s.tmp, a.att, BT, wo, ao, s) },
		func() error { return g.postNorm(s.tmp, a.ao, gl.postAttn, BT) },
		func() error { return d.Copy(a.xmid, 0, a.xin, 0, int64(4*BT*C)) },
		func() error { return d.Axpy(a.xmid, s.tmp, 1, int64(BT*C)) },
		func() error { return d.RMSNorm(a.xn2, a.xmid, gl.ffnNorm, BT, C, c.Eps) },
		func() error { wg, ag := w(ModGate); return g.linear(a.g, a.xn2, BT, wg, ag, s) },
		func() error { wu, au := w(ModUp); return g.linear(a.u, a.xn2, BT, wu, au, s) },
		func() error {
			if c.Act == nn.GELUTanh {
				return d.GeGLU(a.h, a.g, a.u, int64(BT*F))
			}
			return d.SwiGLU(a.h, a.g, a.u, int64(BT*F))
		},
		func() error { wd, adn := w(ModDown); return g.linear(x, a.h, BT, wd, adn, s) },
		func() error { return g.postNorm(x, a.fo, gl.postFFN, BT) },
		func() error { return d.Axpy(x, a.xmid, 1, int64(BT*C)) },
	})
}

// layerBackward is Model.layerBackward on the device: s.dx, the gradient
// of the block's output, becomes that of its input.
func (g *GPU) layerBackward(l int, a *gpuActs, B, T int, ad GPUAdapters, s *gpuStep) error {
	m, d := g.m, g.d
	c, L, gl, w := g.block(l, ad)
	D := c.HeadDim
	qd := c.Heads * D
	BT := B * T
	C, F := c.Dim, c.Hidden
	return runSteps("model: GPU block %d backward: %w", l, []func() error{
		// FFN
		func() error { return zero(s.dh, s.dg, s.du, s.dxn) },
		func() error {
			wd, adn := w(ModDown)
			dffn, err := g.postNormBack(s, s.dx, a.fo, gl.postFFN, BT)
			if err != nil {
				return err
			}
			return g.linearBack(s.dh, dffn, a.h, BT, wd, adn, s)
		},
		func() error {
			if c.Act == nn.GELUTanh {
				return d.GeGLUBackward(s.dg, s.du, s.dh, a.g, a.u, int64(BT*F))
			}
			return d.SwiGLUBackward(s.dg, s.du, s.dh, a.g, a.u, int64(BT*F))
		},
		func() error { wg, ag := w(ModGate); return g.linearBack(s.dxn, s.dg, a.xn2, BT, wg, ag, s) },
		func() error { wu, au := w(ModUp); return g.linearBack(s.dxn, s.du, a.xn2, BT, wu, au, s) },
		func() error {
			return d.RMSNormBackward(s.dx, g.normGrad(l, "ffn_norm"), s.dxn, a.xmid, gl.ffnNorm, BT, C, c.Eps)
		},
		// Attention
		func() error { return zero(s.datt, s.dq, s.dk, s.dv, s.dxn) },
		func() error {
			wo, ao := w(ModO)
			dattn, err := g.postNormBack(s, s.dx, a.ao, gl.postAttn, BT)
			if err != nil {
				return err
			}
			return g.linearBack(s.datt, dattn, a.att, BT, wo, ao, s)
		},
		func() error {
			return d.AttentionBackward(s.dq, s.dk, s.dv, s.datt, a.q, a.k, a.v, a.att, a.lse, s.delta, B, T, c.Heads, c.KVHeads, D, L.Window)
		},
		func() error {
			if q := m.qScale(); q != 1 {
				return d.Scale(s.dq, q, int64(BT*qd))
			}
			return nil
		},
		func() error { return g.rope(l, s.dq, BT, T, c.Heads, s, true) },
		func() error { return g.rope(l, s.dk, BT, T, c.KVHeads, s, true) },
		func() error { return g.unnormQK(s, s.dq, a.qraw, gl.qNorm, BT*c.Heads) },
		func() error { return g.unnormQK(s, s.dk, a.kraw, gl.kNorm, BT*c.KVHeads) },
		func() error { wq, aq := w(ModQ); return g.linearBack(s.dxn, s.dq, a.xn1, BT, wq, aq, s) },
		func() error { wk, ak := w(ModK); return g.linearBack(s.dxn, s.dk, a.xn1, BT, wk, ak, s) },
		func() error { wv, av := w(ModV); return g.linearBack(s.dxn, s.dv, a.xn1, BT, wv, av, s) },
		func() error {
			return d.RMSNormBackward(s.dx, g.normGrad(l, "attn_norm"), s.dxn, a.xin, gl.attnNorm, BT, C, c.Eps)
		},
	})
}

// finishQK adds the projection's bias (Qwen2) and applies the per-head
// norm (Qwen3, Gemma 3) to y (M rows of n heads), keeping the norm's input
// in raw: Model.finishQK before the rotation.
func (g *GPU) finishQK(l int, y *cuda.Buffer, M, n int, bias, norm, raw *cuda.Buffer) error {
	c := g.m.Config
	d := g.d
	w := n * c.HeadDim
	if bias != nil {
		if err := d.AddRows(y, bias, M, w); err != nil {
			return err
		}
	}
	if norm == nil {
		return nil
	}
	if err := d.Copy(raw, 0, y, 0, int64(4*M*w)); err != nil {
		return err
	}
	return d.RMSNorm(y, y, norm, M*n, c.HeadDim, c.Eps)
}

// unnormQK is the per-head norm's backward, in place on dy (heads rows
// of D) whose forward input was raw; nothing without a norm (a bias passes
// the gradient through).
func (g *GPU) unnormQK(s *gpuStep, dy, raw, norm *cuda.Buffer, heads int) error {
	if norm == nil {
		return nil
	}
	c := g.m.Config
	n := int64(4 * heads * c.HeadDim)
	if err := s.dnorm.Zero(); err != nil {
		return err
	}
	if err := g.d.RMSNormBackward(s.dnorm, nil, dy, raw, norm, heads, c.HeadDim, c.Eps); err != nil {
		return err
	}
	return g.d.Copy(dy, 0, s.dnorm, 0, n)
}

// postNorm applies Gemma 3's post-norm w in place to y (M rows), keeping
// its input in pre; nothing when w is nil.
func (g *GPU) postNorm(y, pre, w *cuda.Buffer, M int) error {
	if w == nil {
		return nil
	}
	c := g.m.Config
	if err := g.d.Copy(pre, 0, y, 0, int64(4*M*c.Dim)); err != nil {
		return err
	}
	return g.d.RMSNorm(y, y, w, M, c.Dim, c.Eps)
}

// postNormBack returns the gradient of a post-norm's input given dy, that
// of its output (s.dpost; dy itself when w is nil).
func (g *GPU) postNormBack(s *gpuStep, dy, pre, w *cuda.Buffer, M int) (*cuda.Buffer, error) {
	if w == nil {
		return dy, nil
	}
	c := g.m.Config
	if err := s.dpost.Zero(); err != nil {
		return nil, err
	}
	return s.dpost, g.d.RMSNormBackward(s.dpost, nil, dy, pre, w, M, c.Dim, c.Eps)
}
