package kernels_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"

	"github.com/qtune/qtune/kernels"
)

// Section 4 of the benchmark table: the attention-side kernels (ops.go) at
// the shapes of the 15M/110M/1B configurations, each measured at the best
// instruction set and at the generic loops in the same run.
//
// The row ops (RMSNorm, SwiGLU, RoPE, softmax, cross-entropy) run on one
// thread, as the model calls them; GB/s counts the bytes each must read and
// write once, against the all-core stream-read bandwidth, and at these sizes
// the data sits mostly in cache, so the ratio can pass 100%. Attention runs
// one sequence per worker in parallel (the model's split over B), and
// GFLOP/s counts 2·D per multiply-add column of the causal score, output
// and gradient products (4·D·H per query-key pair forward, 10·D·H backward)
// against the all-core FMA peak.

type opModel struct {
	name               string
	C, H, Hkv, D, F, V int
}

var opModels = []opModel{
	{"15M", 288, 6, 6, 48, 768, 32000},
	{"110M", 768, 12, 12, 64, 2048, 32000},
	{"1B", 2048, 32, 8, 64, 8192, 32000},
}

func opsTable(p *kernels.Pool, peak, readBW float64, quick bool, want func(op, typ, shape string) bool) {
	ms := opModels
	if quick {
		ms = ms[1:]
	}
	r := rand.New(rand.NewPCG(3, 4))
	fmt.Printf("\nattention-side kernels (ISA %s vs generic Go, same run; row ops on one thread, attention one sequence per worker)\n\n", kernels.ISA())
	fmt.Printf("| %-14s | %-34s | %15s | %-16s | %15s | %-7s |\n", "op", "shape", "speed", "of machine limit", "generic", "speedup")
	fmt.Printf("|%s|%s|%s|%s|%s|%s|\n", strings.Repeat("-", 16), strings.Repeat("-", 36), strings.Repeat("-", 17), strings.Repeat("-", 18), strings.Repeat("-", 17), strings.Repeat("-", 9))
	isa := kernels.ISA()
	row := func(op, shape, unit string, amount float64, f func()) {
		if !want(op, "F32", shape) {
			return
		}
		fast := amount / best(f) / 1e9
		restore := kernels.SetISA("generic")
		gen := amount / best(f) / 1e9
		restore()
		if kernels.ISA() != isa {
			panic("ISA not restored")
		}
		limit, lname := fast/readBW, "read BW"
		if unit == "GFLOP/s" {
			limit, lname = fast/peak, "FMA peak"
		}
		fmt.Printf("| %-14s | %-34s | %7.1f %-7s | %5.0f%% %-9s | %7.1f %-7s | %6.1fx |\n", op, shape, fast, unit, 100*limit, lname, gen, unit, fast/gen)
	}
	const T = 512
	for _, m := range ms {
		C, F, V := m.C, m.F, m.V
		qd, kvd := m.H*m.D, m.Hkv*m.D
		sh := func(s string) string { return fmt.Sprintf("%s (%s)", s, m.name) }

		x, w, dy := randSlice(r, T*C), randSlice(r, C), randSlice(r, T*C)
		out, dx, dw := make([]float32, T*C), make([]float32, T*C), make([]float32, C)
		row("RMSNorm", sh(fmt.Sprintf("T=%d C=%d", T, C)), "GB/s", 8*T*float64(C), func() {
			for t := 0; t < T; t++ {
				kernels.RMSNorm(out[t*C:(t+1)*C], x[t*C:(t+1)*C], w, 1e-5)
			}
		})
		row("RMSNorm bwd", sh(fmt.Sprintf("T=%d C=%d", T, C)), "GB/s", 16*T*float64(C), func() {
			for t := 0; t < T; t++ {
				kernels.RMSNormBackward(dx[t*C:(t+1)*C], dw, dy[t*C:(t+1)*C], x[t*C:(t+1)*C], w, 1e-5)
			}
		})

		g, u, dh := randSlice(r, T*F), randSlice(r, T*F), randSlice(r, T*F)
		h, dg, du := make([]float32, T*F), make([]float32, T*F), make([]float32, T*F)
		row("SwiGLU", sh(fmt.Sprintf("T=%d F=%d", T, F)), "GB/s", 12*T*float64(F), func() { kernels.SwiGLU(h, g, u) })
		row("SwiGLU bwd", sh(fmt.Sprintf("T=%d F=%d", T, F)), "GB/s", 28*T*float64(F), func() { kernels.SwiGLUBackward(dg, du, dh, g, u) })

		q, k := randSlice(r, T*qd), randSlice(r, T*kvd)
		half := m.D / 2
		freq := make([]float64, half)
		for j := range freq {
			freq[j] = math.Pow(10000, -float64(2*j)/float64(m.D))
		}
		cos, sin := make([]float32, T*half), make([]float32, T*half)
		for t := 0; t < T; t++ {
			kernels.RopeTable(cos[t*half:(t+1)*half], sin[t*half:(t+1)*half], freq, float64(t))
		}
		for _, neox := range []bool{false, true} {
			name := "RoPE"
			if neox {
				name = "RoPE neox"
			}
			row(name, sh(fmt.Sprintf("T=%d H=%d Hkv=%d D=%d", T, m.H, m.Hkv, m.D)), "GB/s", 8*T*float64(qd+kvd), func() {
				for t := 0; t < T; t++ {
					c, s := cos[t*half:(t+1)*half], sin[t*half:(t+1)*half]
					for hh := 0; hh < m.H; hh++ {
						kernels.Rope(q[t*qd+hh*m.D:], c, s, neox)
					}
					for hh := 0; hh < m.Hkv; hh++ {
						kernels.Rope(k[t*kvd+hh*m.D:], c, s, neox)
					}
				}
			})
		}

		// softmax over the causal score rows of one head (lengths 1..T)
		sc := randSlice(r, T)
		row("softmax", sh(fmt.Sprintf("rows 1..%d", T)), "GB/s", 8*float64(T*(T+1)/2), func() {
			for t := 1; t <= T; t++ {
				kernels.Softmax(sc[:t])
				sc[t-1] = float32(t % 7)
			}
		})
		if m.name == ms[0].name {
			rows := 16
			lg, dl := randSlice(r, rows*V), make([]float32, rows*V)
			row("cross-entropy", fmt.Sprintf("%d rows, V=%d", rows, V), "GB/s", 12*float64(rows*V), func() {
				for i := 0; i < rows; i++ {
					kernels.CrossEntropy(dl[i*V:(i+1)*V], lg[i*V:(i+1)*V], i, 1.0/16)
				}
			})
			row("log-sum-exp", fmt.Sprintf("%d rows, V=%d", rows, V), "GB/s", 4*float64(rows*V), func() {
				for i := 0; i < rows; i++ {
					kernels.LogSumExp(lg[i*V : (i+1)*V])
				}
			})
		}

		// causal attention, one sequence per worker
		for _, tt := range []int{128, 512} {
			B := p.Workers()
			aq, ak, av := randSlice(r, B*tt*qd), randSlice(r, B*tt*kvd), randSlice(r, B*tt*kvd)
			ao, ado := make([]float32, B*tt*qd), randSlice(r, B*tt*qd)
			lse := make([]float32, B*m.H*tt)
			dq, dk, dv := make([]float32, B*tt*qd), make([]float32, B*tt*kvd), make([]float32, B*tt*kvd)
			pairs := float64(B) * float64(m.H) * float64(tt*(tt+1)/2)
			shape := sh(fmt.Sprintf("B=%d T=%d H=%d Hkv=%d D=%d", B, tt, m.H, m.Hkv, m.D))
			row("attention", shape, "GFLOP/s", 4*float64(m.D)*pairs, func() {
				p.Parallel(B, 1, func(lo, hi int) {
					for b := lo; b < hi; b++ {
						kernels.AttentionSeq(ao[b*tt*qd:(b+1)*tt*qd], lse[b*m.H*tt:(b+1)*m.H*tt], aq[b*tt*qd:(b+1)*tt*qd], ak[b*tt*kvd:(b+1)*tt*kvd], av[b*tt*kvd:(b+1)*tt*kvd], tt, m.H, m.Hkv, m.D, make([]float32, tt))
					}
				})
			})
			row("attention bwd", shape, "GFLOP/s", 10*float64(m.D)*pairs, func() {
				p.Parallel(B, 1, func(lo, hi int) {
					for b := lo; b < hi; b++ {
						kernels.AttentionSeqBackward(dq[b*tt*qd:(b+1)*tt*qd], dk[b*tt*kvd:(b+1)*tt*kvd], dv[b*tt*kvd:(b+1)*tt*kvd], ado[b*tt*qd:(b+1)*tt*qd],
							aq[b*tt*qd:(b+1)*tt*qd], ak[b*tt*kvd:(b+1)*tt*kvd], av[b*tt*kvd:(b+1)*tt*kvd], lse[b*m.H*tt:(b+1)*m.H*tt], tt, m.H, m.Hkv, m.D, make([]float32, 2*tt))
					}
				})
			})
		}
	}
}
