package data

import (
	"errors"
	"fmt"
	"math/bits"
	"sort"
)

// BatchOptions shape the batches of a Batcher.
type BatchOptions struct {
	BatchSize int // B: rows per batch
	MaxSeqLen int // longest row, in input positions
	// Pack concatenates the examples of an epoch (in shuffled order) into one
	// stream and cuts it into rows of MaxSeqLen positions; otherwise every
	// example is a row of its own, truncated and padded.
	Pack     bool
	Seed     uint64 // the order of every epoch derives from Seed and the epoch number
	DropLast bool   // drop an epoch's last incomplete batch (and, packing, its last partial row)
	Pad      int    // id written at padded positions (any valid id; its targets are -1)
}

// Batch is one step's input. Legend: B rows, T positions.
type Batch struct {
	B, T    int
	Tokens  []int // (B*T) input ids, Pad after a row's Lengths[b] positions
	Targets []int // (B*T) id to predict from position t, -1 where there is no loss
	Lengths []int // (B) non-pad positions of each row
}

// NumTokens is the number of non-pad positions (for tokens/s reports).
func (b *Batch) NumTokens() int {
	n := 0
	for _, l := range b.Lengths {
		n += l
	}
	return n
}

// NumTargets is the number of targets (the mean loss's denominator).
func (b *Batch) NumTargets() int {
	n := 0
	for _, t := range b.Targets {
		if t >= 0 {
			n++
		}
	}
	return n
}

// Pos is a Batcher's place: the batch Index of the next batch within Epoch.
type Pos struct {
	Epoch, Index int
}

// Batcher yields the batches of a set of examples, epoch after epoch, each
// epoch in its own seeded shuffled order. Its position can be saved and
// restored: after Seek(p) the batches are exactly those a run that reached p
// would have seen.
//
// An example of n tokens gives n-1 (input, target) pairs: position t holds
// Tokens[t] and targets Tokens[t+1] when Loss[t+1]. Without packing an
// example is one row of min(n-1, MaxSeqLen) positions (truncated at the end),
// and T is the batch's longest row. Packing concatenates the epoch's examples
// as they are into one stream (tokenize with AddEOS so that they are
// separated by EOS; each starts with BOS, which is never a target) and cuts
// its S-1 pairs into rows of MaxSeqLen positions, so T is MaxSeqLen except in
// a last short batch; attention and predictions run across example
// boundaries, as in llama-style and MLX-LM packing. Examples of fewer than 2
// tokens are left out.
type Batcher struct {
	ex  []Example
	o   BatchOptions
	pos Pos
	nb  int // batches per epoch

	rows  int // packing: rows per epoch
	total int // packing: stream length S

	epoch int   // epoch of perm, -1 before the first
	perm  []int // (N) example order of epoch
	start []int // (N+1) packing: stream offset of perm[i]
}

// ErrBatch marks options or examples that give no batches.
var ErrBatch = errors.New("data: cannot batch")

// NewBatcher checks the options and examples and starts at Pos{0, 0}. It
// keeps ex (not a copy).
func NewBatcher(ex []Example, o BatchOptions) (*Batcher, error) {
	if o.BatchSize < 1 || o.MaxSeqLen < 1 {
		return nil, fmt.Errorf("%w: batch size %d, max sequence length %d", ErrBatch, o.BatchSize, o.MaxSeqLen)
	}
	b := &Batcher{o: o, epoch: -1}
	for i, e := range ex {
		if len(e.Loss) != len(e.Tokens) {
			return nil, fmt.Errorf("%w: example %d has %d tokens and %d loss flags", ErrBatch, i, len(e.Tokens), len(e.Loss))
		}
		if len(e.Tokens) >= 2 {
			b.ex = append(b.ex, e)
			b.total += len(e.Tokens)
		}
	}
	if len(b.ex) == 0 {
		return nil, fmt.Errorf("%w: no example has 2 tokens or more", ErrBatch)
	}
	units := len(b.ex)
	if o.Pack {
		pairs := b.total - 1
		b.rows = (pairs + o.MaxSeqLen - 1) / o.MaxSeqLen
		if o.DropLast {
			b.rows = pairs / o.MaxSeqLen
		}
		units = b.rows
	}
	b.nb = (units + o.BatchSize - 1) / o.BatchSize
	if o.DropLast {
		b.nb = units / o.BatchSize
	}
	if b.nb == 0 {
		return nil, fmt.Errorf("%w: %d rows do not fill a batch of %d", ErrBatch, units, o.BatchSize)
	}
	return b, nil
}

// BatchesPerEpoch is the number of batches in one pass over the examples.
func (b *Batcher) BatchesPerEpoch() int { return b.nb }

// Position is the place of the next batch.
func (b *Batcher) Position() Pos { return b.pos }

