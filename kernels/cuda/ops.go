package cuda

import (
	_ "embed"
	"fmt"
	"math"

	"github.com/qtune/qtune/quant"
)

//go:embed kernels.cu
var source string

// kernel returns one of kernels.cu's functions, compiling the module on
// first use.
func (d *Device) kernel(name string) (uintptr, error) {
	m, err := d.module("qtune", source)
	if err != nil {
		return 0, err
	}
	return d.fn(m, name)
}

// FromCache reports whether the device's kernels came from the on-disk
// cache rather than from NVRTC (after the first kernel call).
func (d *Device) FromCache() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	m := d.mods["qtune"]
	return m != nil && m.fromCch
}

// Compile loads the kernels now (NVRTC or the cache) instead of at the
// first call.
func (d *Device) Compile() error {
	_, err := d.module("qtune", source)
	return err
}

const defaultShared = 48 << 10 // dynamic shared memory a launch may take without opting in

// run launches kernel name.
func (d *Device) run(name string, grid, block [3]uint32, shared int, args ...any) error {
	f, err := d.kernel(name)
	if err != nil {
		return err
	}
	if shared > d.maxSharedPerBloc && d.maxSharedPerBloc > 0 {
		return fmt.Errorf("cuda: %s needs %d bytes of shared memory, the GPU gives a block %d", name, shared, d.maxSharedPerBloc)
	}
	return d.do(func() error {
		if shared > defaultShared {
			const maxDynamicShared = 8 // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
			if err := d.drv.err("cuFuncSetAttribute", d.drv.cuFuncSetAttribute(f, maxDynamicShared, int32(shared))); err != nil {
				return err
			}
		}
		return d.launch(name, f, grid, block, uint32(shared), args...)
	})
}

// grid1 is a grid-stride launch over n elements.
func (d *Device) grid1(n int64) [3]uint32 {
	b := (n + 255) / 256
	b = min(b, int64(max(d.SMs, 1))*32)
	return [3]uint32{uint32(max(b, 1)), 1, 1}
}

var threads256 = [3]uint32{256, 1, 1}

// opt passes a buffer that may be nil as a null pointer.
func opt(b *Buffer) any {
	if b == nil {
		return uint64(0)
	}
	return b
}

// typeNames are the weight types the kernels decode, by kernel suffix.
var typeNames = map[quant.Type]string{
	quant.F32: "f32", quant.F16: "f16", quant.BF16: "bf16", quant.Q4_0: "q4_0", quant.Q8_0: "q8_0",
	quant.Q4_K: "q4_k", quant.Q6_K: "q6_k", quant.NF4: "nf4",
}

// Supported reports whether the GPU kernels decode weights of type t.
func Supported(t quant.Type) bool { _, ok := typeNames[t]; return ok }

// Matrix is a weight matrix (Rows, Cols) resident on the device in its
// file's encoding (never expanded whole outside a GEMM's workspace).
type Matrix struct {
	Type       quant.Type
	Rows, Cols int
	Buf        *Buffer
}

// UploadMatrix copies a weight's bytes (as kernels.Matrix holds them) to
// the device.
func (d *Device) UploadMatrix(t quant.Type, rows, cols int, data []byte) (*Matrix, error) {
	return d.UploadMatrixPieces(t, rows, cols, data, 0, nil)
}

