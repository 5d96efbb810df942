// TestKBench prints qtune's kernel benchmark table (`make bench`): for
// each op, type and shape (M, N, K) the achieved GFLOP/s or GB/s, its ratio
// to this machine's own limits measured in the same run (an assembly FMA
// loop on every core for the float32 peak, a stream copy and a stream read
// for memory bandwidth), and, when Debian's OpenBLAS is installed, the ratio
// to OpenBLAS sgemm on the same shape (loaded through purego, here only).
//
// Every figure is the best of several timed runs (the machine may be shared).
//
// It is a test that runs only when asked, so that the library never links
// OpenBLAS or purego:
//
//	cd kernels && go test -count=1 -run '^TestKBench$' -timeout 15m -args -kbench [-kbench.time 0.3s] [-kbench.filter regexp] [-kbench.quick]
package kernels_test

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/qtune/qtune/kernels"
	"github.com/qtune/qtune/kernels/internal/machine"
	"github.com/qtune/qtune/quant"
)

var (
	flagKBench = flag.Bool("kbench", false, "run TestKBench and print the kernel benchmark table")
	flagTime   = flag.Duration("kbench.time", 400*time.Millisecond, "time spent per row (best of the runs that fit, at least 3)")
	flagFilter = flag.String("kbench.filter", "", "only rows whose op/type/shape match this regexp")
	flagQuick  = flag.Bool("kbench.quick", false, "fewer rows (the 110M and 1B shapes only)")
)

// model is a Llama configuration's matrix shapes: dim C and ffn F.
type model struct {
	name     string
	dim, ffn int
}

var models = []model{{"15M", 288, 768}, {"110M", 768, 2048}, {"1B", 2048, 8192}}

type row struct {
	op, typ, shape string
	val            float64 // GFLOP/s or GB/s
	unit           string
	limit          float64 // ratio to the machine's limit
	blas           string
}

