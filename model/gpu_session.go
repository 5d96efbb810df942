package model

import (
	"errors"
	"fmt"

	"github.com/qtune/qtune/kernels/cuda"
)

// GPUSession is generation on the device: a KV cache per block (float32,
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
	logits []float32
}

// GPUPrefillChunk is the rows of a prompt a GPU session runs at once.
const GPUPrefillChunk = 256

// GPUSessionBytes is what NewSession(maxLen, chunk) holds on the device
// besides the weights and the adapters: the KV cache, one chunk's forward
// (R the adapters' largest rank) and the products' workspace for chunk rows.
func GPUSessionBytes(m *Model, maxLen, chunk, R int, p cuda.Precision) int64 {
	g := &GPU{m: m, prec: p}
	c := m.Config
	kv := 2 * int64(c.Layers) * int64((4*maxLen*c.KVHeads*c.HeadDim+511)&^511)
	var ws int64
	if chunk > 4 { // fewer rows take the matrix-vector kernels
		for _, w := range append(m.allMatrices(), &m.Output) {
			ws = max(ws, cuda.MatMulWorkspace(chunk, &cuda.Matrix{Type: w.Type, Rows: w.Rows, Cols: w.Cols}, p))
		}
	}
	return kv + 4*int64(g.sessionFloats(chunk, max(R, 1))) + (ws+511)&^511
}

// sessionFloats is one forward of M rows: one block's activations (every
// block reuses them), the residual stream and its scratch, the last row's
// normalized state and logits, the adapters' scratch and the rotation
// tables.
func (g *GPU) sessionFloats(M, R int) int {
	c := g.m.Config
	half := max(g.m.rope.Dims/2, 1)
	return g.actFloats(M) + al(M*c.Dim)*2 + al(c.Dim) + al(c.Vocab) + al(M*R) + 4*al(M*half)
}

// NewSession makes a generation session of up to maxLen positions
// (capped at the context) with the adapters ad (nil: none; without
// dropout), prompts run chunk rows at a time (≤ 0: GPUPrefillChunk).
func (g *GPU) NewSession(maxLen, chunk int, ad GPUAdapters) (se *GPUSession, err error) {
	c := g.m.Config
	maxLen = min(maxLen, c.Context)
	if maxLen < 1 {
		return nil, fmt.Errorf("model: a GPU session of %d positions", maxLen)
	}
	if chunk <= 0 {
		chunk = GPUPrefillChunk
	}
	chunk = min(chunk, maxLen)
	if ad.dropIn() > 0 {
		return nil, errors.New("model: generation with LoRA dropout on")
	}
	se = &GPUSession{g: g, ad: ad, maxLen: maxLen, Chunk: chunk, logits: make([]float32, c.Vocab)}
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
	if se.arena, err = g.d.Alloc(4 * int64(g.sessionFloats(chunk, max(ad.maxRank(), 1)))); err != nil {
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
	s.x, s.tmp, s.xnf, s.logits = cv.take(M*c.Dim), cv.take(M*c.Dim), cv.take(c.Dim), cv.take(c.Vocab)
	s.lh = cv.take(M * max(se.ad.maxRank(), 1))
	s.cos, s.sin, s.cosSWA, s.sinSWA = cv.take(M*half), cv.take(M*half), cv.take(M*half), cv.take(M*half)
	return s, cv.err
}

// Forward runs tokens at positions Pos.. (their keys and values join the
// cache) and returns the last one's logits (V floats, valid until the next
// call).
func (se *GPUSession) Forward(tokens []int) ([]float32, error) {
	g := se.g
	c := g.m.Config
	if len(tokens) == 0 {
		return nil, errors.New("model: no tokens to run")
	}
	if se.arena == nil {
		return nil, errors.New("model: the GPU session was freed")
	}
	if se.Pos+len(tokens) > se.maxLen {
		return nil, fmt.Errorf("model: sequence of %d tokens exceeds the session's %d", se.Pos+len(tokens), se.maxLen)
	}
	for _, t := range tokens {
		if t < 0 || t >= c.Vocab {
			return nil, fmt.Errorf("model: token id %d outside the vocabulary (%d)", t, c.Vocab)
		}
	}
	var s *gpuStep
	for i := 0; i < len(tokens); i += se.Chunk {
		part := tokens[i:min(i+se.Chunk, len(tokens))]
		M := len(part)
		var err error
		if s, err = se.step(M, se.Pos); err != nil {
			return nil, err
		}
		if err := g.embed(s.x, part); err != nil {
			return nil, err
		}
		if err := g.ropeTables(s, se.Pos, M); err != nil {
			return nil, err
		}
		if err := g.blocks(s, 1, M, se.ad); err != nil {
			return nil, err
		}
		se.Pos += M
		if i+M < len(tokens) {
			continue
		}
		last, err := s.x.F32((M-1)*c.Dim, c.Dim)
		if err != nil {
			return nil, err
		}
		if err := g.d.RMSNorm(s.xnf, last, g.outNorm, 1, c.Dim, c.Eps); err != nil {
			return nil, err
		}
		if err := g.matmul(s.logits, s.xnf, 1, g.output); err != nil {
			return nil, err
		}
	}
	return se.logits, s.logits.ReadF32(se.logits, 0)
}