// UploadMatrixPieces is UploadMatrix copying piece bytes at a time (0: all
// at once) and calling after, when not nil, with each piece once it is on
// the device: a caller whose data is a file mapping drops the piece's pages
// there, so that no more than a piece of the matrix is resident in host
// memory at once.
func (d *Device) UploadMatrixPieces(t quant.Type, rows, cols int, data []byte, piece int, after func([]byte)) (*Matrix, error) {
	if !Supported(t) {
		return nil, fmt.Errorf("cuda: %s weights are not decoded on the GPU (F32, F16, BF16, Q4_0, Q8_0, Q4_K, Q6_K, NF4 are)", t)
	}
	want, err := quant.Bytes(t, int64(rows)*int64(cols))
	if err != nil {
		return nil, fmt.Errorf("cuda: %w", err)
	}
	if int64(len(data)) != want {
		return nil, fmt.Errorf("cuda: a %s matrix of %d×%d holds %d bytes, not %d", t, rows, cols, want, len(data))
	}
	b, err := d.Alloc(want)
	if err != nil {
		return nil, err
	}
	if err := b.WritePieces(0, data, piece, after); err != nil {
		b.Free()
		return nil, err
	}
	return &Matrix{Type: t, Rows: rows, Cols: cols, Buf: b}, nil
}

// Free releases the matrix's device memory.
func (m *Matrix) Free() error { return m.Buf.Free() }

// Dequantize writes elements [e0, e0+count) of m into dst as float32 (or
// bfloat16 when p is BF16): quant.DequantizeRange on the device,
// bit-identical to it for float32.
func (d *Device) Dequantize(dst *Buffer, m *Matrix, e0, count int64, p Precision) error {
	n := int64(m.Rows) * int64(m.Cols)
	if e0 < 0 || count <= 0 || e0+count > n {
		return fmt.Errorf("cuda: Dequantize [%d, %d) of %d elements", e0, e0+count, n)
	}
	if p == F16 {
		return fmt.Errorf("cuda: Dequantize to f16: only f32 and bf16")
	}
	if dst.Bytes < count*p.size() {
		return fmt.Errorf("cuda: Dequantize of %d elements into %d bytes", count, dst.Bytes)
	}
	name, threads := "dequant_"+typeNames[m.Type]+"_"+p.String(), count
	if b := int64(blockwise[m.Type]); b > 0 && e0%b == 0 && count%b == 0 {
		// a thread per piece of a block (8 or 16 elements; mvq_piece)
		name, threads = "dequantq_"+typeNames[m.Type]+"_"+p.String(), count/b*int64(blockPieces[m.Type])
	}
	return d.run(name, d.grid1(threads), threads256, 0, dst, m.Buf, n, e0, count)
}

// MatVec computes y (M, N) = x (M, K)·Wᵀ for M ≤ 4 rows, decoding W in
// registers (generation's path): kernels.MatMul for small M.
func (d *Device) MatVec(y, x *Buffer, M int, w *Matrix) error {
	if M < 1 || M > 4 {
		return fmt.Errorf("cuda: MatVec of %d rows (1 to 4)", M)
	}
	if y.Bytes < int64(4*M*w.Rows) || x.Bytes < int64(4*M*w.Cols) {
		return fmt.Errorf("cuda: MatVec: y %d x %d bytes for M=%d N=%d K=%d", y.Bytes, x.Bytes, M, w.Rows, w.Cols)
	}
	const warps = 8
	grid := [3]uint32{uint32((w.Rows + warps - 1) / warps), 1, 1}
	name := "matvec_" + typeNames[w.Type]
	if b := blockwise[w.Type]; b > 0 && w.Cols%b == 0 {
		name = "matvecq_" + typeNames[w.Type]
	}
	return d.run(name, grid, [3]uint32{32 * warps, 1, 1}, 0, y, x, w.Buf, M, w.Rows, w.Cols)
}

// blockwise are the types whose rows matvecq takes a block at a time (when
// a row is whole blocks), by block length.
var blockwise = map[quant.Type]int{quant.Q4_0: 32, quant.Q8_0: 32, quant.NF4: 64, quant.Q4_K: 256, quant.Q6_K: 256}

// blockPieces are the pieces a block is decoded in (MVQ<T>::PIECES).
var blockPieces = map[quant.Type]int{quant.Q4_0: 4, quant.Q8_0: 4, quant.NF4: 4, quant.Q4_K: 16, quant.Q6_K: 16}