func TestKBench(t *testing.T) {
	if !*flagKBench {
		t.Skip("the benchmark table runs with -args -kbench (make bench)")
	}
	var filter *regexp.Regexp
	if *flagFilter != "" {
		filter = regexp.MustCompile(*flagFilter)
	}
	p := kernels.Default()
	peak, peakISA := machine.FMAPeak(15)
	copyBW := machine.StreamCopy(512, 7)
	readBW := machine.StreamRead(512, 7)
	blasLib := loadOpenBLAS()
	r := rand.New(rand.NewPCG(1, 2))

	fmt.Printf("qtune kernels: %s, %d threads, ISA %s\n", cpuName(), p.Workers(), kernels.ISA())
	fmt.Printf("machine limits (best of several, all cores): fp32 FMA peak %.1f GFLOP/s (%s loop), stream copy %.1f GB/s (read+write), stream read %.1f GB/s\n",
		peak, peakISA, copyBW, readBW)
	if blasLib != "" {
		fmt.Printf("OpenBLAS: %s (cblas_sgemm, its own threads)\n", blasLib)
	} else {
		fmt.Printf("OpenBLAS: not installed, column skipped (apt-get install libopenblas0-pthread)\n")
	}
	fmt.Printf("each figure: best of the runs in %v (at least 3)\n\n", *flagTime)
	fmt.Printf("| %-9s | %-5s | %-30s | %15s | %-16s | %-11s |\n", "op", "type", "shape (M,N,K)", "speed", "of machine limit", "vs OpenBLAS")
	fmt.Printf("|%s|%s|%s|%s|%s|%s|\n", strings.Repeat("-", 11), strings.Repeat("-", 7), strings.Repeat("-", 32), strings.Repeat("-", 17), strings.Repeat("-", 18), strings.Repeat("-", 13))
	emit := func(rw row) {
		fmt.Printf("| %-9s | %-5s | %-30s | %7.1f %-7s | %5.0f%% %-9s | %-11s |\n", rw.op, rw.typ, rw.shape, rw.val, rw.unit, 100*rw.limit, limitName(rw.unit), rw.blas)
	}
	want := func(op, typ, shape string) bool {
		return filter == nil || filter.MatchString(op+" "+typ+" "+shape)
	}
	blasCache := map[string]float64{}
	blasRatio := func(layout string, M, N, K int, gf float64) string {
		if cblasSgemm == nil {
			return "-"
		}
		key := fmt.Sprint(layout, M, N, K)
		bg, ok := blasCache[key]
		if !ok {
			bg = benchBLAS(layout, M, N, K, r)
			blasCache[key] = bg
		}
		return fmt.Sprintf("%.2fx", gf/bg)
	}
	ms := models
	if *flagQuick {
		ms = models[1:]
	}

	// 1. float32 GEMM in the three training layouts, on each model's FFN
	// projection (F×C weight): forward X·Wᵀ, input gradient dY·W, weight
	// gradient dYᵀ·X.
	for _, m := range ms {
		for _, bt := range []int{64, 512} {
			for _, lay := range []struct{ op, layout string }{{"Y=X·Wᵀ", "NT"}, {"dX=dY·W", "NN"}, {"dW=dYᵀX", "TN"}} {
				var M, N, K int
				switch lay.layout {
				case "NT":
					M, N, K = bt, m.ffn, m.dim
				case "NN":
					M, N, K = bt, m.dim, m.ffn
				case "TN":
					M, N, K = m.ffn, m.dim, bt
				}
				shape := fmt.Sprintf("%d,%d,%d (%s)", M, N, K, m.name)
				if !want(lay.op, "F32", shape) {
					continue
				}
				gf := benchGemm(p, lay.layout, M, N, K, r)
				emit(row{lay.op, "F32", shape, gf, "GFLOP/s", gf / peak, blasRatio(lay.layout, M, N, K, gf)})
			}
		}
	}

	// 2. Quantized forward Y = X·Wᵀ and backward dX += dY·W at B·T = 64 and
	// 512 (FFN up projection, W is F×C).
	// Q4_K first: every other type's time is also given relative to it
	// (same shape, so per weight), printed after the table.
	qtypes := []quant.Type{quant.Q4_K, quant.Q8_0, quant.Q4_0, quant.Q6_K, quant.NF4, quant.F16, quant.BF16,
		quant.Q5_K, quant.Q3_K, quant.Q2_K, quant.IQ4_NL, quant.IQ4_XS, quant.Q4_1, quant.Q5_0, quant.Q5_1}
	type relKey struct{ op, shape string }
	q4k := map[relKey]float64{}
	var rels []string
	rel := func(op, shape string, typ quant.Type, gf float64) {
		k := relKey{op, shape}
		if typ == quant.Q4_K {
			q4k[k] = gf
		} else if g, ok := q4k[k]; ok {
			rels = append(rels, fmt.Sprintf("| %-9s | %-6s | %-22s | %6.2f× |", op, typ, shape, g/gf))
		}
	}
	mats := map[string]kernels.Matrix{}
	matrix := func(typ quant.Type, rows, cols int) kernels.Matrix {
		key := fmt.Sprint(typ, rows, cols)
		w, ok := mats[key]
		if !ok {
			w = randMatrix(typ, rows, cols, r)
			mats[key] = w
		}
		return w
	}
	for _, m := range ms {
		for _, bt := range []int{64, 512} {
			for _, typ := range qtypes {
				fshape := fmt.Sprintf("%d,%d,%d (%s)", bt, m.ffn, m.dim, m.name)
				bshape := fmt.Sprintf("%d,%d,%d (%s)", bt, m.dim, m.ffn, m.name)
				doF, doB := want("fwd X·Wᵀ", typ.String(), fshape), want("bwd dY·W", typ.String(), bshape)
				if !doF && !doB {
					continue
				}
				if !rowsOfBlocks(typ, m.dim) {
					continue // ggml rejects rows that are not whole blocks
				}
				w := matrix(typ, m.ffn, m.dim)
				if doF {
					gf := benchMatMul(p, w, bt, r)
					emit(row{"fwd X·Wᵀ", typ.String(), fshape, gf, "GFLOP/s", gf / peak, blasRatio("NT", bt, m.ffn, m.dim, gf)})
					rel("fwd X·Wᵀ", fshape, typ, gf)
				}
				if doB {
					gf := benchMatMulT(p, w, bt, r)
					emit(row{"bwd dY·W", typ.String(), bshape, gf, "GFLOP/s", gf / peak, blasRatio("NN", bt, m.dim, m.ffn, gf)})
					rel("bwd dY·W", bshape, typ, gf)
				}
			}
		}
	}
	if len(rels) > 0 {
		fmt.Printf("\nquantized forward/backward time relative to Q4_K on the same shape (time per weight; target ≤ 2×):\n\n")
		fmt.Printf("| %-9s | %-6s | %-22s | %7s |\n|%s|%s|%s|%s|\n", "op", "type", "shape (M,N,K)", "× Q4_K",
			strings.Repeat("-", 11), strings.Repeat("-", 8), strings.Repeat("-", 24), strings.Repeat("-", 9))
		for _, l := range rels {
			fmt.Println(l)
		}
		fmt.Println()
	}

	// 3. Matrix-vector (B·T = 1) on each model's FFN weight, and on a 1B-class
	// output matrix (V=32000 × C=2048) that exceeds the last-level cache:
	// GB/s of weight bytes streamed, against the stream-read bandwidth.
	mvShapes := []struct {
		name   string
		rows   int
		cols   int
		isLLCx bool
	}{}
	for _, m := range ms {
		mvShapes = append(mvShapes, struct {
			name   string
			rows   int
			cols   int
			isLLCx bool
		}{m.name, m.ffn, m.dim, false})
	}
	mvShapes = append(mvShapes, struct {
		name   string
		rows   int
		cols   int
		isLLCx bool
	}{"1B out", 32000, 2048, true})
	for _, s := range mvShapes {
		for _, typ := range append([]quant.Type{quant.F32}, qtypes...) {
			shape := fmt.Sprintf("1,%d,%d (%s)", s.rows, s.cols, s.name)
			if !want("matvec", typ.String(), shape) {
				continue
			}
			if !rowsOfBlocks(typ, s.cols) {
				continue
			}
			w := matrix(typ, s.rows, s.cols)
			gbs := benchMatVec(p, w, r)
			mib := float64(len(w.Data)) / (1 << 20)
			emit(row{"matvec", typ.String(), fmt.Sprintf("%s %.0fMiB", shape, mib), gbs, "GB/s", gbs / readBW, "-"})
		}
	}
	// 4. The attention-side kernels (kbench_ops_test.go), fast and generic.
	opsTable(p, peak, readBW, *flagQuick, want)
	if p2, _ := machine.FMAPeak(5); p2 > peak*1.05 {
		fmt.Printf("\nnote: the FMA peak measured again at the end is %.1f GFLOP/s (%.0f%% above the start's): the machine was busy; ratios above use the start's figure\n", p2, 100*(p2/peak-1))
	}
	_ = os.Stdout.Sync()
}

