package safetensors

// The Q/K row permutation (formats.md §3.2). HF checkpoints keep W_q and W_k
// rows in the rotate-half RoPE layout, GGUF in the interleaved one. Within
// each head of D = rows/heads rows:
//
//	GGUF row 2b + a  =  HF row a·(D/2) + b      a ∈ {0, 1}, b ∈ [0, D/2)
//
// heads is n_head for W_q and n_head_kv for W_k. Only rows move.

// GGUFRowForHF returns the GGUF row that holds HF row r of a Q or K matrix
// with the given number of heads and rows, or -1 when the arguments are
// invalid.
func GGUFRowForHF(r, heads, rows int) int {
	if heads <= 0 || rows <= 0 || rows%heads != 0 || (rows/heads)%2 != 0 || r < 0 || r >= rows {
		return -1
	}
	d := rows / heads
	h, i := r/d, r%d
	a, b := i/(d/2), i%(d/2)
	return h*d + 2*b + a
}

// HFRowForGGUF returns the HF row that holds GGUF row g (inverse of
// GGUFRowForHF), or -1 when the arguments are invalid.
func HFRowForGGUF(g, heads, rows int) int {
	if heads <= 0 || rows <= 0 || rows%heads != 0 || (rows/heads)%2 != 0 || g < 0 || g >= rows {
		return -1
	}
	d := rows / heads
	h, i := g/d, g%d
	a, b := i%2, i/2
	return h*d + a*(d/2) + b
}

// PermuteRowsF32 returns the rows of b (rows × cols float32, row-major)
// reordered per head between the GGUF and HF RoPE layouts (formats.md §3.2):
//
//	GGUF row 2b + a  =  HF row a·(D/2) + b      a ∈ {0, 1}, b ∈ [0, D/2)
//
// toHF moves GGUF rows to HF rows; otherwise the inverse. heads is n_head for
// q, n_head_kv for k; rows must split into heads of even size.
func PermuteRowsF32(b []float32, rows, cols, heads int, toHF bool) []float32 {
	out := make([]float32, len(b))
	for g := 0; g < rows; g++ {
		h := HFRowForGGUF(g, heads, rows)
		if toHF {
			copy(out[h*cols:(h+1)*cols], b[g*cols:(g+1)*cols])
		} else {
			copy(out[g*cols:(g+1)*cols], b[h*cols:(h+1)*cols])
		}
	}
	return out
}

// PermuteRowsInPlace is PermuteRowsF32 without the copy: the rows of b are
// moved along the permutation's cycles through one row of scratch, so a
// loader or writer holds a tensor once, not twice. It panics when the rows
// do not split into heads of even size or b does not hold rows·cols values.
func PermuteRowsInPlace(b []float32, rows, cols, heads int, toHF bool) {
	if heads <= 0 || rows <= 0 || cols <= 0 || rows%heads != 0 || (rows/heads)%2 != 0 || len(b) != rows*cols {
		panic("safetensors: PermuteRowsInPlace: bad shape")
	}
	d := rows / heads
	// src(i) is the row, within a head, whose values row i receives.
	src := func(i int) int { return GGUFRowForHF(i, 1, d) } // HF row i ← GGUF row
	if !toHF {
		src = func(i int) int { return HFRowForGGUF(i, 1, d) } // GGUF row i ← HF row
	}
	tmp := make([]float32, cols)
	done := make([]bool, d)
	for h := 0; h < heads; h++ {
		clear(done)
		head := b[h*d*cols : (h+1)*d*cols]
		for start := 0; start < d; start++ {
			if done[start] || src(start) == start {
				continue
			}
			copy(tmp, head[start*cols:(start+1)*cols])
			i := start
			for {
				done[i] = true
				s := src(i)
				if s == start {
					copy(head[i*cols:(i+1)*cols], tmp)
					break
				}
				copy(head[i*cols:(i+1)*cols], head[s*cols:(s+1)*cols])
				i = s
			}
		}
	}
}
