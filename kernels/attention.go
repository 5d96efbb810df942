package kernels

import (
	"math"
)

// Causal grouped-query attention over one sequence, forward and backward:
// q (T, H·D), k and v (T, Hkv·D), query head h reading kv head h/(H/Hkv).
//
// The generic form runs row by row on the vector primitives (Gemv, Softmax,
// GemvT, Ger). The fast form (any level with a GEMM micro-kernel) takes a
// block of queries at a time and turns each product into a GEMM on the
// strided heads in place: S = Q_blk·K[:n]ᵀ, O_blk = P·V[:n], and in the
// backward dP = dO_blk·V[:n]ᵀ, dQ_blk += dS·K[:n], dK[:n] += dSᵀ·Q_blk,
// dV[:n] += Pᵀ·dO_blk, where n is the block's last position + 1 (the causal
// prefix; scores past each row's own position are zeroed). It runs on the
// calling goroutine (the model spreads sequences over the workers) with a
// pooled (rows × T) score block of at most attnScratch floats (two in the
// backward).

// attnScratch caps a score block so that the backward's two stay within
// the 1 MiB above which a buffer must be reserved (for T ≤ 16384, where the
// block still has its minimum of 8 rows).
const attnScratch = 1 << 17

// serial runs the GEMMs of the blocked attention on the calling goroutine.
var serial = NewPool(1)

// attnBlockRows is the query block: 64 rows, fewer for long sequences so
// that the (rows × T) scores stay within attnScratch; a multiple of 8.
func attnBlockRows(T int) int {
	return max(8, min(64, attnScratch/max(T, 1)/8*8))
}

// AttentionSeq computes out (T, H·D) and the log-sum-exp of each score row
// in lse (H, T) for causal grouped-query attention. Reference loop:
//
//	for h, t { s[u] = q_{t,h}·k_{u,g}/√D for u ≤ t
//	           lse[h*T+t] = log Σ_u exp(s[u])
//	           out_{t,h} = Σ_u exp(s[u] − lse)·v_{u,g} }
//
// scores is scratch of length ≥ T for the generic form.
func AttentionSeq(out, lse, q, k, v []float32, T, H, Hkv, D int, scores []float32) {
	AttentionSeqWindow(out, lse, q, k, v, T, H, Hkv, D, 0, scores)
}

// AttentionSeqWindow is AttentionSeq with a sliding window: query t sees
// the keys u with t−W < u ≤ t (llama.cpp's and Hugging Face's rule: a key
// W or more positions back is masked). W ≤ 0 means no window.
func AttentionSeqWindow(out, lse, q, k, v []float32, T, H, Hkv, D, W int, scores []float32) {
	if T <= 0 || H <= 0 {
		return
	}
	checkAttn(out, q, k, v, T, H, Hkv, D)
	if kern.fn == nil {
		attentionSeqRows(out, lse, q, k, v, T, H, Hkv, D, W, scores)
		return
	}
	attentionSeqBlocked(out, lse, q, k, v, T, H, Hkv, D, W)
}

// windowStart is the first key position query t sees under window W.
func windowStart(t, W int) int {
	if W <= 0 {
		return 0
	}
	return max(0, t-W+1)
}

// AttentionSeqBackward accumulates dq, dk, dv for AttentionSeq given dout,
// rebuilding the probabilities from q, k and lse. Reference loop:
//
//	for h, t { p[u] = exp(q_{t,h}·k_{u,g}/√D − lse[h*T+t]);  dp[u] = dO_{t,h}·v_{u,g}   (u ≤ t)
//	           ds[u] = p[u]·(dp[u] − Σ_w p[w]·dp[w])/√D
//	           dq_{t,h} += Σ_u ds[u]·k_{u,g};  dk_{u,g} += ds[u]·q_{t,h};  dv_{u,g} += p[u]·dO_{t,h} }
//
// scratch needs length ≥ 2·T for the generic form.
func AttentionSeqBackward(dq, dk, dv, dout, q, k, v, lse []float32, T, H, Hkv, D int, scratch []float32) {
	AttentionSeqBackwardWindow(dq, dk, dv, dout, q, k, v, lse, T, H, Hkv, D, 0, scratch)
}