// MatMulWorkspace is the device scratch MatMul and MatMulT take for M rows
// of w at precision p: the decoded weight, and for BF16 the activations
// rounded to it.
func MatMulWorkspace(M int, w *Matrix, p Precision) int64 {
	n := int64(w.Rows) * int64(w.Cols) * p.size()
	if p != F32 {
		n += int64(M) * int64(max(w.Rows, w.Cols)) * 2
	}
	return n
}

func (d *Device) prepare(op string, ws *Buffer, M int, w *Matrix, x *Buffer, xCols int, p Precision) (wd, xd *Buffer, err error) {
	if need := MatMulWorkspace(M, w, p); ws.Bytes < need {
		return nil, nil, fmt.Errorf("cuda: %s: workspace of %d bytes, %d needed", op, ws.Bytes, need)
	}
	n := int64(w.Rows) * int64(w.Cols)
	wd = &Buffer{d: d, ptr: ws.ptr, Bytes: n * p.size()}
	if err := d.Dequantize(wd, w, 0, n, p); err != nil {
		return nil, nil, err
	}
	if p == F32 {
		return wd, x, nil
	}
	cnt := int64(M) * int64(xCols)
	xd = &Buffer{d: d, ptr: ws.ptr + uint64(wd.Bytes), Bytes: cnt * 2}
	if err := d.run("to_bf16", d.grid1(cnt), threads256, 0, xd, x, cnt); err != nil {
		return nil, nil, err
	}
	return wd, xd, nil
}

// MatMul computes y (M, N) = x (M, K)·Wᵀ: W decoded into the workspace,
// then one cuBLAS GEMM (FP32, or BF16 with FP32 accumulation).
func (d *Device) MatMul(y, x *Buffer, M int, w *Matrix, ws *Buffer, p Precision) error {
	if p == F16 {
		return fmt.Errorf("cuda: MatMul in f16: f32 or bf16")
	}
	wd, xd, err := d.prepare("MatMul", ws, M, w, x, w.Cols, p)
	if err != nil {
		return err
	}
	return d.GemmNT(y, xd, wd, M, w.Rows, w.Cols, false, p)
}

// MatMulT computes dx (M, K) += dy (M, N)·W: the input gradient through a
// frozen weight.
func (d *Device) MatMulT(dx, dy *Buffer, M int, w *Matrix, ws *Buffer, p Precision) error {
	if p == F16 {
		return fmt.Errorf("cuda: MatMulT in f16: f32 or bf16")
	}
	wd, dyd, err := d.prepare("MatMulT", ws, M, w, dy, w.Rows, p)
	if err != nil {
		return err
	}
	return d.GemmNN(dx, dyd, wd, M, w.Cols, w.Rows, p)
}

// RMSNorm normalises rows of n: kernels.RMSNorm per row.
func (d *Device) RMSNorm(out, x, w *Buffer, rows, n int, eps float32) error {
	return d.run("rmsnorm_fwd", [3]uint32{uint32(rows), 1, 1}, threads256, 0, out, x, w, n, eps)
}

// RMSNormBackward is kernels.RMSNormBackward per row; dw may be nil.
func (d *Device) RMSNormBackward(dx, dw, dy, x, w *Buffer, rows, n int, eps float32) error {
	return d.run("rmsnorm_bwd", [3]uint32{uint32(rows), 1, 1}, threads256, 0, dx, opt(dw), dy, x, w, n, eps)
}

// Rope rotates rows × heads head vectors of D by their row's table row
// (cos, sin: rows × half): kernels.Rope, or RopeBack when back.
func (d *Device) Rope(v, cos, sin *Buffer, rows, heads, D, half int, neox, back bool) error {
	return d.RopeSeqs(v, cos, sin, rows, rows, heads, D, half, neox, back)
}