func rowsOfBlocks(typ quant.Type, cols int) bool {
	in, err := quant.Lookup(typ)
	return err == nil && cols%in.BlockSize == 0
}

func limitName(unit string) string {
	if unit == "GB/s" {
		return "read BW"
	}
	return "FMA peak"
}

func cpuName() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				if i := strings.IndexByte(l, ':'); i >= 0 {
					return strings.TrimSpace(l[i+1:])
				}
			}
		}
	}
	return runtime.GOARCH
}

// best runs f once to warm up, then as often as fits in -time (at least 3
// times) and returns the fastest run in seconds.
func best(f func()) float64 {
	f()
	bestT := 1e30
	start := time.Now()
	for n := 0; n < 3 || time.Since(start) < *flagTime; n++ {
		t := time.Now()
		f()
		bestT = min(bestT, time.Since(t).Seconds())
	}
	return bestT
}

func randSlice(r *rand.Rand, n int) []float32 {
	s := make([]float32, n)
	for i := range s {
		s[i] = float32(r.NormFloat64())
	}
	return s
}

// randMatrix quantizes random normal weights. Except for NF4 (whose side
// table spans the tensor) it quantizes 32 distinct rows and repeats them,
// since ggml's K-quant search is slow; speed does not depend on the values.
func randMatrix(typ quant.Type, rows, cols int, r *rand.Rand) kernels.Matrix {
	if typ != quant.NF4 && rows > 32 && rows%32 == 0 {
		seed := randMatrix(typ, 32, cols, r)
		b := make([]byte, len(seed.Data)*(rows/32))
		for i := 0; i < len(b); i += len(seed.Data) {
			copy(b[i:], seed.Data)
		}
		return kernels.Matrix{Type: typ, Rows: rows, Cols: cols, Data: b}
	}
	f := randSlice(r, rows*cols)
	size, err := quant.Bytes(typ, int64(len(f)))
	if err != nil {
		panic(err)
	}
	b := make([]byte, size)
	if err := quant.Quantize(typ, b, f); err != nil {
		panic(err)
	}
	return kernels.Matrix{Type: typ, Rows: rows, Cols: cols, Data: b}
}

