package kernels

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// attnRef is causal grouped-query attention and its backward in float64,
// with the magnitudes (the same sums over |terms|) that scale the bounds.
type attnRef struct {
	out, lse, dq, dk, dv        []float64
	outMag, dqMag, dkMag, dvMag []float64
	sigma                       float64 // max over rows of scale·Σ_i |q_i·k_ui|
}

func refAttention(q, k, v, dout []float32, T, H, Hkv, D int) attnRef {
	qd, kvd := H*D, Hkv*D
	scale := 1 / math.Sqrt(float64(D))
	r := attnRef{out: make([]float64, T*qd), lse: make([]float64, H*T), dq: make([]float64, T*qd),
		dk: make([]float64, T*kvd), dv: make([]float64, T*kvd), outMag: make([]float64, T*qd),
		dqMag: make([]float64, T*qd), dkMag: make([]float64, T*kvd), dvMag: make([]float64, T*kvd)}
	s, sa, p := make([]float64, T), make([]float64, T), make([]float64, T)
	dp, dpa, ds, dsa := make([]float64, T), make([]float64, T), make([]float64, T), make([]float64, T)
	for h := 0; h < H; h++ {
		g := h / (H / Hkv)
		for t := 0; t < T; t++ {
			m := math.Inf(-1)
			for u := 0; u <= t; u++ {
				s[u], sa[u] = 0, 0
				for i := 0; i < D; i++ {
					x := float64(q[t*qd+h*D+i]) * float64(k[u*kvd+g*D+i])
					s[u] += x
					sa[u] += math.Abs(x)
				}
				s[u] *= scale
				r.sigma = math.Max(r.sigma, sa[u]*scale)
				m = math.Max(m, s[u])
			}
			var z float64
			for u := 0; u <= t; u++ {
				z += math.Exp(s[u] - m)
			}
			lse := m + math.Log(z)
			r.lse[h*T+t] = lse
			var rowsum, rowsumA float64
			for u := 0; u <= t; u++ {
				p[u] = math.Exp(s[u] - lse)
				dp[u], dpa[u] = 0, 0
				for i := 0; i < D; i++ {
					x := float64(dout[t*qd+h*D+i]) * float64(v[u*kvd+g*D+i])
					dp[u] += x
					dpa[u] += math.Abs(x)
				}
				rowsum += p[u] * dp[u]
				rowsumA += p[u] * dpa[u]
			}
			for u := 0; u <= t; u++ {
				ds[u] = p[u] * (dp[u] - rowsum) * scale
				dsa[u] = p[u] * (dpa[u] + rowsumA) * scale
				for i := 0; i < D; i++ {
					o, kk, vv := t*qd+h*D+i, u*kvd+g*D+i, float64(v[u*kvd+g*D+i])
					r.out[o] += p[u] * vv
					r.outMag[o] += p[u] * math.Abs(vv)
					r.dq[o] += ds[u] * float64(k[kk])
					r.dqMag[o] += dsa[u] * math.Abs(float64(k[kk]))
					r.dk[kk] += ds[u] * float64(q[o])
					r.dkMag[kk] += dsa[u] * math.Abs(float64(q[o]))
					r.dv[kk] += p[u] * float64(dout[o])
					r.dvMag[kk] += p[u] * math.Abs(float64(dout[o]))
				}
			}
		}
	}
	return r
}

// attnTol is the bound doc.go states for attention: 2⁻²⁴·(2(D+4)·σ + 2T +
// D + E + 16) times the magnitude of the element (its sum over |terms|),
// σ the largest scaled |q|·|k| of a score: the scores' dot products (D
// terms each, amplified by exp), the softmax (T terms, exp), and the
// products with V, K, Q or dO (T terms).
func attnTol(T, D int, sigma, mag float64) float64 {
	return u24*(2*float64(D+4)*sigma+float64(2*T+D+expULP+16))*mag + 1e-30
}

// accTol is the rounding an accumulating backward adds through its
// starting value c₀ (doc.go: "plus |c₀| when accumulating"): the T+2
// partial sums that carry it each round relative to it.
func accTol(T int, c0 float32) float64 {
	return u24 * float64(T+2) * math.Abs(float64(c0))
}