// RopeSeqs is Rope for rows that are sequences of period rows each: row r
// takes table row r % period (cos, sin: period × half).
func (d *Device) RopeSeqs(v, cos, sin *Buffer, rows, period, heads, D, half int, neox, back bool) error {
	if period <= 0 || half <= 0 || 2*half > D {
		return fmt.Errorf("cuda: rope of %d of %d dimensions over %d positions", 2*half, D, period)
	}
	nx, sign := 0, float32(1)
	if neox {
		nx = 1
	}
	if back {
		sign = -1
	}
	n := int64(rows) * int64(heads) * int64(half)
	grid := [3]uint32{uint32((n + 255) / 256), 1, 1}
	return d.run("rope", grid, threads256, 0, v, cos, sin, rows, heads, D, half, nx, sign, period)
}

// SwiGLU is kernels.SwiGLU over n elements.
func (d *Device) SwiGLU(out, g, u *Buffer, n int64) error {
	return d.run("swiglu_fwd", d.grid1(n), threads256, 0, out, g, u, n)
}

// SwiGLUBackward is kernels.SwiGLUBackward over n elements.
func (d *Device) SwiGLUBackward(dg, du, dy, g, u *Buffer, n int64) error {
	return d.run("swiglu_bwd", d.grid1(n), threads256, 0, dg, du, dy, g, u, n)
}

// GeGLU is kernels.GeGLU over n elements (gelu_tanh(g)·u, Gemma's).
func (d *Device) GeGLU(out, g, u *Buffer, n int64) error {
	return d.run("geglu_fwd", d.grid1(n), threads256, 0, out, g, u, n)
}

// GeGLUBackward is kernels.GeGLUBackward over n elements.
func (d *Device) GeGLUBackward(dg, du, dy, g, u *Buffer, n int64) error {
	return d.run("geglu_bwd", d.grid1(n), threads256, 0, dg, du, dy, g, u, n)
}

// AddRows adds the n floats of b to each of rows rows of y (a bias).
func (d *Device) AddRows(y, b *Buffer, rows, n int) error {
	if rows <= 0 || n <= 0 {
		return fmt.Errorf("cuda: AddRows of %d rows of %d", rows, n)
	}
	if y.Bytes < 4*int64(rows)*int64(n) || b.Bytes < 4*int64(n) {
		return fmt.Errorf("cuda: AddRows: buffers of %d and %d bytes for %d rows of %d", y.Bytes, b.Bytes, rows, n)
	}
	return d.run("add_rows", d.grid1(int64(rows)*int64(n)), threads256, 0, y, b, int64(rows), n)
}

// CrossEntropy is kernels.CrossEntropy per row of V logits: loss (rows
// floats) gets each row's loss, dlogits (nil: none) the scaled gradient;
// targets are int32, negative for rows without a target.
func (d *Device) CrossEntropy(dlogits, loss, logits, targets *Buffer, rows, V int, scale float32) error {
	return d.run("xent", [3]uint32{uint32(rows), 1, 1}, [3]uint32{512, 1, 1}, 0, opt(dlogits), loss, logits, targets, V, scale, 0)
}

// CrossEntropyInPlace is CrossEntropy with dlogits overwritten instead of
// accumulated into: dlogits may be logits itself (the logits are dead once
// their gradient is known).
func (d *Device) CrossEntropyInPlace(dlogits, loss, logits, targets *Buffer, rows, V int, scale float32) error {
	return d.run("xent", [3]uint32{uint32(rows), 1, 1}, [3]uint32{512, 1, 1}, 0, opt(dlogits), loss, logits, targets, V, scale, 1)
}

func attnScale(D int) float32 { return float32(1 / math.Sqrt(float64(D))) }

