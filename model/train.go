package model

import (
	"fmt"
	"math"

	"github.com/qtune/qtune/budget"
	"github.com/qtune/qtune/kernels"
	"github.com/qtune/qtune/nn"
)

// Module names one of the seven linear layers of a block.
type Module int

// The adaptable linear layers, in the order of design.md and the golden
// LoRA file: q, k, v, o, gate, up, down.
const (
	ModQ Module = iota
	ModK
	ModV
	ModO
	ModGate
	ModUp
	ModDown
	NumModules
)

// ModuleNames are the short names used by --targets.
var ModuleNames = [NumModules]string{"q", "k", "v", "o", "gate", "up", "down"}

// moduleTensor is each module's GGUF tensor name within a block.
var moduleTensor = [NumModules]string{"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"}

// TensorName returns the GGUF name of layer l's module weight.
func TensorName(l int, mod Module) string {
	return fmt.Sprintf("blk.%d.%s.weight", l, moduleTensor[mod])
}

// Matrix returns the frozen weight of a module.
func (l *Layer) Matrix(mod Module) *kernels.Matrix {
	return [...]*kernels.Matrix{&l.Wq, &l.Wk, &l.Wv, &l.Wo, &l.Gate, &l.Up, &l.Down}[mod]
}

// Adapter adds a trainable term to one frozen linear layer y = x·Wᵀ.
// Implementations keep their own parameters and gradients.
type Adapter interface {
	// Forward adds the adapter's output for M rows: y (M, out) += f(x (M, in)).
	Forward(y, x []float32, M int)
	// Backward accumulates the adapter's parameter gradients for the same
	// rows and adds its input gradient to dx (M, in), given dy (M, out).
	Backward(dx, dy, x []float32, M int)
}

// Adapters holds an optional adapter per layer and module.
type Adapters [][NumModules]Adapter

// SizedAdapter is an Adapter that says how much memory it holds (its
// values, indices and gradient buffers), for the plans of generate and
// eval with an adapter applied.
type SizedAdapter interface {
	Adapter
	Bytes() int64
}

// AdapterBytes is what the adapters of ad hold, by SizedAdapter.
func AdapterBytes(ad Adapters) int64 {
	var n int64
	eachAdapter(ad, func(a Adapter) {
		if sa, ok := a.(SizedAdapter); ok {
			n += sa.Bytes()
		}
	})
	return n
}

// eachAdapter calls f with every adapter of ad.
func eachAdapter(ad Adapters, f func(Adapter)) {
	for _, row := range ad {
		for _, a := range row {
			if a != nil {
				f(a)
			}
		}
	}
}

// ScratchAdapter is an Adapter whose temporary buffers (products with the
// batch's rows, dropout masks) can come from LossGrad's workspace, a slab
// of the accountant's, instead of the Go heap.
type ScratchAdapter interface {
	Adapter
	// ScratchFloats is the most scratch one Forward or Backward of M rows
	// takes.
	ScratchFloats(M int) int
	// UseScratch gives the calls that follow buf for their temporary
	// buffers (shared by every adapter: calls do not overlap); nil takes
	// it back.
	UseScratch(buf []float32)
}

// AdapterScratchFloats is the largest ScratchFloats(M) of ad's adapters:
// the scratch LossGrad makes for them (and the plan books).
func AdapterScratchFloats(ad Adapters, M int) int {
	n := 0
	eachAdapter(ad, func(a Adapter) {
		if sa, ok := a.(ScratchAdapter); ok {
			n = max(n, sa.ScratchFloats(M))
		}
	})
	return n
}

// useScratch gives every ScratchAdapter of ad buf (nil takes it back).
func useScratch(ad Adapters, buf []float32) {
	eachAdapter(ad, func(a Adapter) {
		if sa, ok := a.(ScratchAdapter); ok {
			sa.UseScratch(buf)
		}
	})
}

