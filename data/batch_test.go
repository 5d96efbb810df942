package data

import (
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/qtune/qtune/internal/shared"
)

func ex(toks []int, loss string) Example {
	if len(loss) != len(toks) {
		panic("mask length")
	}
	l := make([]bool, len(toks))
	for i := range loss {
		l[i] = loss[i] == '1'
	}
	return Example{Tokens: ids32(toks), Loss: l}
}

func TestBatchPaddedLayout(t *testing.T) {
	a := ex([]int{1, 10, 11, 12, 13, 14}, "001111") // truncated: 5 pairs, 4 positions
	b := ex([]int{1, 20, 21}, "010")                // 2 positions, last token not a target
	tiny := ex([]int{1}, "0")                       // left out: no pair
	bt, err := NewBatcher(Examples([]Example{a, tiny, b}), BatchOptions{BatchSize: 2, MaxSeqLen: 4, Pad: 99})
	if err != nil {
		t.Fatal(err)
	}
	if bt.BatchesPerEpoch() != 1 {
		t.Fatalf("%d batches", bt.BatchesPerEpoch())
	}
	got := next(t, bt)
	rowA := Batch{T: 4, Tokens: []int{1, 10, 11, 12}, Targets: []int{-1, 11, 12, 13}, Lengths: []int{4}}
	rowB := Batch{T: 4, Tokens: []int{1, 20, 99, 99}, Targets: []int{20, -1, -1, -1}, Lengths: []int{2}}
	want := cat(rowA, rowB)
	if got.Tokens[1] == 20 {
		want = cat(rowB, rowA)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
	if got.NumTokens() != 6 || got.NumTargets() != 4 {
		t.Errorf("NumTokens %d NumTargets %d", got.NumTokens(), got.NumTargets())
	}
	// T is the batch's longest row, not MaxSeqLen.
	bt, _ = NewBatcher(Examples([]Example{b}), BatchOptions{BatchSize: 1, MaxSeqLen: 100})
	if g := next(t, bt); g.T != 2 || !reflect.DeepEqual(g.Tokens, []int{1, 20}) || !reflect.DeepEqual(g.Targets, []int{20, -1}) {
		t.Errorf("short row %+v", g)
	}
}

func cat(rows ...Batch) Batch {
	out := Batch{T: rows[0].T}
	for _, r := range rows {
		out.B++
		out.Tokens = append(out.Tokens, r.Tokens...)
		out.Targets = append(out.Targets, r.Targets...)
		out.Lengths = append(out.Lengths, r.Lengths...)
	}
	return out
}

func TestBatchPackedLayout(t *testing.T) {
	// One example: the stream is the example; 7 pairs in rows of 3.
	e := ex([]int{1, 10, 11, 12, 13, 14, 15, 2}, "00111111")
	bt, err := NewBatcher(Examples([]Example{e}), BatchOptions{BatchSize: 2, MaxSeqLen: 3, Pack: true, Pad: 0})
	if err != nil {
		t.Fatal(err)
	}
	if bt.BatchesPerEpoch() != 2 {
		t.Fatalf("%d batches", bt.BatchesPerEpoch())
	}
	b0, b1 := next(t, bt), next(t, bt)
	want0 := Batch{B: 2, T: 3, Tokens: []int{1, 10, 11, 12, 13, 14}, Targets: []int{-1, 11, 12, 13, 14, 15}, Lengths: []int{3, 3}}
	want1 := Batch{B: 1, T: 1, Tokens: []int{15}, Targets: []int{2}, Lengths: []int{1}}
	if !reflect.DeepEqual(b0, want0) || !reflect.DeepEqual(b1, want1) {
		t.Errorf("got\n%+v\n%+v\nwant\n%+v\n%+v", b0, b1, want0, want1)
	}
	// DropLast drops the partial row and the incomplete batch.
	bt, _ = NewBatcher(Examples([]Example{e}), BatchOptions{BatchSize: 1, MaxSeqLen: 3, Pack: true, DropLast: true})
	if bt.BatchesPerEpoch() != 2 {
		t.Errorf("DropLast: %d batches, want 2", bt.BatchesPerEpoch())
	}

	// Two examples: the row crosses from one into the other; the next
	// example's BOS is not a target.
	a := ex([]int{1, 10, 2}, "011")
	b := ex([]int{1, 20, 21, 2}, "0011")
	bt, _ = NewBatcher(Examples([]Example{a, b}), BatchOptions{BatchSize: 4, MaxSeqLen: 4, Pack: true, Pad: 7})
	got := next(t, bt)
	var want Batch
	if bt.perm[0] == 0 { // stream 1 10 2 1 20 21 2
		want = Batch{B: 2, T: 4, Tokens: []int{1, 10, 2, 1, 20, 21, 7, 7}, Targets: []int{10, 2, -1, -1, 21, 2, -1, -1}, Lengths: []int{4, 2}}
	} else { // stream 1 20 21 2 1 10 2
		want = Batch{B: 2, T: 4, Tokens: []int{1, 20, 21, 2, 1, 10, 7, 7}, Targets: []int{-1, 21, 2, -1, 10, 2, -1, -1}, Lengths: []int{4, 2}}
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
}

// flatRows is an independent reference for packing: build the whole stream,
// then slice it.
func flatRows(exs []Example, perm []int32, M int) (toks, tgts [][]int) {
	var s []int
	var l []bool
	for _, k := range perm {
		for _, t := range exs[k].Tokens {
			s = append(s, int(t))
		}
		l = append(l, exs[k].Loss...)
	}
	for p := 0; p < len(s)-1; p += M {
		L := min(M, len(s)-1-p)
		tg := make([]int, L)
		for t := range tg {
			tg[t] = -1
			if l[p+t+1] {
				tg[t] = s[p+t+1]
			}
		}
		toks = append(toks, s[p:p+L])
		tgts = append(tgts, tg)
	}
	return toks, tgts
}

func manyExamples(n int) []Example {
	var out []Example
	for i := 0; i < n; i++ {
		toks := []int{1000 + i} // a first token that names the example
		loss := []bool{false}
		for j := 0; j < 1+(i*7)%13; j++ {
			toks = append(toks, 100+i*20+j)
			loss = append(loss, j%3 != 0)
		}
		out = append(out, Example{ids32(toks), loss})
	}
	return out
}

func TestBatchPackedMatchesFlatStream(t *testing.T) {
	exs := manyExamples(37)
	for _, M := range []int{1, 3, 8, 64} {
		bt, err := NewBatcher(Examples(exs), BatchOptions{BatchSize: 3, MaxSeqLen: M, Pack: true, Seed: 5, Pad: -5})
		if err != nil {
			t.Fatal(err)
		}
		for epoch := 0; epoch < 2; epoch++ {
			var rowsT, rowsY [][]int
			for i := 0; i < bt.BatchesPerEpoch(); i++ {
				b := next(t, bt)
				for r := 0; r < b.B; r++ {
					L := b.Lengths[r]
					rowsT = append(rowsT, b.Tokens[r*b.T:r*b.T+L])
					rowsY = append(rowsY, b.Targets[r*b.T:r*b.T+L])
					for j := L; j < b.T; j++ {
						if b.Tokens[r*b.T+j] != -5 || b.Targets[r*b.T+j] != -1 {
							t.Fatalf("M %d: padding not pad/-1", M)
						}
					}
				}
			}
			wantT, wantY := flatRows(exs, permutation(len(exs), 5, epoch, nil), M)
			if !reflect.DeepEqual(rowsT, wantT) || !reflect.DeepEqual(rowsY, wantY) {
				t.Fatalf("M %d epoch %d: packed rows differ from the flat stream", M, epoch)
			}
		}
	}
}

func next(t testing.TB, bt *Batcher) Batch {
	t.Helper()
	b, err := bt.Next()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func collect(t testing.TB, bt *Batcher, n int) []Batch {
	t.Helper()
	var out []Batch
	for i := 0; i < n; i++ {
		out = append(out, next(t, bt))
	}
	return out
}

func TestBatchShuffleDeterministicAndPerEpoch(t *testing.T) {
	exs := manyExamples(23)
	o := BatchOptions{BatchSize: 4, MaxSeqLen: 16, Seed: 7}
	b1, _ := NewBatcher(Examples(exs), o)
	b2, _ := NewBatcher(Examples(exs), o)
	n := b1.BatchesPerEpoch()
	if n != 6 {
		t.Fatalf("%d batches per epoch", n)
	}
	r1, r2 := collect(t, b1, 3*n), collect(t, b2, 3*n)
	if !reflect.DeepEqual(r1, r2) {
		t.Fatal("same seed, different batches")
	}
	if b1.Position() != (Pos{3, 0}) {
		t.Errorf("position %+v after 3 epochs", b1.Position())
	}
	order := func(bs []Batch) string {
		s := ""
		for _, b := range bs {
			for r := 0; r < b.B; r++ {
				s += fmt.Sprint(b.Tokens[r*b.T], " ")
			}
		}
		return s
	}
	e0, e1 := order(r1[:n]), order(r1[n:2*n])
	if e0 == e1 {
		t.Error("epoch 1 has the order of epoch 0")
	}
	// Every epoch sees every example once; the last batch is short.
	for e := 0; e < 3; e++ {
		seen := map[int]int{}
		for _, b := range r1[e*n : (e+1)*n] {
			for r := 0; r < b.B; r++ {
				seen[b.Tokens[r*b.T]]++
			}
		}
		if len(seen) != len(exs) {
			t.Errorf("epoch %d saw %d distinct examples of %d", e, len(seen), len(exs))
		}
	}
	if r1[n-1].B != 3 {
		t.Errorf("last batch has %d rows, want 3", r1[n-1].B)
	}
	b3, _ := NewBatcher(Examples(exs), BatchOptions{BatchSize: 4, MaxSeqLen: 16, Seed: 8})
	if order(collect(t, b3, n)) == e0 {
		t.Error("another seed gave the same order")
	}
	b4, _ := NewBatcher(Examples(exs), BatchOptions{BatchSize: 4, MaxSeqLen: 16, Seed: 7, DropLast: true})
	if b4.BatchesPerEpoch() != 5 {
		t.Errorf("DropLast: %d batches", b4.BatchesPerEpoch())
	}
}

// The shuffle is part of the checkpoint format: a resumed run must see the
// same order on any Go release. Changing it breaks resuming old runs.
func TestPermutationIsStable(t *testing.T) {
	got := permutation(10, 42, 3, nil)
	want := []int32{0, 7, 1, 6, 8, 4, 2, 3, 9, 5}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("permutation(10, 42, 3) = %v, want %v", got, want)
	}
}

func TestBatchSeekResumes(t *testing.T) {
	exs := manyExamples(29)
	for _, o := range []BatchOptions{
		{BatchSize: 4, MaxSeqLen: 8, Seed: 1},
		{BatchSize: 3, MaxSeqLen: 5, Seed: 2, Pack: true},
		{BatchSize: 2, MaxSeqLen: 7, Seed: 3, Pack: true, DropLast: true},
	} {
		run, _ := NewBatcher(Examples(exs), o)
		n := run.BatchesPerEpoch()
		for _, stop := range []int{0, 1, n - 1, n, n + 2, 2*n + 1} {
			run, _ := NewBatcher(Examples(exs), o)
			collect(t, run, stop)
			p := run.Position()
			want := collect(t, run, n+3)
			res, _ := NewBatcher(Examples(exs), o)
			collect(t, res, 2) // somewhere else first
			if err := res.Seek(p); err != nil {
				t.Fatal(err)
			}
			if res.Position() != p {
				t.Fatalf("Position %+v after Seek(%+v)", res.Position(), p)
			}
			if got := collect(t, res, n+3); !reflect.DeepEqual(got, want) {
				t.Errorf("%+v: resumed at %+v, batches differ", o, p)
			}
		}
		// The end of an epoch is the start of the next.
		if err := run.Seek(Pos{1, n}); err != nil || run.Position() != (Pos{2, 0}) {
			t.Errorf("Seek(end of epoch): %v %+v", err, run.Position())
		}
		for _, p := range []Pos{{-1, 0}, {0, -1}, {0, n + 1}} {
			if err := run.Seek(p); !errors.Is(err, ErrBatch) {
				t.Errorf("Seek(%+v): %v", p, err)
			}
		}
	}
}

func TestNewBatcherErrors(t *testing.T) {
	good := []Example{ex([]int{1, 2, 3}, "011")}
	for _, c := range []struct {
		ex []Example
		o  BatchOptions
	}{
		{good, BatchOptions{BatchSize: 0, MaxSeqLen: 4}},
		{good, BatchOptions{BatchSize: 1, MaxSeqLen: 0}},
		{[]Example{{Tokens: []int32{1, 2}, Loss: []bool{false}}}, BatchOptions{BatchSize: 1, MaxSeqLen: 4}},
		{[]Example{ex([]int{1}, "0")}, BatchOptions{BatchSize: 1, MaxSeqLen: 4}},
		{nil, BatchOptions{BatchSize: 1, MaxSeqLen: 4}},
		{good, BatchOptions{BatchSize: 2, MaxSeqLen: 4, DropLast: true}},
		{good, BatchOptions{BatchSize: 1, MaxSeqLen: 4, Pack: true, DropLast: true}}, // 2 pairs, no full row
	} {
		if _, err := NewBatcher(Examples(c.ex), c.o); !errors.Is(err, ErrBatch) {
			t.Errorf("%+v: %v", c.o, err)
		}
	}
}

func TestPermutationIsUniform(t *testing.T) {
	count := map[[3]int32]int{}
	const epochs = 6000
	for e := 0; e < epochs; e++ {
		p := permutation(3, 11, e, nil)
		count[[3]int32{p[0], p[1], p[2]}]++
	}
	if len(count) != 6 {
		t.Fatalf("%d of 6 orders seen", len(count))
	}
	for p, c := range count {
		if c < 850 || c > 1150 { // expected 1000, sd about 29
			t.Errorf("order %v seen %d times of %d", p, c, epochs)
		}
	}
}

// A Batcher over a TokenFile gives exactly the batches of one over the same
// examples in memory: padded and packed, over several epochs, after Seek,
// with examples too short to batch left out of both.
func TestBatchesFromTokenFileEqualInMemory(t *testing.T) {
	dir := t.TempDir()
	var sb strings.Builder
	for i := 0; i < 60; i++ {
		switch i % 5 {
		case 0:
			sb.WriteString(`{"text":""}` + "\n") // no token
		case 1:
			sb.WriteString(`{"text":"a"}` + "\n") // one token
		default:
			fmt.Fprintf(&sb, "{\"text\":%q}\n", strings.Repeat("xyz ", i%17)+fmt.Sprint(i))
		}
	}
	short := writeData(t, dir, "short.jsonl", sb.String())
	for _, c := range []struct {
		path string
		o    TokenizeOptions
	}{
		{short, TokenizeOptions{NoBOS: true}},
		{shared.Path(t, "assets", "data", "sst2", "train.jsonl"), TokenizeOptions{AddEOS: true}},
		{shared.Path(t, "assets", "data", "tinyshakespeare", "valid.jsonl"), TokenizeOptions{AddEOS: true}},
	} {
		enc := &toyEnc{}
		mem := Examples(loadTokenize(t, enc, c.path, c.o))
		tf, _, err := CachedTokenFile(dir, CacheKey{Tokenizer: "toy"}, enc, c.path, c.o)
		if err != nil {
			t.Fatal(err)
		}
		defer tf.Close()
		for _, o := range []BatchOptions{
			{BatchSize: 4, MaxSeqLen: 16, Seed: 1, Pad: -3},
			{BatchSize: 3, MaxSeqLen: 300, Seed: 2, DropLast: true},
			{BatchSize: 3, MaxSeqLen: 8, Seed: 3, Pack: true},
			{BatchSize: 2, MaxSeqLen: 64, Seed: 4, Pack: true, DropLast: true},
			{BatchSize: 5, MaxSeqLen: 1, Seed: 5, Pack: true},
		} {
			a, err := NewBatcher(mem, o)
			if err != nil {
				t.Fatal(err)
			}
			b, err := NewBatcher(tf, o)
			if err != nil {
				t.Fatal(err)
			}
			n := a.BatchesPerEpoch()
			if b.BatchesPerEpoch() != n {
				t.Fatalf("%s %+v: %d batches per epoch from the file, %d in memory", filepath.Base(c.path), o, b.BatchesPerEpoch(), n)
			}
			steps := min(3*n, 400)
			want := collect(t, a, steps)
			if got := collect(t, b, steps); !reflect.DeepEqual(got, want) {
				t.Fatalf("%s %+v: batches from the file differ", filepath.Base(c.path), o)
			}
			p := Pos{1, n / 2}
			a.Seek(p)
			b.Seek(p)
			if !reflect.DeepEqual(collect(t, b, n), collect(t, a, n)) {
				t.Fatalf("%s %+v: batches after Seek differ", filepath.Base(c.path), o)
			}
		}
	}
}

// A step's batches make garbage of their own size only: reading rows from
// the file reuses the Batcher's buffer, and a new epoch reuses its order.
func TestBatcherNextAllocations(t *testing.T) {
	enc := &toyEnc{}
	path := shared.Path(t, "assets", "data", "tinyshakespeare", "valid.jsonl")
	tf, _, err := CachedTokenFile(t.TempDir(), CacheKey{Tokenizer: "toy"}, enc, path, TokenizeOptions{AddEOS: true})
	if err != nil {
		t.Fatal(err)
	}
	defer tf.Close()
	for _, pack := range []bool{false, true} {
		bt, err := NewBatcher(tf, BatchOptions{BatchSize: 2, MaxSeqLen: 64, Seed: 1, Pack: pack})
		if err != nil {
			t.Fatal(err)
		}
		next(t, bt)
		if n := testing.AllocsPerRun(3*bt.BatchesPerEpoch(), func() { bt.Next() }); n > 3 {
			t.Errorf("pack %v: %.1f allocations per Next, want the batch's 3", pack, n)
		}
	}
}