// attnKernel picks the instance of an attention kernel (attn_fwd, attn_dq,
// attn_dkv) for head size D and the shared memory it takes: the head size
// rounded up to 64, 128 or 256, and tiles of 32 rows (16 for 256, and for
// 128 on GPUs whose blocks get less shared memory than 32 rows need).
func (d *Device) attnKernel(kind string, D int) (name string, tl, shared int, err error) {
	bytes := func(tl int) int {
		rows := tl * (D + 1) // one tile of rows, padded
		switch kind {
		case "attn_fwd": // q, k, v tiles and p
			return 4 * (3*rows + tl*(tl+1))
		case "attn_dq": // q, dO, k, v tiles and ds
			return 4 * (4*rows + tl*(tl+1))
		default: // k, v, q, dO tiles, p and ds, lse and Δ
			return 4 * (4*rows + 2*tl*(tl+1) + 2*tl)
		}
	}
	dm, err := headDM(D)
	if err != nil {
		return "", 0, 0, err
	}
	tl = map[int]int{64: 32, 128: 32, 256: 16}[dm]
	if dm == 128 && d.maxSharedPerBloc > 0 && bytes(32) > d.maxSharedPerBloc {
		tl = 16
	}
	return fmt.Sprintf("%s_%d_%d", kind, dm, tl), tl, bytes(tl), nil
}

// headDM is the head size D rounded up to an attention kernel's: 64, 128
// or 256.
func headDM(D int) (int, error) {
	switch {
	case D < 1:
		return 0, fmt.Errorf("cuda: attention with head size %d", D)
	case D <= 64:
		return 64, nil
	case D <= 128:
		return 128, nil
	case D <= 256:
		return 256, nil
	}
	return 0, fmt.Errorf("cuda: attention with head size %d (the kernels take at most 256)", D)
}

// attnCheck refuses shapes the kernels would read or write outside of.
func attnCheck(H, Hkv int, bufs ...any) error {
	if H < 1 || Hkv < 1 || H%Hkv != 0 {
		return fmt.Errorf("cuda: attention with %d heads over %d kv heads", H, Hkv)
	}
	for i := 0; i+2 < len(bufs); i += 3 {
		name, b, n := bufs[i].(string), bufs[i+1].(*Buffer), bufs[i+2].(int)
		if b.Bytes < 4*int64(n) {
			return fmt.Errorf("cuda: attention: %s holds %d bytes, the shape needs %d floats", name, b.Bytes, n)
		}
	}
	return nil
}

const attnThreads = 128 // ATT_NT in kernels.cu

// Attention is kernels.AttentionSeqWindow for B sequences of T positions
// (W ≤ 0: no window): q and out (B, T, H·D), k and v (B, T, Hkv·D), lse
// (B, H, T).
func (d *Device) Attention(out, lse, q, k, v *Buffer, B, T, H, Hkv, D, W int) error {
	return d.attention(out, lse, q, k, v, B, T, T, H, Hkv, D, W)
}

// AttentionCached is the attention of Tq new positions of one sequence over
// the Tk ≥ Tq positions of its KV cache, the new ones last: query row i
// sits at position Tk−Tq+i. q and out (Tq, H·D), k and v (Tk, Hkv·D) or
// longer, lse (H, Tq).
func (d *Device) AttentionCached(out, lse, q, k, v *Buffer, Tq, Tk, H, Hkv, D, W int) error {
	if Tq < 1 || Tq > Tk {
		return fmt.Errorf("cuda: attention of %d queries over %d cached positions", Tq, Tk)
	}
	return d.attention(out, lse, q, k, v, 1, Tq, Tk, H, Hkv, D, W)
}

// MaxDecodeSplits is the most key splits AttentionDecode makes.
const MaxDecodeSplits = 32

// DecodePartFloats is the scratch AttentionDecode takes for H heads of size
// D in up to splits splits.
func DecodePartFloats(H, D, splits int) int { return H * splits * (D + 2) }

// AttentionDecode is AttentionCached for one query, the newest of Tk
// cached positions, with the keys it sees split across blocks
// (flash-decoding): enough splits of at least 64 keys that about two
// blocks per SM run, as many as part (scratch, DecodePartFloats) holds.
// With one split it is AttentionCached.
func (d *Device) AttentionDecode(out, lse, q, k, v, part *Buffer, Tk, H, Hkv, D, W int) error {
	n := Tk
	if W > 0 {
		n = min(Tk, W)
	}
	S := min(MaxDecodeSplits, n/64, (2*max(d.SMs, 1)+H-1)/max(H, 1))
	if D > 0 && H > 0 {
		S = min(S, int(part.Bytes/4)/(H*(D+2)))
	}
	return d.attentionDecode(out, lse, q, k, v, part, Tk, H, Hkv, D, W, S)
}