// StepOptions control LossGrad.
type StepOptions struct {
	Adapters Adapters
	// Checkpoint keeps only each layer's input during the forward pass and
	// recomputes the layer's activations during the backward pass.
	Checkpoint bool
	// WeightGrads, when it has an entry for a tensor's GGUF name, receives
	// dL/dW for that weight (row-major (out, in), or the vector), +=.
	// token_embd.weight gets the gradient through the lookup only and
	// output.weight through the output projection only, tied or not.
	WeightGrads map[string][]float32
	// FirstLayer is the lowest layer the backward pass reaches; gradients
	// below it (and of the embedding) are not computed.
	FirstLayer int
	// LayerDone, when set, is called in the backward pass as soon as block
	// l's gradients (its adapters' and its WeightGrads) hold this pass's
	// contribution: for l from the last block down to FirstLayer, in that
	// order. A data-parallel step starts summing block l's gradients
	// there, while the blocks below run.
	LayerDone func(l int)
}

// layerActs are the activations of one block for B·T rows.
type layerActs struct {
	xin  []float32 // (BT, C) block input
	xn1  []float32 // (BT, C) attention RMSNorm output
	q    []float32 // (BT, H·D) after RoPE
	k    []float32 // (BT, Hkv·D) after RoPE
	v    []float32 // (BT, Hkv·D)
	lse  []float32 // (B, H, T) softmax log-sum-exp
	att  []float32 // (BT, H·D) attention output before Wo
	xmid []float32 // (BT, C) residual after attention
	xn2  []float32 // (BT, C) FFN RMSNorm output
	g    []float32 // (BT, F) gate pre-activation
	u    []float32 // (BT, F) up projection
	h    []float32 // (BT, F) act(g)·u
	// Family extras, allocated only when the family has the feature.
	qraw []float32 // (BT, H·D) queries before the per-head norm (q/k norms)
	kraw []float32 // (BT, Hkv·D) keys before the per-head norm
	ao   []float32 // (BT, C) Wo·att before the post-attention norm
	fo   []float32 // (BT, C) FFN output before the post-FFN norm
}

// extraActs is the float count of the family extras of layerActs per row.
func (c *Config) extraActs() int64 {
	var n int64
	if c.qkNorm {
		n += int64((c.Heads + c.KVHeads) * c.HeadDim)
	}
	if c.postNorms {
		n += 2 * int64(c.Dim)
	}
	return n
}

// newActs makes one block's activations for BT rows in a single slab of
// the accountant's, booked to cat and layer.
func (m *Model) newActs(sl *slabs, cat budget.Category, layer, BT int) (*layerActs, error) {
	c := m.Config
	C, F := c.Dim, c.Hidden
	qd, kvd := c.Heads*c.HeadDim, c.KVHeads*c.HeadDim
	a := &layerActs{}
	parts := []part{{&a.xin, BT * C}, {&a.xn1, BT * C}, {&a.q, BT * qd}, {&a.k, BT * kvd}, {&a.v, BT * kvd},
		{&a.lse, BT * c.Heads}, {&a.att, BT * qd}, {&a.xmid, BT * C}, {&a.xn2, BT * C},
		{&a.g, BT * F}, {&a.u, BT * F}, {&a.h, BT * F}}
	if c.qkNorm {
		parts = append(parts, part{&a.qraw, BT * qd}, part{&a.kraw, BT * kvd})
	}
	if c.postNorms {
		parts = append(parts, part{&a.ao, BT * C}, part{&a.fo, BT * C})
	}
	if err := sl.carve(cat, layer, parts...); err != nil {
		return nil, err
	}
	return a, nil
}

