package loreml

import (
	"cmp"
	"math"
	"slices"
	"sync"

	"github.com/qtune/qtune/kernels"
)

// KeptEntries is k = ⌊numel·keep⌋, the mask size of one matrix (methods.md
// §4.2 step 4, group_largest).
func KeptEntries(out, in int, keep float64) int {
	n := float64(out) * float64(in)
	return min(int(math.Floor(n*keep)), out*in)
}

// entry is one candidate of the top-k: |S| and its flat index.
type entry struct {
	v   float32
	idx int32
}

// worse orders candidates: smaller |S| first, and among equal |S| the larger
// index (the lower index wins ties).
func worse(a, b entry) bool { return a.v < b.v || (a.v == b.v && a.idx > b.idx) }

// minHeap keeps the k best candidates seen so far with the worst on top.
type minHeap []entry

func (h minHeap) down(i int) {
	n := len(h)
	for {
		l := 2*i + 1
		if l >= n {
			return
		}
		j := l
		if r := l + 1; r < n && worse(h[r], h[l]) {
			j = r
		}
		if !worse(h[j], h[i]) {
			return
		}
		h[i], h[j] = h[j], h[i]
		i = j
	}
}

func (h minHeap) up(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if !worse(h[i], h[p]) {
			return
		}
		h[i], h[p] = h[p], h[i]
		i = p
	}
}

// TopK returns the flat row-major indices (ascending) of the k entries of
// S = U·V with the largest |S| (U (out, r), V (r, in)); ties go to the lower
// index, NaN scores count as smallest. S is formed one row at a time (a row
// panel per worker), so the extra memory is one row and one k-entry heap per
// worker, never the whole matrix.
func TopK(pool *kernels.Pool, u, v []float32, out, in, r, k int) []int32 {
	if k <= 0 {
		return []int32{}
	}
	if out*in > math.MaxInt32 {
		panic("loreml: TopK: matrix too large for int32 indices")
	}
	var parts []minHeap
	var mu sync.Mutex
	pool.Parallel(out, 1, func(lo, hi int) {
		h := make(minHeap, 0, min(k, (hi-lo)*in))
		row := make([]float32, in)
		for i := lo; i < hi; i++ {
			clear(row)
			for q := 0; q < r; q++ {
				if a := u[i*r+q]; a != 0 {
					kernels.Axpy(row, a, v[q*in:(q+1)*in])
				}
			}
			base := int32(i * in)
			for j, s := range row {
				e := entry{float32(math.Abs(float64(s))), base + int32(j)}
				if e.v != e.v {
					e.v = float32(math.Inf(-1))
				}
				if len(h) < k {
					h = append(h, e)
					h.up(len(h) - 1)
				} else if worse(h[0], e) {
					h[0] = e
					h.down(0)
				}
			}
		}
		mu.Lock()
		parts = append(parts, h)
		mu.Unlock()
	})
	var all []entry
	if len(parts) == 1 {
		all = parts[0]
	} else {
		for _, p := range parts {
			all = append(all, p...)
		}
		slices.SortFunc(all, func(a, b entry) int {
			switch {
			case worse(b, a):
				return -1
			case worse(a, b):
				return 1
			}
			return 0
		})
		all = all[:min(k, len(all))]
	}
	idx := make([]int32, len(all))
	for i, e := range all {
		idx[i] = e.idx
	}
	slices.SortFunc(idx, func(a, b int32) int { return cmp.Compare(a, b) })
	return idx
}