func (d *Device) attentionDecode(out, lse, q, k, v, part *Buffer, Tk, H, Hkv, D, W, S int) error {
	if S <= 1 {
		return d.AttentionCached(out, lse, q, k, v, 1, Tk, H, Hkv, D, W)
	}
	if Tk < 1 {
		return fmt.Errorf("cuda: attention over %d cached positions", Tk)
	}
	if err := attnCheck(H, Hkv, "q", q, H*D, "out", out, H*D, "lse", lse, H, "k", k, Tk*Hkv*D, "v", v, Tk*Hkv*D,
		"part", part, DecodePartFloats(H, D, S)); err != nil {
		return err
	}
	dm, err := headDM(D)
	if err != nil {
		return err
	}
	if err := d.run(fmt.Sprintf("attn_dec_%d", dm), [3]uint32{uint32(S), uint32(H), 1}, [3]uint32{128, 1, 1}, 0,
		part, q, k, v, Tk, H, Hkv, D, W, attnScale(D)); err != nil {
		return err
	}
	return d.run("attn_dec_combine", [3]uint32{uint32(H), 1, 1}, [3]uint32{32, 1, 1}, 0, out, lse, part, S, H, D)
}

func (d *Device) attention(out, lse, q, k, v *Buffer, B, Tq, Tk, H, Hkv, D, W int) error {
	if err := attnCheck(H, Hkv, "q", q, B*Tq*H*D, "out", out, B*Tq*H*D, "lse", lse, B*H*Tq,
		"k", k, B*Tk*Hkv*D, "v", v, B*Tk*Hkv*D); err != nil {
		return err
	}
	name, tl, shared, err := d.attnKernel("attn_fwd", D)
	if err != nil {
		return err
	}
	grid := [3]uint32{uint32((Tq + tl - 1) / tl), uint32(H), uint32(B)}
	return d.run(name, grid, [3]uint32{attnThreads, 1, 1}, shared, out, lse, q, k, v, Tq, Tk, H, Hkv, D, W, attnScale(D))
}

// AttentionBackward is kernels.AttentionSeqBackwardWindow for B sequences
// of T positions: dq, dk, dv accumulate; out and lse are the forward's;
// delta is scratch of B·H·T floats.
func (d *Device) AttentionBackward(dq, dk, dv, dout, q, k, v, out, lse, delta *Buffer, B, T, H, Hkv, D, W int) error {
	nq, nk := B*T*H*D, B*T*Hkv*D
	if err := attnCheck(H, Hkv, "q", q, nq, "dq", dq, nq, "dout", dout, nq, "out", out, nq, "lse", lse, B*H*T,
		"delta", delta, B*H*T, "k", k, nk, "v", v, nk, "dk", dk, nk, "dv", dv, nk); err != nil {
		return err
	}
	rows := int64(B) * int64(T) * int64(H)
	const warps = 8
	if err := d.run("attn_delta", [3]uint32{uint32((rows + warps - 1) / warps), 1, 1}, [3]uint32{32 * warps, 1, 1}, 0,
		delta, dout, out, T, H, D, rows); err != nil {
		return err
	}
	name, tl, shared, err := d.attnKernel("attn_dq", D)
	if err != nil {
		return err
	}
	tiles := uint32((T + tl - 1) / tl)
	if err := d.run(name, [3]uint32{tiles, uint32(H), uint32(B)}, [3]uint32{attnThreads, 1, 1}, shared,
		dq, dout, q, k, v, lse, delta, T, H, Hkv, D, W, attnScale(D)); err != nil {
		return err
	}
	if name, tl, shared, err = d.attnKernel("attn_dkv", D); err != nil {
		return err
	}
	tiles = uint32((T + tl - 1) / tl)
	return d.run(name, [3]uint32{tiles, uint32(Hkv), uint32(B)}, [3]uint32{attnThreads, 1, 1}, shared,
		dk, dv, dout, q, k, v, lse, delta, T, H, Hkv, D, W, attnScale(D))
}