// ActivationBytes estimates the float32 activations LossGrad keeps for a
// batch of B sequences of T tokens (the planner's number).
func (c *Config) ActivationBytes(B, T int, checkpoint bool) int64 {
	BT := int64(B * T)
	qd, kvd := int64(c.Heads*c.HeadDim), int64(c.KVHeads*c.HeadDim)
	C, F := int64(c.Dim), int64(c.Hidden)
	perLayer := BT * (4*C + 2*qd + 2*kvd + int64(c.Heads) + 3*F + c.extraActs())
	saved := int64(c.Layers) * perLayer
	if checkpoint {
		saved = int64(c.Layers)*BT*C + perLayer
	}
	return 4 * saved
}

// linear computes y = x·Wᵀ (+ adapter) for M rows.
func (m *Model) linear(y, x []float32, M int, l int, mod Module, ad Adapters) {
	kernels.MatMul(m.pool, y, x, M, *m.Layers[l].Matrix(mod))
	if a := adapterOf(ad, l, mod); a != nil {
		a.Forward(y, x, M)
	}
}

func adapterOf(ad Adapters, l int, mod Module) Adapter {
	if l < len(ad) {
		return ad[l][mod]
	}
	return nil
}

// linearBack accumulates dx += dy·W (+ adapter), the adapter's gradients,
// and dW when requested.
func (m *Model) linearBack(dx, dy, x []float32, M int, l int, mod Module, o *StepOptions) {
	w := m.Layers[l].Matrix(mod)
	if dx != nil {
		kernels.MatMulT(m.pool, dx, dy, M, *w)
	}
	if a := adapterOf(o.Adapters, l, mod); a != nil {
		a.Backward(dx, dy, x, M)
	}
	if dw, ok := o.WeightGrads[TensorName(l, mod)]; ok {
		m.weightGrad(dw, dy, x, M, w.Rows, w.Cols)
	}
}

// weightGrad accumulates dW (N, K) += dYᵀ (N, M) · X (M, K), split over N.
func (m *Model) weightGrad(dw, dy, x []float32, M, N, K int) {
	m.pool.Parallel(N, 1, func(lo, hi int) {
		for n := lo; n < hi; n++ {
			row := dw[n*K : (n+1)*K]
			for r := 0; r < M; r++ {
				if a := dy[r*N+n]; a != 0 {
					kernels.Axpy(row, a, x[r*K:(r+1)*K])
				}
			}
		}
	})
}

// layerForward computes block l on a.xin, filling a's activations and
// writing the block output to out (BT, C).
func (m *Model) layerForward(l int, a *layerActs, out []float32, B, T int, ad Adapters) {
	c := m.Config
	D := c.HeadDim
	qd, kvd := c.Heads*D, c.KVHeads*D
	BT := B * T
	L := &m.Layers[l]
	pos := func(r int) int { return r % T }
	m.normRows(a.xn1, a.xin, L.AttnNorm, BT)
	m.queries(l, a.q, a.xn1, BT, pos, ad, a.qraw)
	m.keysValues(l, a.k, a.v, a.xn1, BT, pos, ad, a.kraw)
	m.pool.Parallel(B, 1, func(lo, hi int) {
		sc := make([]float32, T)
		for b := lo; b < hi; b++ {
			nn.AttentionSeqWindow(a.att[b*T*qd:(b+1)*T*qd], a.lse[b*c.Heads*T:(b+1)*c.Heads*T],
				a.q[b*T*qd:(b+1)*T*qd], a.k[b*T*kvd:(b+1)*T*kvd], a.v[b*T*kvd:(b+1)*T*kvd], T, c.Heads, c.KVHeads, D, L.Window, sc)
		}
	})
	copy(a.xmid, a.xin)
	m.attnOutInto(a.xmid, a.att, out, BT, l, ad, a.ao)
	m.normRows(a.xn2, a.xmid, L.FFNNorm, BT)
	m.linear(a.g, a.xn2, BT, l, ModGate, ad)
	m.linear(a.u, a.xn2, BT, l, ModUp, ad)
	nn.Gated(c.Act, a.h, a.g, a.u)
	m.linear(out, a.h, BT, l, ModDown, ad)
	if L.PostFFNNorm != nil {
		copy(a.fo, out[:BT*c.Dim])
		m.normRows(out, out, L.PostFFNNorm, BT)
	}
	for i, v := range a.xmid {
		out[i] += v
	}
}