func checkAttention(t testing.TB, T, H, Hkv, D int, seed uint64) {
	r := rand.New(rand.NewPCG(seed, 16))
	qd, kvd := H*D, Hkv*D
	q, k, v, dout := randSlice(r, T*qd), randSlice(r, T*kvd), randSlice(r, T*kvd), randSlice(r, T*qd)
	dq0, dk0, dv0 := randSlice(r, T*qd), randSlice(r, T*kvd), randSlice(r, T*kvd)
	ref := refAttention(q, k, v, dout, T, H, Hkv, D)
	what := func(op string, l level) string {
		return fmt.Sprintf("%s %s T=%d H=%d Hkv=%d D=%d", op, l, T, H, Hkv, D)
	}
	for _, l := range levels() {
		withLevel(t, l, func() {
			out, lse := make([]float32, T*qd), make([]float32, H*T)
			AttentionSeq(out, lse, q, k, v, T, H, Hkv, D, make([]float32, T))
			for i := range out {
				near(t, what("AttentionSeq out", l), i, out[i], ref.out[i], attnTol(T, D, ref.sigma, ref.outMag[i]))
			}
			for i := range lse {
				near(t, what("AttentionSeq lse", l), i, lse[i], ref.lse[i], attnTol(T, D, ref.sigma, 1+math.Abs(ref.lse[i])))
			}
			dq, dk, dv := copyOf(dq0), copyOf(dk0), copyOf(dv0)
			AttentionSeqBackward(dq, dk, dv, dout, q, k, v, lse, T, H, Hkv, D, make([]float32, 2*T))
			for i := range dq {
				w := float64(dq0[i]) + ref.dq[i]
				near(t, what("AttentionSeqBackward dq", l), i, dq[i], w, attnTol(T, D, ref.sigma, ref.dqMag[i])+accTol(T, dq0[i])+2*ulpOf(w))
			}
			for i := range dk {
				w := float64(dk0[i]) + ref.dk[i]
				near(t, what("AttentionSeqBackward dk", l), i, dk[i], w, attnTol(T, D, ref.sigma, ref.dkMag[i])+accTol(T, dk0[i])+2*ulpOf(w))
				w = float64(dv0[i]) + ref.dv[i]
				near(t, what("AttentionSeqBackward dv", l), i, dv[i], w, attnTol(T, D, ref.sigma, ref.dvMag[i])+accTol(T, dv0[i])+2*ulpOf(w))
			}
		})
	}
}

// TestAttentionPrefix: chunks of query rows against the keys before them
// give the rows of whole-sequence attention (float64 reference), for every
// split of heads, at every level.
func TestAttentionPrefix(t *testing.T) {
	for i, sh := range [][4]int{{1, 1, 1, 1}, {9, 4, 2, 8}, {70, 2, 1, 16}, {130, 3, 3, 48}, {200, 4, 2, 64}} {
		T, H, Hkv, D := sh[0], sh[1], sh[2], sh[3]
		r := rand.New(rand.NewPCG(uint64(i), 17))
		qd, kvd := H*D, Hkv*D
		q, k, v := randSlice(r, T*qd), randSlice(r, T*kvd), randSlice(r, T*kvd)
		ref := refAttention(q, k, v, make([]float32, T*qd), T, H, Hkv, D)
		for _, l := range levels() {
			withLevel(t, l, func() {
				for _, chunk := range []int{1, 7, 64, T} {
					out := make([]float32, T*qd)
					for t0 := 0; t0 < T; t0 += chunk {
						m := min(chunk, T-t0)
						hs := max(1, H/2)
						AttentionPrefix(out[t0*qd:], q[t0*qd:(t0+m)*qd], k[:(t0+m)*kvd], v[:(t0+m)*kvd], t0, m, H, Hkv, D, 0, hs)
						AttentionPrefix(out[t0*qd:], q[t0*qd:(t0+m)*qd], k[:(t0+m)*kvd], v[:(t0+m)*kvd], t0, m, H, Hkv, D, hs, H)
					}
					for j := range out {
						near(t, fmt.Sprintf("AttentionPrefix %s T=%d H=%d Hkv=%d D=%d chunk %d", l, T, H, Hkv, D, chunk), j, out[j], ref.out[j], attnTol(T, D, ref.sigma, ref.outMag[j]))
					}
				}
			})
		}
	}
}

// TestAttention: the blocked GEMM form (fast levels) and the row form
// (generic) against float64, with sequences longer than one query block.
func TestAttention(t *testing.T) {
	for i, sh := range [][4]int{{1, 1, 1, 1}, {5, 4, 2, 3}, {9, 4, 2, 8}, {70, 2, 1, 16}, {65, 2, 2, 24},
		{130, 3, 3, 48}, {200, 4, 2, 64}, {150, 1, 1, 7}} {
		checkAttention(t, sh[0], sh[1], sh[2], sh[3], uint64(i))
	}
}

func TestAttentionBlockRows(t *testing.T) {
	for _, T := range []int{1, 64, 512, 4096, 8192, 1 << 20} {
		b := attnBlockRows(T)
		if b%8 != 0 || b < 8 || b > 64 || (b > 8 && b*T > attnScratch) {
			t.Fatalf("T=%d: block of %d rows", T, b)
		}
	}
}