// AdamW is one step of optim.AdamW on n parameters: step is lr/(1−β₁ᵗ),
// sqrtBC2 √(1−β₂ᵗ), decay 1−lr·wd (or 1).
func (d *Device) AdamW(w, g, m, v *Buffer, n int64, b1, b2, eps, step, sqrtBC2, decay float64) error {
	return d.run("adamw", d.grid1(n), threads256, 0, w, g, m, v, n, b1, b2, eps, step, sqrtBC2, decay)
}

// SumSquaresBlocks is the blocks SumSquares writes a partial sum from.
const SumSquaresBlocks = 32

// SumSquares writes SumSquaresBlocks partial sums of x[i]² (float64) over
// x's n values into part from float64 index off: their total is x's
// squared norm.
func (d *Device) SumSquares(part *Buffer, off int, x *Buffer, n int64) error {
	if off < 0 || part.Bytes < 8*int64(off+SumSquaresBlocks) || x.Bytes < 4*n {
		return fmt.Errorf("cuda: SumSquares of %d values into a buffer of %d bytes at %d", n, part.Bytes, off)
	}
	p, err := part.Slice(8*int64(off), 8*SumSquaresBlocks)
	if err != nil {
		return err
	}
	return d.run("sumsq", [3]uint32{SumSquaresBlocks, 1, 1}, threads256, 0, p, x, n)
}

// MezoNormal writes z[off : off+n] of the tensor whose key is key
// (mezo.TensorKey) into out: mezo.Normal on the device.
func (d *Device) MezoNormal(out *Buffer, key uint64, off, n int64) error {
	return d.run("mezo_normal", d.grid1(n), threads256, 0, out, uint64(0), key, off, n, float32(0), float32(1), uint64(0), float64(0))
}

// MezoMask names the entries a perturbation leaves alone: those in the
// mask methods/loho's InMask(Key, index, Ratio) selects (Ratio ≤ 0: none).
type MezoMask struct {
	Key   uint64
	Ratio float64
}

// MezoApply is w ← a·w + alpha·z[off : off+n] with z cleared at mask's
// entries (index off+i): MeZO's update (a: the weight decay) and, with
// a = 1, its perturbation.
func (d *Device) MezoApply(w *Buffer, key uint64, off, n int64, alpha, a float32, mask MezoMask) error {
	if w.Bytes < 4*n {
		return fmt.Errorf("cuda: MezoApply of %d values to a buffer of %d bytes", n, w.Bytes)
	}
	return d.run("mezo_normal", d.grid1(n), threads256, 0, uint64(0), w, key, off, n, alpha, a, mask.Key, mask.Ratio)
}

// Dropout is methods/lora's dropout mask over n elements: out[i] =
// x[i]·keep where the i-th Uint32 of Go's rand.New(rand.NewPCG(seed, id))
// is ≥ th, else 0 (out may be x).
func (d *Device) Dropout(out, x *Buffer, n int64, seed, id uint64, th uint32, keep float32) error {
	if out.Bytes < 4*n || x.Bytes < 4*n {
		return fmt.Errorf("cuda: Dropout of %d values into buffers of %d and %d bytes", n, out.Bytes, x.Bytes)
	}
	return d.run("dropout", d.grid1((n+63)/64), threads256, 0, out, x, n, seed, id, th, keep)
}

// CSR is a sparse (Out, In) matrix on the device: RowPtr (Out+1), Cols
// and Val (Nnz); for products by columns also ColPtr (In+1), RowIdx and
// Perm (Nnz: entry j in column order is Val[Perm[j]] of row RowIdx[j]).
type CSR struct {
	Out, In, Nnz                            int
	RowPtr, Cols, Val, ColPtr, RowIdx, Perm *Buffer
}