// scratch buffers for one block's backward.
type backScratch struct {
	dh, dg, du  []float32 // (BT, F)
	dxn         []float32 // (BT, C)
	datt        []float32 // (BT, H·D)
	dq          []float32 // (BT, H·D)
	dk, dv      []float32 // (BT, Hkv·D)
	dpost       []float32 // (BT, C) post-norm input gradient (Gemma 3), else nil
	dnorm       []float32 // (D) per-head norm gradient scratch
	attnScratch []float32
}

// layerBackward takes dx = dL/d(block output) and turns it, in place, into
// dL/d(block input), accumulating adapter and weight gradients.
func (m *Model) layerBackward(l int, a *layerActs, dx []float32, B, T int, o *StepOptions, s *backScratch) {
	c := m.Config
	C, D := c.Dim, c.HeadDim
	qd, kvd := c.Heads*D, c.KVHeads*D
	BT := B * T
	L := &m.Layers[l]
	norm := func(name string) []float32 { return o.WeightGrads[fmt.Sprintf("blk.%d.%s.weight", l, name)] }
	// postBack turns dy (BT, C), the gradient of a post-norm's output, into
	// the gradient of its input pre (kept in s.dpost).
	postBack := func(dy, pre, w []float32, name string) []float32 {
		clear(s.dpost)
		dw := norm(name)
		for r := 0; r < BT; r++ {
			nn.RMSNormBackward(s.dpost[r*C:(r+1)*C], dw, dy[r*C:(r+1)*C], pre[r*C:(r+1)*C], w, c.Eps)
		}
		return s.dpost
	}
	// FFN: out = xmid + post(down(act(g)·u)), g = gate(xn2), u = up(xn2).
	dffn := dx
	if L.PostFFNNorm != nil {
		dffn = postBack(dx, a.fo, L.PostFFNNorm, "post_ffw_norm")
	}
	clear(s.dh)
	m.linearBack(s.dh, dffn, a.h, BT, l, ModDown, o)
	clear(s.dg)
	clear(s.du)
	nn.GatedBackward(c.Act, s.dg, s.du, s.dh, a.g, a.u)
	clear(s.dxn)
	m.linearBack(s.dxn, s.dg, a.xn2, BT, l, ModGate, o)
	m.linearBack(s.dxn, s.du, a.xn2, BT, l, ModUp, o)
	dwn := norm("ffn_norm")
	for r := 0; r < BT; r++ {
		nn.RMSNormBackward(dx[r*C:(r+1)*C], dwn, s.dxn[r*C:(r+1)*C], a.xmid[r*C:(r+1)*C], L.FFNNorm, c.Eps)
	}
	// Attention: xmid = xin + post(o(att)), att = attention(qk(q(xn1)), qk(k(xn1)), v(xn1)).
	dattn := dx
	if L.PostAttnNorm != nil {
		dattn = postBack(dx, a.ao, L.PostAttnNorm, "post_attention_norm")
	}
	clear(s.datt)
	m.linearBack(s.datt, dattn, a.att, BT, l, ModO, o)
	clear(s.dq)
	clear(s.dk)
	clear(s.dv)
	m.pool.Parallel(B, 1, func(lo, hi int) {
		sc := make([]float32, 2*T)
		for b := lo; b < hi; b++ {
			nn.AttentionSeqBackwardWindow(s.dq[b*T*qd:(b+1)*T*qd], s.dk[b*T*kvd:(b+1)*T*kvd], s.dv[b*T*kvd:(b+1)*T*kvd],
				s.datt[b*T*qd:(b+1)*T*qd], a.q[b*T*qd:(b+1)*T*qd], a.k[b*T*kvd:(b+1)*T*kvd], a.v[b*T*kvd:(b+1)*T*kvd],
				a.lse[b*c.Heads*T:(b+1)*c.Heads*T], T, c.Heads, c.KVHeads, D, L.Window, sc)
		}
	})
	m.unfinishQK(l, s.dq, BT, T, c.Heads, L.QNorm, a.qraw, true, norm("attn_q_norm"), s.dnorm)
	m.unfinishQK(l, s.dk, BT, T, c.KVHeads, L.KNorm, a.kraw, false, norm("attn_k_norm"), s.dnorm)
	clear(s.dxn)
	m.linearBack(s.dxn, s.dq, a.xn1, BT, l, ModQ, o)
	m.linearBack(s.dxn, s.dk, a.xn1, BT, l, ModK, o)
	m.linearBack(s.dxn, s.dv, a.xn1, BT, l, ModV, o)
	dwa := norm("attn_norm")
	for r := 0; r < BT; r++ {
		nn.RMSNormBackward(dx[r*C:(r+1)*C], dwa, s.dxn[r*C:(r+1)*C], a.xin[r*C:(r+1)*C], L.AttnNorm, c.Eps)
	}
}

