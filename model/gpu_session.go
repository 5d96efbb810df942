package model

import (
	"errors"
	"fmt"
	"unsafe"

	"github.com/qtune/qtune/kernels/cuda"
)

// GPUSession is generation (or scoring) on the device: a KV cache per block (float32,
// maxLen positions) that new tokens' keys and values join, and the buffers
// of a forward of up to Chunk rows. A prompt runs Chunk rows at a time (so
// its length does not size the buffers), then each token alone (the
// products as matrix-vector kernels). It holds the positions Pos.
type GPUSession struct {
	g      *GPU
	ad     GPUAdapters
	k, v   []*cuda.Buffer
	arena  *cuda.Buffer
	maxLen int
	Chunk  int
	Pos    int
	all    bool // every row's logits (NLL), not the last one's only
	logits []float32
}

// GPUSessionOptions shape a GPU session.
type GPUSessionOptions struct {
	MaxLen int // positions (capped at the context)
	Chunk  int // rows run at once (≤ 0: GPUPrefillChunk)
	// Scoring: every row of a chunk gets its logits and loss (NLL), not
	// only the last one its logits (Forward).
	Scoring bool
}

// GPUPrefillChunk is the rows of a prompt a GPU session runs at once.
const GPUPrefillChunk = 256

// GPUSessionBytes is what NewSession(o) holds on the device besides the
// weights and the adapters: the KV cache, one chunk's forward (R the
// adapters' largest rank) and the products' workspace for a chunk's rows.
func GPUSessionBytes(m *Model, o GPUSessionOptions, R int, p cuda.Precision) int64 {
	g := &GPU{m: m, prec: p}
	c := m.Config
	o = o.norm(c)
	maxLen, chunk := o.MaxLen, o.Chunk
	kv := 2 * int64(c.Layers) * int64((4*maxLen*c.KVHeads*c.HeadDim+511)&^511)
	var ws int64
	if chunk > 4 { // fewer rows take the matrix-vector kernels
		for _, w := range append(m.allMatrices(), &m.Output) {
			ws = max(ws, cuda.MatMulWorkspace(chunk, &cuda.Matrix{Type: w.Type, Rows: w.Rows, Cols: w.Cols}, p))
		}
	}
	return kv + 4*int64(g.sessionFloats(chunk, max(R, 1), o.Scoring)) + (ws+511)&^511
}

// norm applies the defaults and caps.
func (o GPUSessionOptions) norm(c Config) GPUSessionOptions {
	o.MaxLen = min(o.MaxLen, c.Context)
	if o.Chunk <= 0 {
		o.Chunk = GPUPrefillChunk
	}
	o.Chunk = max(min(o.Chunk, o.MaxLen), 1)
	return o
}

// sessionFloats is one forward of M rows: one block's activations (every
// block reuses them), the residual stream and its scratch, the last row's
// normalized state and logits (every row's, and their targets and losses,
// when scoring), the adapters' scratch, the rotation tables and decoding
// attention's split partials.
func (g *GPU) sessionFloats(M, R int, scoring bool) int {
	c := g.m.Config
	half := max(g.m.rope.Dims/2, 1)
	out := al(c.Dim) + al(c.Vocab)
	if scoring {
		out = al(M*c.Dim) + al(M*c.Vocab) + 2*al(M)
	}
	return g.actFloats(M) + al(M*c.Dim)*2 + out + al(M*R) + 4*al(M*half) + al(decodePartFloats(c))
}

// decodePartFloats is the scratch of a token's attention with its keys
// split across blocks (cuda.AttentionDecode).
func decodePartFloats(c Config) int {
	return cuda.DecodePartFloats(c.Heads, c.HeadDim, cuda.MaxDecodeSplits)
}