// SparseForward is y (M, Out) += x (M, In)·Sᵀ.
func (d *Device) SparseForward(y, x *Buffer, M int, s *CSR) error {
	if y.Bytes < 4*int64(M)*int64(s.Out) || x.Bytes < 4*int64(M)*int64(s.In) {
		return fmt.Errorf("cuda: SparseForward: buffers of %d and %d bytes for %d rows of a %d×%d matrix", y.Bytes, x.Bytes, M, s.Out, s.In)
	}
	return d.run("csr_fwd", d.grid1(int64(M)*int64(s.Out)), threads256, 0, y, x, s.RowPtr, s.Cols, s.Val, int64(M), s.In, s.Out)
}

// SparseGrad is grad[k] += Σ_m dy[m, row(k)]·x[m, col(k)] over the stored entries.
func (d *Device) SparseGrad(grad, dy, x *Buffer, M int, s *CSR) error {
	if s.Nnz == 0 {
		return nil
	}
	return d.run("csr_sddmm", d.grid1(int64(s.Nnz)), threads256, 0, grad, dy, x, s.RowPtr, s.Cols, int64(M), s.In, s.Out, int64(s.Nnz))
}

// SparseBackward is dx (M, In) += dy (M, Out)·S.
func (d *Device) SparseBackward(dx, dy *Buffer, M int, s *CSR) error {
	if dx.Bytes < 4*int64(M)*int64(s.In) || dy.Bytes < 4*int64(M)*int64(s.Out) {
		return fmt.Errorf("cuda: SparseBackward: buffers of %d and %d bytes for %d rows of a %d×%d matrix", dx.Bytes, dy.Bytes, M, s.Out, s.In)
	}
	return d.run("csc_dx", d.grid1(int64(M)*int64(s.In)), threads256, 0, dx, dy, s.ColPtr, s.RowIdx, s.Perm, s.Val, int64(M), s.In, s.Out)
}

// Scale is x *= a over n elements.
func (d *Device) Scale(x *Buffer, a float32, n int64) error {
	return d.run("scal", d.grid1(n), threads256, 0, x, a, n)
}

// RopeTable writes the rotation tables of positions p0..p0+T−1 into cos
// and sin (T, half): nn.Rope.Row on the device, freq its half frequencies
// (float64).
func (d *Device) RopeTable(cos, sin, freq *Buffer, half int, p0 int64, T int, scale float64, mscale float32) error {
	n := int64(T) * int64(half)
	if half < 1 || T < 1 || cos.Bytes < 4*n || sin.Bytes < 4*n || freq.Bytes < 8*int64(half) {
		return fmt.Errorf("cuda: RopeTable of %d positions of %d angles: buffers of %d, %d and %d bytes", T, half, cos.Bytes, sin.Bytes, freq.Bytes)
	}
	return d.run("rope_table", d.grid1(n), threads256, 0, cos, sin, freq, int32(half), p0, int32(T), scale, mscale)
}

// ScaleBlocks is x[i] *= r[i/block] over n elements.
func (d *Device) ScaleBlocks(x, r *Buffer, n int64, block int) error {
	if block <= 0 || x.Bytes < 4*n || r.Bytes < 4*((n+int64(block)-1)/int64(block)) {
		return fmt.Errorf("cuda: ScaleBlocks of %d values in blocks of %d: buffers of %d and %d bytes", n, block, x.Bytes, r.Bytes)
	}
	return d.run("scal_blocks", d.grid1(n), threads256, 0, x, r, n, int32(block))
}

// Axpy is y += a·x over n elements.
func (d *Device) Axpy(y, x *Buffer, a float32, n int64) error {
	return d.run("axpy", d.grid1(n), threads256, 0, y, x, a, n)
}
