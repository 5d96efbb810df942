package data

import (
	"errors"
	"fmt"
	"math"
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

// Source is what a Batcher reads: examples of packed tokens, each
// id | loss<<31 (LossFlag). Examples (in memory) and a TokenFile (on disk)
// are Sources.
type Source interface {
	NumExamples() int
	ExampleLen(i int) int
	// ReadTokens fills dst with tokens off, off+1, ... of example i.
	ReadTokens(i, off int, dst []uint32) error
}

// Examples is a Source over examples held in memory.
type Examples []Example

// NumExamples is the number of examples.
func (e Examples) NumExamples() int { return len(e) }

// ExampleLen is the number of tokens of example i.
func (e Examples) ExampleLen(i int) int { return len(e[i].Tokens) }

// ReadTokens packs tokens off... of example i into dst; an id outside
// 0..2^31-1 is an error.
func (e Examples) ReadTokens(i, off int, dst []uint32) error {
	x := &e[i]
	if off < 0 || off+len(dst) > len(x.Tokens) || len(x.Loss) != len(x.Tokens) {
		return fmt.Errorf("%w: tokens %d..%d of example %d (%d tokens, %d loss flags)", ErrBatch, off, off+len(dst), i, len(x.Tokens), len(x.Loss))
	}
	for k := range dst {
		t := x.Tokens[off+k]
		if t < 0 {
			return fmt.Errorf("%w: example %d has token id %d", ErrBatch, i, t)
		}
		dst[k] = uint32(t)
		if x.Loss[off+k] {
			dst[k] |= LossFlag
		}
	}
	return nil
}

// Batcher yields the batches of a Source's examples, epoch after epoch,
// each epoch in its own seeded shuffled order. Its position can be saved and
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
//
// Memory is per example, not per token: the epoch's order (4 bytes an
// example), with packing each example's place in the stream (8), and, when
// some examples are left out, the list of those kept (4). Tokens are read
// from the Source one row at a time into a buffer the Batcher reuses.
type Batcher struct {
	src Source
	o   BatchOptions
	pos Pos
	nb  int // batches per epoch

	keep  []int32 // (N) the Source's index of each kept example; nil: all kept
	n     int     // kept examples
	rows  int     // packing: rows per epoch
	total int64   // packing: stream length S

	epoch int     // epoch of perm, -1 before the first
	perm  []int32 // (N) example order of epoch
	start []int64 // (N+1) packing: stream offset of perm[i]
	buf   []uint32
}

// ErrBatch marks options or examples that give no batches.
var ErrBatch = errors.New("data: cannot batch")

// NewBatcher checks the options and examples and starts at Pos{0, 0}. It
// keeps src (Examples are not copied) and reads from it in every Next.
func NewBatcher(src Source, o BatchOptions) (*Batcher, error) {
	if o.BatchSize < 1 || o.MaxSeqLen < 1 {
		return nil, fmt.Errorf("%w: batch size %d, max sequence length %d", ErrBatch, o.BatchSize, o.MaxSeqLen)
	}
	N := src.NumExamples()
	if N > math.MaxInt32 {
		return nil, fmt.Errorf("%w: %d examples, at most %d", ErrBatch, N, math.MaxInt32)
	}
	b := &Batcher{src: src, o: o, epoch: -1}
	if ex, ok := src.(Examples); ok {
		for i, e := range ex {
			if len(e.Loss) != len(e.Tokens) {
				return nil, fmt.Errorf("%w: example %d has %d tokens and %d loss flags", ErrBatch, i, len(e.Tokens), len(e.Loss))
			}
		}
	}
	short := 0
	for i := range N {
		if n := src.ExampleLen(i); n >= 2 {
			b.total += int64(n)
		} else {
			short++
		}
	}
	b.n = N - short
	if short > 0 && b.n > 0 {
		b.keep = make([]int32, 0, b.n)
		for i := range N {
			if src.ExampleLen(i) >= 2 {
				b.keep = append(b.keep, int32(i))
			}
		}
	}
	if b.n == 0 {
		return nil, fmt.Errorf("%w: no example has 2 tokens or more", ErrBatch)
	}
	units := b.n
	if o.Pack {
		pairs := b.total - 1
		M := int64(o.MaxSeqLen)
		rows := (pairs + M - 1) / M
		if o.DropLast {
			rows = pairs / M
		}
		if rows > math.MaxInt32 {
			return nil, fmt.Errorf("%w: %d rows of %d", ErrBatch, rows, M)
		}
		b.rows = int(rows)
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

// BatcherBytes is what NewBatcher and Next hold for a Source of n examples
// (all kept or not) with options o: the order, the stream offsets when
// packing, the kept list and the read buffer; the batches Next returns are
// BatchBytes each.
func BatcherBytes(n int64, o BatchOptions) int64 {
	b := 4*n + 4*n + 4*int64(o.MaxSeqLen+1)
	if o.Pack {
		b += 8 * (n + 1)
	}
	return b
}

// BatchBytes is the size of one Batch of options o at most.
func BatchBytes(o BatchOptions) int64 {
	return int64(o.BatchSize) * (16*int64(o.MaxSeqLen) + 8)
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
// after the last batch of one. An error (a failed read of the Source)
// leaves the position where it was.
func (b *Batcher) Next() (Batch, error) {
	b.shuffle(b.pos.Epoch)
	var out Batch
	var err error
	if b.o.Pack {
		out, err = b.packed(b.pos.Index)
	} else {
		out, err = b.padded(b.pos.Index)
	}
	if err != nil {
		return Batch{}, err
	}
	b.pos.Index++
	if b.pos.Index == b.nb {
		b.pos = Pos{b.pos.Epoch + 1, 0}
	}
	return out, nil
}

func newBatch(rows, T, pad int) Batch {
	out := Batch{B: rows, T: T, Tokens: make([]int, rows*T), Targets: make([]int, rows*T), Lengths: make([]int, rows)}
	for i := range out.Tokens {
		out.Tokens[i] = pad
		out.Targets[i] = -1
	}
	return out
}

// example is the Source's index of kept example k.
func (b *Batcher) example(k int32) int {
	if b.keep != nil {
		return int(b.keep[k])
	}
	return int(k)
}

// words is the read buffer, n long.
func (b *Batcher) words(n int) []uint32 {
	if cap(b.buf) < n {
		b.buf = make([]uint32, n, max(n, b.o.MaxSeqLen+1))
	}
	return b.buf[:n]
}

// fillRow writes the L positions of a row from its L+1 packed tokens w.
func fillRow(tokens, targets []int, w []uint32, L int) {
	for t := 0; t < L; t++ {
		tokens[t] = int(w[t] &^ LossFlag)
		if v := w[t+1]; v&LossFlag != 0 {
			targets[t] = int(v &^ LossFlag)
		}
	}
}

func (b *Batcher) padded(i int) (Batch, error) {
	idx := b.perm[i*b.o.BatchSize : min((i+1)*b.o.BatchSize, len(b.perm))]
	T := 0
	for _, k := range idx {
		T = max(T, min(b.src.ExampleLen(b.example(k))-1, b.o.MaxSeqLen))
	}
	out := newBatch(len(idx), T, b.o.Pad)
	for r, k := range idx {
		e := b.example(k)
		L := min(b.src.ExampleLen(e)-1, b.o.MaxSeqLen)
		out.Lengths[r] = L
		w := b.words(L + 1)
		if err := b.src.ReadTokens(e, 0, w); err != nil {
			return Batch{}, err
		}
		fillRow(out.Tokens[r*T:], out.Targets[r*T:], w, L)
	}
	return out, nil
}

func (b *Batcher) packed(i int) (Batch, error) {
	M := int64(b.o.MaxSeqLen)
	r0, r1 := i*b.o.BatchSize, min((i+1)*b.o.BatchSize, b.rows)
	pairs := b.total - 1
	T := int(min(M, pairs-int64(r0)*M))
	out := newBatch(r1-r0, T, b.o.Pad)
	for r := r0; r < r1; r++ {
		p := int64(r) * M
		L := int(min(M, pairs-p))
		out.Lengths[r-r0] = L
		// The row's L+1 stream tokens, from the example holding position p
		// on, piece by piece.
		w := b.words(L + 1)
		k := sort.Search(b.n, func(j int) bool { return b.start[j+1] > p })
		off := p - b.start[k]
		for got := 0; got < len(w); k, off = k+1, 0 {
			e := b.example(b.perm[k])
			n := min(int64(b.src.ExampleLen(e))-off, int64(len(w)-got))
			if err := b.src.ReadTokens(e, int(off), w[got:got+int(n)]); err != nil {
				return Batch{}, err
			}
			got += int(n)
		}
		fillRow(out.Tokens[(r-r0)*T:], out.Targets[(r-r0)*T:], w, L)
	}
	return out, nil
}

// shuffle makes perm (and, packing, start) the order of epoch e.
func (b *Batcher) shuffle(e int) {
	if b.epoch == e {
		return
	}
	b.epoch = e
	b.perm = permutation(b.n, b.o.Seed, e, b.perm)
	if b.o.Pack {
		if b.start == nil {
			b.start = make([]int64, b.n+1)
		}
		s := int64(0)
		for i, k := range b.perm {
			b.start[i] = s
			s += int64(b.src.ExampleLen(b.example(k)))
		}
		b.start[b.n] = s
	}
}

// permutation is a Fisher-Yates shuffle of 0..n-1 driven by splitmix64,
// seeded from (seed, epoch). It is defined here, not borrowed from
// math/rand, so that an order saved in a checkpoint stays the same across
// Go releases.
func permutation(n int, seed uint64, epoch int, buf []int32) []int32 {
	p := buf[:0]
	for i := range n {
		p = append(p, int32(i))
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