// NewSession makes a session with the adapters ad (nil: none; without
// dropout).
func (g *GPU) NewSession(o GPUSessionOptions, ad GPUAdapters) (se *GPUSession, err error) {
	c := g.m.Config
	o = o.norm(c)
	maxLen, chunk := o.MaxLen, o.Chunk
	if maxLen < 1 {
		return nil, fmt.Errorf("model: a GPU session of %d positions", maxLen)
	}
	if ad.dropIn() > 0 {
		return nil, errors.New("model: generation with LoRA dropout on")
	}
	se = &GPUSession{g: g, ad: ad, maxLen: maxLen, Chunk: chunk, all: o.Scoring, logits: make([]float32, c.Vocab)}
	defer func() {
		if err != nil {
			se.Free()
			se = nil
		}
	}()
	kvd := c.KVHeads * c.HeadDim
	for range c.Layers {
		for _, dst := range []*[]*cuda.Buffer{&se.k, &se.v} {
			b, err := g.d.Alloc(4 * int64(maxLen*kvd))
			if err != nil {
				return nil, fmt.Errorf("model: the GPU KV cache of %d positions: %w", maxLen, err)
			}
			*dst = append(*dst, b)
		}
	}
	if se.arena, err = g.d.Alloc(4 * int64(g.sessionFloats(chunk, max(ad.maxRank(), 1), o.Scoring))); err != nil {
		return nil, fmt.Errorf("model: the GPU forward of %d rows: %w", chunk, err)
	}
	return se, nil
}

// MaxLen is the positions the session holds.
func (se *GPUSession) MaxLen() int { return se.maxLen }

// Free returns the session's device memory.
func (se *GPUSession) Free() error {
	var errs []error
	for _, b := range append(append(se.k, se.v...), se.arena) {
		if b != nil {
			errs = append(errs, b.Free())
		}
	}
	se.k, se.v, se.arena = nil, nil, nil
	return errors.Join(errs...)
}

// step carves the session's forward of M ≤ Chunk rows at position pos.
func (se *GPUSession) step(M, pos int) (*gpuStep, error) {
	g := se.g
	c := g.m.Config
	cv := &carver{b: se.arena}
	s := &gpuStep{acts: make([]gpuActs, c.Layers), kv: se, pos: pos}
	g.carveActs(cv, &s.acts[0], M)
	for l := range s.acts {
		s.acts[l] = s.acts[0]
	}
	half := max(g.m.rope.Dims/2, 1)
	s.x, s.tmp = cv.take(M*c.Dim), cv.take(M*c.Dim)
	if se.all {
		s.xnf, s.logits, s.targets, s.loss = cv.take(M*c.Dim), cv.take(M*c.Vocab), cv.take(M), cv.take(M)
	} else {
		s.xnf, s.logits = cv.take(c.Dim), cv.take(c.Vocab)
	}
	s.lh = cv.take(M * max(se.ad.maxRank(), 1))
	s.cos, s.sin, s.cosSWA, s.sinSWA = cv.take(M*half), cv.take(M*half), cv.take(M*half), cv.take(M*half)
	s.part = cv.take(decodePartFloats(c))
	return s, cv.err
}

// WarmUp runs a chunk of rows and then one token through the session
// (token 0), so that the driver loads what those shapes need before the
// device's memory is measured, and empties the cache again.
func (se *GPUSession) WarmUp() error {
	defer func() { se.Pos = 0 }()
	se.Pos = 0
	toks := make([]int, se.Chunk)
	var err error
	if se.all {
		tg := make([]int, se.Chunk)
		_, _, err = se.NLL(toks, tg)
	} else {
		_, err = se.Forward(toks)
	}
	if err == nil && se.Pos < se.maxLen {
		_, err = se.Forward(toks[:1])
	}
	return err
}

// Forward runs tokens at positions Pos.. (their keys and values join the
// cache) and returns the last one's logits (V floats, valid until the next
// call).
func (se *GPUSession) Forward(tokens []int) ([]float32, error) {
	err := se.run(tokens, func(st *gpuStep, lo, M int, last bool) error {
		if !last {
			return nil
		}
		g, c := se.g, se.g.m.Config
		x, err := st.x.F32((M-1)*c.Dim, c.Dim)
		if err != nil {
			return err
		}
		xn, err := st.xnf.F32(0, c.Dim)
		if err != nil {
			return err
		}
		if err := g.d.RMSNorm(xn, x, g.outNorm, 1, c.Dim, c.Eps); err != nil {
			return err
		}
		if err := g.matmul(st.logits, xn, 1, g.output); err != nil {
			return err
		}
		return st.logits.ReadF32(se.logits, 0)
	})
	if err != nil {
		return nil, err
	}
	return se.logits, nil
}