func benchGemm(p *kernels.Pool, layout string, M, N, K int, r *rand.Rand) float64 {
	a, b, c := randSlice(r, M*K), randSlice(r, K*N), make([]float32, M*N)
	t := best(func() {
		switch layout {
		case "NT":
			kernels.GemmNT(p, c, a, b, M, N, K, false)
		case "NN":
			kernels.GemmNN(p, c, a, b, M, N, K)
		case "TN":
			kernels.GemmTN(p, c, a, b, M, N, K)
		}
	})
	return 2 * float64(M) * float64(N) * float64(K) / t / 1e9
}

func benchBLAS(layout string, M, N, K int, r *rand.Rand) float64 {
	a, b, c := randSlice(r, M*K), randSlice(r, K*N), make([]float32, M*N)
	m, n, k := int32(M), int32(N), int32(K)
	t := best(func() {
		switch layout {
		case "NT":
			cblasSgemm(cblasRowMajor, cblasNoTrans, cblasTrans, m, n, k, 1, &a[0], k, &b[0], k, 0, &c[0], n)
		case "NN":
			cblasSgemm(cblasRowMajor, cblasNoTrans, cblasNoTrans, m, n, k, 1, &a[0], k, &b[0], n, 1, &c[0], n)
		case "TN":
			cblasSgemm(cblasRowMajor, cblasTrans, cblasNoTrans, m, n, k, 1, &a[0], m, &b[0], n, 1, &c[0], n)
		}
	})
	return 2 * float64(M) * float64(N) * float64(K) / t / 1e9
}

func benchMatMul(p *kernels.Pool, w kernels.Matrix, M int, r *rand.Rand) float64 {
	x, y := randSlice(r, M*w.Cols), make([]float32, M*w.Rows)
	t := best(func() { kernels.MatMul(p, y, x, M, w) })
	return 2 * float64(M) * float64(w.Rows) * float64(w.Cols) / t / 1e9
}

func benchMatMulT(p *kernels.Pool, w kernels.Matrix, M int, r *rand.Rand) float64 {
	dy, dx := randSlice(r, M*w.Rows), make([]float32, M*w.Cols)
	t := best(func() { kernels.MatMulT(p, dx, dy, M, w) })
	return 2 * float64(M) * float64(w.Rows) * float64(w.Cols) / t / 1e9
}

func benchMatVec(p *kernels.Pool, w kernels.Matrix, r *rand.Rand) float64 {
	x, y := randSlice(r, w.Cols), make([]float32, w.Rows)
	t := best(func() { kernels.MatMul(p, y, x, 1, w) })
	return float64(len(w.Data)) / t / 1e9
}
