package tokenizer

// The merge loop shared by both algorithms, after llama.cpp's
// llm_tokenizer_spm / llm_tokenizer_bpe sessions: symbols form a linked list
// over byte ranges of the text; candidate pairs wait in a max-heap ordered by
// key (score, or minus the merge rank) and then by leftmost position. A
// popped pair is applied only if both symbols are still as they were when it
// was pushed; otherwise it is stale and dropped. Reference loop (llama2.c,
// O(n²)): repeat { find the adjacent pair with the best key, leftmost on
// ties; merge it } until no pair is mergeable.

type symbol struct {
	start, end int32 // byte range in the text
	prev, next int32 // neighbours, -1 at the ends
	id         int32 // token id, -1 when the range is not a token
}

type bigram struct {
	key         float64 // larger merges first
	left, right int32
	end         int32 // right.end when pushed
	id          int32 // token of the merged range
}

type merger struct {
	syms []symbol
	heap []bigram
}

func (m *merger) reset() {
	m.syms = m.syms[:0]
	m.heap = m.heap[:0]
}

// add appends a symbol covering [start, end) with token id.
func (m *merger) add(start, end int, id int32) {
	i := int32(len(m.syms))
	prev := i - 1
	if len(m.syms) > 0 {
		m.syms[i-1].next = i
	}
	m.syms = append(m.syms, symbol{start: int32(start), end: int32(end), prev: prev, next: -1, id: id})
}

func less(a, b *bigram) bool { // a before b
	if a.key != b.key {
		return a.key > b.key
	}
	return a.left < b.left
}

func (m *merger) push(b bigram) {
	h := append(m.heap, b)
	i := len(h) - 1
	for i > 0 {
		p := (i - 1) / 2
		if !less(&h[i], &h[p]) {
			break
		}
		h[i], h[p] = h[p], h[i]
		i = p
	}
	m.heap = h
}

func (m *merger) pop() bigram {
	h := m.heap
	top := h[0]
	last := len(h) - 1
	h[0] = h[last]
	h = h[:last]
	i := 0
	for {
		l := 2*i + 1
		if l >= len(h) {
			break
		}
		c := l
		if r := l + 1; r < len(h) && less(&h[r], &h[l]) {
			c = r
		}
		if !less(&h[c], &h[i]) {
			break
		}
		h[i], h[c] = h[c], h[i]
		i = c
	}
	m.heap = h
	return top
}

// pairFunc reports whether symbols l and r merge, with the key and the
// resulting token.
type pairFunc func(l, r *symbol) (key float64, id int32, ok bool)

func (m *merger) try(l, r int32, pair pairFunc) {
	if l < 0 || r < 0 {
		return
	}
	key, id, ok := pair(&m.syms[l], &m.syms[r])
	if !ok {
		return
	}
	m.push(bigram{key: key, left: l, right: r, end: m.syms[r].end, id: id})
}

// run merges until no pair applies. Dead symbols get start = end = -1.
func (m *merger) run(pair pairFunc) {
	for i := 1; i < len(m.syms); i++ {
		m.try(int32(i-1), int32(i), pair)
	}
	for len(m.heap) > 0 {
		b := m.pop()
		l, r := &m.syms[b.left], &m.syms[b.right]
		if l.start < 0 || r.start < 0 || l.next != b.right || r.end != b.end {
			continue // stale
		}
		l.end = r.end
		l.id = b.id
		l.next = r.next
		if r.next >= 0 {
			m.syms[r.next].prev = b.left
		}
		r.start, r.end = -1, -1
		m.try(l.prev, b.left, pair)
		m.try(b.left, l.next, pair)
	}
}