// NLL runs tokens at positions Pos.. and returns the summed negative
// log-likelihood of targets (one per token: the id that should follow it,
// or −1 for none) and how many there were. The session must have been
// made for scoring.
func (se *GPUSession) NLL(tokens, targets []int) (float64, int, error) {
	if !se.all {
		return 0, 0, errors.New("model: NLL of a GPU session not made for scoring")
	}
	if len(targets) != len(tokens) {
		return 0, 0, fmt.Errorf("model: %d targets for %d tokens", len(targets), len(tokens))
	}
	g, c := se.g, se.g.m.Config
	var nll float64
	n := 0
	rows := make([]float32, se.Chunk)
	err := se.run(tokens, func(s *gpuStep, lo, M int, _ bool) error {
		tg := make([]int32, M)
		for i, t := range targets[lo : lo+M] {
			if t >= c.Vocab {
				return fmt.Errorf("model: target id %d outside the vocabulary (%d)", t, c.Vocab)
			}
			tg[i] = int32(max(t, -1))
		}
		if err := s.targets.Write(0, unsafe.Slice((*byte)(unsafe.Pointer(&tg[0])), 4*M)); err != nil {
			return err
		}
		if err := g.d.RMSNorm(s.xnf, s.x, g.outNorm, M, c.Dim, c.Eps); err != nil {
			return err
		}
		if err := g.matmul(s.logits, s.xnf, M, g.output); err != nil {
			return err
		}
		if err := g.d.CrossEntropy(nil, s.loss, s.logits, s.targets, M, c.Vocab, 1); err != nil {
			return err
		}
		if err := s.loss.ReadF32(rows[:M], 0); err != nil {
			return err
		}
		for i, t := range tg {
			if t >= 0 {
				nll += float64(rows[i])
				n++
			}
		}
		return nil
	})
	return nll, n, err
}

// run runs tokens at positions Pos.. a chunk at a time, each chunk's
// blocks then done(step, first row, rows, whether the last chunk), all on
// the device's thread (one Batch).
func (se *GPUSession) run(tokens []int, done func(s *gpuStep, lo, M int, last bool) error) error {
	return se.g.d.Batch(func() error { return se.runNow(tokens, done) })
}

func (se *GPUSession) runNow(tokens []int, done func(s *gpuStep, lo, M int, last bool) error) error {
	g := se.g
	c := g.m.Config
	if len(tokens) == 0 {
		return errors.New("model: no tokens to run")
	}
	if se.arena == nil {
		return errors.New("model: the GPU session was freed")
	}
	if se.Pos+len(tokens) > se.maxLen {
		return fmt.Errorf("model: sequence of %d tokens exceeds the session's %d", se.Pos+len(tokens), se.maxLen)
	}
	for _, t := range tokens {
		if t < 0 || t >= c.Vocab {
			return fmt.Errorf("model: token id %d outside the vocabulary (%d)", t, c.Vocab)
		}
	}
	for lo := 0; lo < len(tokens); lo += se.Chunk {
		part := tokens[lo:min(lo+se.Chunk, len(tokens))]
		M := len(part)
		s, err := se.step(M, se.Pos)
		if err != nil {
			return err
		}
		if err := g.embed(s.x, part); err != nil {
			return err
		}
		if err := g.ropeTables(s, se.Pos, M); err != nil {
			return err
		}
		if err := g.blocks(s, 1, M, se.ad); err != nil {
			return err
		}
		se.Pos += M
		if err := done(s, lo, M, lo+M == len(tokens)); err != nil {
			return err
		}
	}
	return nil
}