// AttentionSeqBackwardWindow is AttentionSeqBackward for AttentionSeqWindow.
func AttentionSeqBackwardWindow(dq, dk, dv, dout, q, k, v, lse []float32, T, H, Hkv, D, W int, scratch []float32) {
	if T <= 0 || H <= 0 {
		return
	}
	checkAttn(dq, q, k, v, T, H, Hkv, D)
	checkAttn(dout, dq, dk, dv, T, H, Hkv, D)
	if kern.fn == nil {
		attentionSeqBackwardRows(dq, dk, dv, dout, q, k, v, lse, T, H, Hkv, D, W, scratch)
		return
	}
	attentionSeqBackwardBlocked(dq, dk, dv, dout, q, k, v, lse, T, H, Hkv, D, W)
}

// AttentionPrefix computes causal attention for m query rows at positions
// t0..t0+m-1 of one sequence, for query heads h0 ≤ h < h1 only: q and out
// are (m, H·D), k and v hold the sequence's rows 0..t0+m-1, (Hkv·D) each.
// It is AttentionSeq's forward for a chunk of rows whose keys and values
// are already known (no log-sum-exp), for scoring long rows a chunk at a
// time. Reference loop:
//
//	for h in [h0, h1), i < m { t = t0+i;  s[u] = q_{i,h}·k_{u,g}/√D for u ≤ t
//	                           out_{i,h} = Σ_u softmax(s)[u]·v_{u,g} }
//
// It runs on the calling goroutine; callers spread heads over workers.
func AttentionPrefix(out, q, k, v []float32, t0, m, H, Hkv, D, h0, h1 int) {
	AttentionPrefixWindow(out, q, k, v, t0, m, H, Hkv, D, 0, h0, h1)
}

// AttentionPrefixWindow is AttentionPrefix under a sliding window W
// (AttentionSeqWindow's rule; W ≤ 0: none).
func AttentionPrefixWindow(out, q, k, v []float32, t0, m, H, Hkv, D, W, h0, h1 int) {
	if m <= 0 || h0 >= h1 {
		return
	}
	n := t0 + m
	qd, kvd := H*D, Hkv*D
	if t0 < 0 || Hkv <= 0 || H%Hkv != 0 || h0 < 0 || h1 > H || len(out) < m*qd || len(q) < m*qd || len(k) < n*kvd || len(v) < n*kvd {
		panic("kernels: attention shapes do not match the slices")
	}
	group := H / Hkv
	scale := float32(1 / math.Sqrt(float64(D)))
	if kern.fn == nil {
		buf := scratch.get(n)
		defer scratch.put(buf)
		for h := h0; h < h1; h++ {
			g := h / group
			for i := 0; i < m; i++ {
				lo := windowStart(t0+i, W)
				sc := buf[:t0+i+1-lo]
				Gemv(sc, k[lo*kvd+g*D:], q[i*qd+h*D:i*qd+(h+1)*D], len(sc), D, kvd, scale)
				Softmax(sc)
				oh := out[i*qd+h*D : i*qd+(h+1)*D]
				clear(oh)
				GemvT(oh, v[lo*kvd+g*D:], sc, len(sc), D, kvd)
			}
		}
		return
	}
	bq := attnBlockRows(n)
	buf := scratch.get(bq * n)
	defer scratch.put(buf)
	for h := h0; h < h1; h++ {
		g := h / group
		for i0 := 0; i0 < m; i0 += bq {
			i1 := min(m, i0+bq)
			mb, nb := i1-i0, t0+i1
			s := buf[:mb*nb]
			// S = Q_blk · K[:nb]ᵀ
			gemm(serial, kern, s, nb, mb, nb, D, headA(q, i0, h*D, qd), operandB{f: k[g*D:], rs: 1, cs: kvd}, false)
			for i := 0; i < mb; i++ {
				t := t0 + i0 + i
				lo := windowStart(t, W)
				row := s[i*nb+lo : i*nb+t+1]
				scal(row, scale)
				Softmax(row)
				clear(s[i*nb : i*nb+lo])
				clear(s[i*nb+t+1 : (i+1)*nb])
			}
			// O_blk = P · V[:nb]
			gemm(serial, kern, out[i0*qd+h*D:], qd, mb, D, nb, operandA{a: s, rs: nb, cs: 1}, operandB{f: v[g*D:], rs: kvd, cs: 1}, false)
		}
	}
}