// unfinishQK is finishQK's backward, in place on dy (BT, n·D): the query
// scale, the inverse rotation, then the per-head norm (raw holds its
// inputs; dw its weight gradient or nil; scratch at least D floats).
func (m *Model) unfinishQK(l int, dy []float32, BT, T, n int, norm, raw []float32, query bool, dw, scratch []float32) {
	c := &m.Config
	D := c.HeadDim
	w := n * D
	if s := m.qScale(); query && s != 1 {
		for i := range dy[:BT*w] {
			dy[i] *= s
		}
	}
	if rp := m.ropeOf(l); rp != nil {
		for r := 0; r < BT; r++ {
			rp.RotateBackHeads(dy[r*w:(r+1)*w], n, D, r%T)
		}
	}
	if norm != nil {
		d := scratch[:D]
		for h := 0; h < BT*n; h++ {
			clear(d)
			nn.RMSNormBackward(d, dw, dy[h*D:(h+1)*D], raw[h*D:(h+1)*D], norm, c.Eps)
			copy(dy[h*D:(h+1)*D], d)
		}
	}
}

// lossRows is how many rows of logits are materialised at once: the (rows,
// V) logits and their gradient are the only vocabulary-sized buffers.
const lossRows = 64

// LossGrad runs the model on B sequences of T tokens (tokens and targets
// are B·T, targets[i] the id to predict at position i, or −1 for none) and
// returns the summed cross-entropy over targeted positions and their count.
// When backward is true it accumulates gradients of scale·(summed loss)
// into the adapters and o.WeightGrads; pass scale = 1/count for the mean.
func (m *Model) LossGrad(tokens, targets []int, B, T int, o StepOptions, backward bool, scale float64) (float64, int, error) {
	c := m.Config
	BT := B * T
	if err := c.checkBatch(tokens, targets, B, T); err != nil {
		return 0, 0, err
	}
	C, F, V := c.Dim, c.Hidden, c.Vocab
	qd, kvd := c.Heads*c.HeadDim, c.KVHeads*c.HeadDim
	nL := c.Layers
	first := min(max(o.FirstLayer, 0), nL)
	// Every buffer that grows with the batch is a slab of the accountant's,
	// booked when made and returned when dead (all of them at the end): the
	// workspace, then each block's kept activations as they are made.
	sl := &slabs{acct: m.Acct}
	defer sl.free()
	acts := make([]*layerActs, nL)
	var work *layerActs // one block's full activations, reused
	if o.Checkpoint || !backward || first > 0 {
		var err error
		if work, err = m.newActs(sl, budget.Activations, -1, BT); err != nil {
			return 0, 0, err
		}
	}
	// Forward. Blocks the backward reaches keep their activations (all of
	// them, or only their input with checkpointing); the others keep nothing.
	var x, next, scratch []float32
	if err := sl.carve(budget.Workspace, -1, part{&x, BT * C}, part{&next, BT * C},
		part{&scratch, AdapterScratchFloats(o.Adapters, BT)}); err != nil {
		return 0, 0, err
	}
	if len(scratch) > 0 {
		useScratch(o.Adapters, scratch)
		defer useScratch(o.Adapters, nil)
	}
	m.embedRows(x, tokens)
	for l := 0; l < nL; l++ {
		a := work
		switch {
		case backward && l >= first && !o.Checkpoint:
			var err error
			if a, err = m.newActs(sl, budget.Activations, l, BT); err != nil {
				return 0, 0, err
			}
			acts[l] = a
		case backward && l >= first:
			var xin []float32
			if m.Spill != nil {
				if l == first {
					m.Spill.Reset()
				}
				var err error
				if xin, err = m.Spill.Alloc(BT * C); err != nil {
					return 0, 0, err
				}
			} else if err := sl.carve(budget.SavedInputs, l, part{&xin, BT * C}); err != nil {
				return 0, 0, err
			}
			acts[l] = &layerActs{xin: xin}
			w := *work
			w.xin = acts[l].xin
			a = &w
		}
		copy(a.xin, x)
		m.layerForward(l, a, next, B, T, o.Adapters)
		if m.Spill != nil && acts[l] != nil {
			m.Spill.Evict(acts[l].xin)
		}
		x, next = next, x
		m.layerDone(l, l+1)
	}
	// Final norm, output projection and loss, lossRows rows at a time.
	xnf := next // the last block's input is kept in acts; reuse the buffer
	for r := 0; r < BT; r++ {
		nn.RMSNorm(xnf[r*C:(r+1)*C], x[r*C:(r+1)*C], m.OutNorm, c.Eps)
	}
	var dxnf, logits, dlog []float32
	chunk := min(lossRows, BT)
	if backward {
		if err := sl.carve(budget.Workspace, -1, part{&dxnf, BT * C}); err != nil {
			return 0, 0, err
		}
		if err := sl.carve(budget.Workspace, -1, part{&logits, chunk * V}, part{&dlog, chunk * V}); err != nil {
			return 0, 0, err
		}
	} else if err := sl.carve(budget.Workspace, -1, part{&logits, chunk * V}); err != nil {
		return 0, 0, err
	}
	dwOut := o.WeightGrads["output.weight"]
	var loss float64
	n := 0
	for r0 := 0; r0 < BT; r0 += chunk {
		rows := min(chunk, BT-r0)
		kernels.MatMul(m.pool, logits[:rows*V], xnf[r0*C:(r0+rows)*C], rows, m.Output)
		if backward {
			clear(dlog[:rows*V])
		}
		any := false
		for i := 0; i < rows; i++ {
			tg := targets[r0+i]
			if tg < 0 {
				continue
			}
			any = true
			var d []float32
			if backward {
				d = dlog[i*V : (i+1)*V]
			}
			loss += nn.CrossEntropy(d, logits[i*V:(i+1)*V], tg, scale)
			n++
		}
		if backward && any {
			kernels.MatMulT(m.pool, dxnf[r0*C:(r0+rows)*C], dlog[:rows*V], rows, m.Output)
			if dwOut != nil {
				m.weightGrad(dwOut, dlog[:rows*V], xnf[r0*C:(r0+rows)*C], rows, V, C)
			}
		}
	}
	if math.IsNaN(loss) || math.IsInf(loss, 0) {
		return loss, n, fmt.Errorf("model: loss is %v", loss)
	}
	if !backward {
		m.prefetch(0)
		return loss, n, nil
	}
	// Backward. The logits and their gradient are dead: their slab goes back
	// before the backward's scratch is made.
	sl.put(logits)
	var dx []float32
	s := &backScratch{dnorm: make([]float32, c.HeadDim)}
	parts := []part{{&dx, BT * C}, {&s.dh, BT * F}, {&s.dg, BT * F}, {&s.du, BT * F},
		{&s.dxn, BT * C}, {&s.datt, BT * qd}, {&s.dq, BT * qd}, {&s.dk, BT * kvd}, {&s.dv, BT * kvd}}
	if c.postNorms {
		parts = append(parts, part{&s.dpost, BT * C})
	}
	if err := sl.carve(budget.Workspace, -1, parts...); err != nil {
		return 0, 0, err
	}
	dwf := o.WeightGrads["output_norm.weight"]
	for r := 0; r < BT; r++ {
		nn.RMSNormBackward(dx[r*C:(r+1)*C], dwf, dxnf[r*C:(r+1)*C], x[r*C:(r+1)*C], m.OutNorm, c.Eps)
	}
	tmpOut := next
	for l := nL - 1; l >= first; l-- {
		m.prefetch(l)
		a := acts[l]
		if o.Checkpoint {
			w := *work
			w.xin = a.xin
			m.layerForward(l, &w, tmpOut, B, T, o.Adapters)
			a = &w
		}
		m.layerBackward(l, a, dx, B, T, &o, s)
		if m.Spill != nil {
			m.Spill.Evict(acts[l].xin)
		}
		m.layerDone(l, l-1)
		if o.LayerDone != nil {
			o.LayerDone(l)
		}
	}
	m.prefetch(0)
	if first == 0 {
		if dwe := o.WeightGrads["token_embd.weight"]; dwe != nil {
			es := c.EmbedScale
			if es == 0 {
				es = 1
			}
			for r, id := range tokens {
				kernels.Axpy(dwe[id*C:(id+1)*C], es, dx[r*C:(r+1)*C])
			}
		}
	}
	return loss, n, nil
}