// Seek moves to p, which must be a place Position could return (Index ==
// BatchesPerEpoch is accepted as the start of the next epoch).
func (b *Batcher) Seek(p Pos) error {
	if p.Epoch < 0 || p.Index < 0 || p.Index > b.nb {
		return fmt.Errorf("%w: position %+v outside epochs of %d batches", ErrBatch, p, b.nb)
	}
	if p.Index == b.nb {
		p = Pos{p.Epoch + 1, 0}
	}
	b.pos = p
	return nil
}

// Next returns the batch at Position and moves past it, into the next epoch
// after the last batch of one.
func (b *Batcher) Next() Batch {
	b.shuffle(b.pos.Epoch)
	var out Batch
	if b.o.Pack {
		out = b.packed(b.pos.Index)
	} else {
		out = b.padded(b.pos.Index)
	}
	b.pos.Index++
	if b.pos.Index == b.nb {
		b.pos = Pos{b.pos.Epoch + 1, 0}
	}
	return out
}

func newBatch(rows, T, pad int) Batch {
	out := Batch{B: rows, T: T, Tokens: make([]int, rows*T), Targets: make([]int, rows*T), Lengths: make([]int, rows)}
	for i := range out.Tokens {
		out.Tokens[i] = pad
		out.Targets[i] = -1
	}
	return out
}

func (b *Batcher) padded(i int) Batch {
	idx := b.perm[i*b.o.BatchSize : min((i+1)*b.o.BatchSize, len(b.perm))]
	T := 0
	for _, k := range idx {
		T = max(T, min(len(b.ex[k].Tokens)-1, b.o.MaxSeqLen))
	}
	out := newBatch(len(idx), T, b.o.Pad)
	for r, k := range idx {
		e := b.ex[k]
		L := min(len(e.Tokens)-1, b.o.MaxSeqLen)
		out.Lengths[r] = L
		row := r * T
		for t := 0; t < L; t++ {
			out.Tokens[row+t] = int(e.Tokens[t])
			if e.Loss[t+1] {
				out.Targets[row+t] = int(e.Tokens[t+1])
			}
		}
	}
	return out
}

func (b *Batcher) packed(i int) Batch {
	M := b.o.MaxSeqLen
	r0, r1 := i*b.o.BatchSize, min((i+1)*b.o.BatchSize, b.rows)
	pairs := b.total - 1
	T := min(M, pairs-r0*M)
	out := newBatch(r1-r0, T, b.o.Pad)
	for r := r0; r < r1; r++ {
		p := r * M
		L := min(M, pairs-p)
		out.Lengths[r-r0] = L
		row := (r - r0) * T
		// k, off: the example holding stream position p, and p's offset in it.
		k := sort.SearchInts(b.start, p+1) - 1
		off := p - b.start[k]
		for t := 0; t <= L; t++ {
			e := &b.ex[b.perm[k]]
			tok, loss := int(e.Tokens[off]), e.Loss[off]
			if t < L {
				out.Tokens[row+t] = tok
			}
			if t > 0 && loss {
				out.Targets[row+t-1] = tok
			}
			if off++; off == len(e.Tokens) && t < L {
				k, off = k+1, 0
			}
		}
	}
	return out
}

// shuffle makes perm (and, packing, start) the order of epoch e.
func (b *Batcher) shuffle(e int) {
	if b.epoch == e {
		return
	}
	b.epoch = e
	b.perm = permutation(len(b.ex), b.o.Seed, e, b.perm)
	if b.o.Pack {
		if b.start == nil {
			b.start = make([]int, len(b.ex)+1)
		}
		s := 0
		for i, k := range b.perm {
			b.start[i] = s
			s += len(b.ex[k].Tokens)
		}
		b.start[len(b.ex)] = s
	}
}

// permutation is a Fisher-Yates shuffle of 0..n-1 driven by splitmix64,
// seeded from (seed, epoch). It is defined here, not borrowed from
// math/rand, so that an order saved in a checkpoint stays the same across
// Go releases.
func permutation(n int, seed uint64, epoch int, buf []int) []int {
	p := append(buf[:0], make([]int, n)...)
	for i := range p {
		p[i] = i
	}
	r := splitmix{mix64(seed) ^ mix64(uint64(epoch)+0x632be59bd9b4e019)}
	for i := n - 1; i > 0; i-- {
		j := int(r.below(uint64(i + 1)))
		p[i], p[j] = p[j], p[i]
	}
	return p
}

type splitmix struct{ s uint64 }

func mix64(z uint64) uint64 {
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

func (r *splitmix) next() uint64 {
	r.s += 0x9e3779b97f4a7c15
	return mix64(r.s)
}

// below returns a uniform value in [0, n), n > 0 (Lemire's method).
func (r *splitmix) below(n uint64) uint64 {
	hi, lo := bits.Mul64(r.next(), n)
	if lo < n {
		thresh := -n % n
		for lo < thresh {
			hi, lo = bits.Mul64(r.next(), n)
		}
	}
	return hi
}