func checkAttn(o, q, k, v []float32, T, H, Hkv, D int) {
	if Hkv <= 0 || H%Hkv != 0 || len(o) < T*H*D || len(q) < T*H*D || len(k) < T*Hkv*D || len(v) < T*Hkv*D {
		panic("kernels: attention shapes do not match the slices")
	}
}

// attentionSeqRows is the generic form, one query row at a time.
func attentionSeqRows(out, lse, q, k, v []float32, T, H, Hkv, D, W int, scores []float32) {
	group := H / Hkv
	qd, kvd := H*D, Hkv*D
	scale := float32(1 / math.Sqrt(float64(D)))
	for h := 0; h < H; h++ {
		g := h / group
		for t := 0; t < T; t++ {
			lo := windowStart(t, W)
			sc := scores[:t+1-lo]
			Gemv(sc, k[lo*kvd+g*D:], q[t*qd+h*D:t*qd+(h+1)*D], len(sc), D, kvd, scale)
			lse[h*T+t] = Softmax(sc)
			oh := out[t*qd+h*D : t*qd+(h+1)*D]
			clear(oh)
			GemvT(oh, v[lo*kvd+g*D:], sc, len(sc), D, kvd)
		}
	}
}

func attentionSeqBackwardRows(dq, dk, dv, dout, q, k, v, lse []float32, T, H, Hkv, D, W int, scratch []float32) {
	group := H / Hkv
	qd, kvd := H*D, Hkv*D
	scale := float32(1 / math.Sqrt(float64(D)))
	for h := 0; h < H; h++ {
		g := h / group
		for t := 0; t < T; t++ {
			lo := windowStart(t, W)
			n := t + 1 - lo
			p, ds := scratch[:n], scratch[T:T+n]
			qh := q[t*qd+h*D : t*qd+(h+1)*D]
			doh := dout[t*qd+h*D : t*qd+(h+1)*D]
			ko, vo := lo*kvd+g*D, lo*kvd+g*D
			Gemv(p, k[ko:], qh, n, D, kvd, scale)
			expSum(p, p, lse[h*T+t])
			Gemv(ds, v[vo:], doh, n, D, kvd, 1)
			rowsum := dotF32Fast(p, ds)
			for u, pu := range p {
				ds[u] = pu * (ds[u] - rowsum) * scale
			}
			GemvT(dq[t*qd+h*D:t*qd+(h+1)*D], k[ko:], ds, n, D, kvd)
			Ger(dk[ko:], ds, qh, n, D, kvd)
			Ger(dv[vo:], p, doh, n, D, kvd)
		}
	}
}

// headOp addresses head h of a (T, heads·D) matrix from row t0 as a GEMM
// operand: rows are positions (stride ld), columns the D dimensions.
func headA(x []float32, t0, off, ld int) operandA {
	return operandA{a: x[t0*ld+off:], rs: ld, cs: 1}
}