// checkBatch checks a LossGrad batch against the model: its shape, the
// context, and every token and target id (−1: no target).
func (c *Config) checkBatch(tokens, targets []int, B, T int) error {
	BT := B * T
	if B <= 0 || T <= 0 || len(tokens) != BT || len(targets) != BT {
		return fmt.Errorf("model: batch of %d tokens and %d targets for B=%d T=%d", len(tokens), len(targets), B, T)
	}
	if T > c.Context {
		return fmt.Errorf("model: sequence length %d exceeds the context of %d", T, c.Context)
	}
	for i, t := range tokens {
		if t < 0 || t >= c.Vocab {
			return fmt.Errorf("model: token id %d at %d outside the vocabulary (%d)", t, i, c.Vocab)
		}
		if tg := targets[i]; tg < -1 || tg >= c.Vocab {
			return fmt.Errorf("model: target id %d at %d outside the vocabulary (%d)", tg, i, c.Vocab)
		}
	}
	return nil
}

// StepWorkspaceBytes is the size of LossGrad's transient buffers for B
// sequences of T tokens: residual streams, logits chunks and, with backward,
// the gradient scratch.
func (c *Config) StepWorkspaceBytes(B, T int, backward bool) int64 {
	BT := int64(B * T)
	C, F, V := int64(c.Dim), int64(c.Hidden), int64(c.Vocab)
	qd, kvd := int64(c.Heads*c.HeadDim), int64(c.KVHeads*c.HeadDim)
	rows := min(lossRows, BT)
	n := 2*BT*C + rows*V // residual streams, logits
	if backward {
		// The logits and their gradient are dead once the backward starts,
		// and their slab is returned before the backward's is made, so the
		// peak is the larger phase, not the sum.
		loss := rows*V + BT*C                  // dlogits, dxnf
		back := 2*BT*C + BT*(3*F+C+2*qd+2*kvd) // dxnf, dx, gradient scratch
		if c.postNorms {
			back += BT * C // dpost
		}
		n += max(loss, back-rows*V)
	}
	return 4 * n
}