func attentionSeqBlocked(out, lse, q, k, v []float32, T, H, Hkv, D, W int) {
	group := H / Hkv
	qd, kvd := H*D, Hkv*D
	scale := float32(1 / math.Sqrt(float64(D)))
	bq := attnBlockRows(T)
	buf := scratch.get(bq * T)
	defer scratch.put(buf)
	for h := 0; h < H; h++ {
		g := h / group
		for t0 := 0; t0 < T; t0 += bq {
			t1 := min(T, t0+bq)
			m, n := t1-t0, t1
			s := buf[:m*n]
			// S = Q_blk · K[:n]ᵀ
			gemm(serial, kern, s, n, m, n, D, headA(q, t0, h*D, qd), operandB{f: k[g*D:], rs: 1, cs: kvd}, false)
			for i := 0; i < m; i++ {
				t := t0 + i
				lo := windowStart(t, W)
				row := s[i*n+lo : i*n+t+1]
				scal(row, scale)
				lse[h*T+t] = Softmax(row)
				clear(s[i*n : i*n+lo])
				clear(s[i*n+t+1 : (i+1)*n])
			}
			// O_blk = P · V[:n]
			gemm(serial, kern, out[t0*qd+h*D:], qd, m, D, n, operandA{a: s, rs: n, cs: 1}, operandB{f: v[g*D:], rs: kvd, cs: 1}, false)
		}
	}
}

func attentionSeqBackwardBlocked(dq, dk, dv, dout, q, k, v, lse []float32, T, H, Hkv, D, W int) {
	group := H / Hkv
	qd, kvd := H*D, Hkv*D
	scale := float32(1 / math.Sqrt(float64(D)))
	bq := attnBlockRows(T)
	buf := scratch.get(2 * bq * T)
	defer scratch.put(buf)
	for h := 0; h < H; h++ {
		g := h / group
		for t0 := 0; t0 < T; t0 += bq {
			t1 := min(T, t0+bq)
			m, n := t1-t0, t1
			p, ds := buf[:m*n], buf[bq*T:bq*T+m*n]
			// P = exp(Q_blk·K[:n]ᵀ/√D − lse), dP = dO_blk·V[:n]ᵀ
			gemm(serial, kern, p, n, m, n, D, headA(q, t0, h*D, qd), operandB{f: k[g*D:], rs: 1, cs: kvd}, false)
			gemm(serial, kern, ds, n, m, n, D, headA(dout, t0, h*D, qd), operandB{f: v[g*D:], rs: 1, cs: kvd}, false)
			for i := 0; i < m; i++ {
				t := t0 + i
				lo := windowStart(t, W)
				pr, dr := p[i*n+lo:i*n+t+1], ds[i*n+lo:i*n+t+1]
				scal(pr, scale)
				expSum(pr, pr, lse[h*T+t])
				rowsum := dotF32Fast(pr, dr)
				for u, pu := range pr {
					dr[u] = pu * (dr[u] - rowsum) * scale
				}
				clear(p[i*n : i*n+lo])
				clear(ds[i*n : i*n+lo])
				clear(p[i*n+t+1 : (i+1)*n])
				clear(ds[i*n+t+1 : (i+1)*n])
			}
			// dQ_blk += dS·K[:n];  dK[:n] += dSᵀ·Q_blk;  dV[:n] += Pᵀ·dO_blk
			gemm(serial, kern, dq[t0*qd+h*D:], qd, m, D, n, operandA{a: ds, rs: n, cs: 1}, operandB{f: k[g*D:], rs: kvd, cs: 1}, true)
			gemm(serial, kern, dk[g*D:], kvd, n, D, m, operandA{a: ds, rs: 1, cs: n}, operandB{f: q[t0*qd+h*D:], rs: qd, cs: 1}, true)
			gemm(serial, kern, dv[g*D:], kvd, n, D, m, operandA{a: p, rs: 1, cs: n}, operandB{f: dout[t0*qd+h*D:], rs: qd, cs: 1}, true)
		}
	}
}
