package memtest

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qtune/qtune/budget"
	"github.com/qtune/qtune/quant"
)

// The budget as a property: for every job (generate, eval, each method) the
// smallest budget qtune accepts is asked of `qtune plan`, and the job runs
// under budgets drawn afresh from a seed between it and 2.5 times it; every
// run must succeed with its peak resident set (VmHWM) at or under its
// budget. The same again with every core busy in spinning loops: a user's
// laptop is rarely idle, and a budget that holds only while the collector
// has the CPU to itself is not strict.
//
// `make test` runs the short sweep (110M Q4_0, two budgets a job, one of
// them beside busy loops). QTUNE_MEM_SWEEP=long (`make test-mem-sweep`)
// runs six budgets a job on 110M Q4_0 and NF4, each quiet and busy, and the
// 1B models under two budgets, and writes the table to QTUNE_SWEEP_TABLE.
// QTUNE_SWEEP_SEED repeats a sweep.

// sweepJob is a job without its budget.
type sweepJob struct {
	name string
	args []string
}

func sweepJobs(t *testing.T, m string) []sweepJob {
	data := shakespeare(t, "sweep-data", 16)
	text := filepath.Join(data, "train.jsonl")
	tr := func(method string, extra ...string) []string {
		return append([]string{"train", "--model", m, "--data", data, "--method", method, "--iters", "2", "--batch-size", "2",
			"--max-seq-length", "64", "--rank", "4", "--steps-per-eval", "0",
			"--adapter-path", filepath.Join(tmpDir, "sweep-adapter-"+method)}, extra...)
	}
	return []sweepJob{
		{"generate", []string{"generate", "--model", m, "--prompt", "Once upon a time", "-n", "8", "--temp", "0"}},
		{"eval", []string{"eval", "--model", m, "--data", text, "--max-seq-length", "64", "--limit", "4"}},
		{"lora", tr("lora")},
		{"lora-dropout", tr("lora", "--dropout", "0.1")}, // masks in the step's workspace (ScratchAdapter)
		{"qlora", tr("qlora")},
		{"mezo", tr("mezo")},
		{"loho", tr("loho")},
		{"loho-intra", tr("loho-intra", "--fo-ratio", "0.01", "--zo-target", "lora")},
		{"loreml", tr("loreml", "--stage1-iters", "1")},
	}
}

var smallestRe = regexp.MustCompile(`--max-mem (\d+)MiB`)

// smallestBudget asks `qtune plan` for the smallest budget the job fits.
func smallestBudget(t *testing.T, args []string) int64 {
	t.Helper()
	_, errs, _, err := run(t, append(append([]string{"plan"}, args...), "--max-mem", "1MiB")...)
	mm := smallestRe.FindStringSubmatch(errs)
	if err == nil || mm == nil {
		t.Fatalf("qtune plan %v --max-mem 1MiB: %v, no smallest budget in %q", args, err, errs)
	}
	n, _ := strconv.ParseInt(mm[1], 10, 64)
	return n << 20
}

// sweepBudgets is the smallest budget, then k−1 budgets drawn one from each
// of k−1 equal slices of (smallest, 2.5·smallest], rounded to a MiB.
func sweepBudgets(r *rand.Rand, smallest int64, k int) []int64 {
	out := []int64{smallest}
	span := float64(smallest) * 1.5
	for i := 0; i < k-1; i++ {
		f := (float64(i) + r.Float64()) / float64(k-1)
		b := smallest + int64(f*span)
		out = append(out, max((b+(1<<20)-1)>>20<<20, smallest+1<<20))
	}
	return out
}

// busy spins a goroutine on its own OS thread on every core until stop.
func busy() (stop func()) {
	var quit atomic.Bool
	var wg sync.WaitGroup
	for i := 0; i < runtime.NumCPU(); i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			x := uint64(i + 1)
			for !quit.Load() {
				for j := 0; j < 1<<16; j++ {
					x ^= x << 13
					x ^= x >> 7
					x ^= x << 17
				}
			}
			_ = x
		}()
	}
	return func() { quit.Store(true); wg.Wait() }
}

// sweepRow is one job's results for the table.
type sweepRow struct {
	model, job string
	smallest   int64
	runs       int
	worst      float64 // highest peak/budget
	worstBusy  float64
}

func sweepSeed(t *testing.T) uint64 {
	if s := os.Getenv("QTUNE_SWEEP_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("QTUNE_SWEEP_SEED %q: %v", s, err)
		}
		return v
	}
	return uint64(time.Now().UnixNano())
}

// check runs the job under budget b, beside busy loops when load, and
// records the peak against the budget: the run must succeed at or under it.
func (row *sweepRow) check(t *testing.T, args []string, b int64, load bool) {
	t.Helper()
	var stop func()
	if load {
		stop = busy()
	}
	_, errs, peak, err := run(t, append(append([]string{}, args...), "--max-mem", fmt.Sprintf("%dMiB", b>>20))...)
	state := "quiet"
	if stop != nil {
		stop()
		state = "busy"
	}
	row.runs++
	ratio := float64(peak) / float64(b)
	if load {
		row.worstBusy = max(row.worstBusy, ratio)
	} else {
		row.worst = max(row.worst, ratio)
	}
	t.Logf("%-18s %-10s %-5s budget %-9s peak %-9s (%.1f%%)", row.model, row.job, state,
		budget.FormatSize(b), budget.FormatSize(peak), 100*ratio)
	if err != nil {
		t.Errorf("%s %s under %s (%s): %v\n%s", row.model, row.job, budget.FormatSize(b), state, err, lastLine(errs))
	} else if peak > b {
		t.Errorf("%s %s under %s (%s): peak RSS %s exceeds the budget", row.model, row.job, budget.FormatSize(b), state, budget.FormatSize(peak))
	}
}

// sweep runs every job of the model under k budgets, each quiet and busy
// (busyAll), or the last one busy only (the short sweep).
func sweep(t *testing.T, r *rand.Rand, m string, k int, busyAll bool) []sweepRow {
	var rows []sweepRow
	for _, j := range sweepJobs(t, m) {
		smallest := smallestBudget(t, j.args)
		row := sweepRow{model: filepath.Base(m), job: j.name, smallest: smallest}
		budgets := sweepBudgets(r, smallest, k)
		for i, b := range budgets {
			loads := []bool{false}
			if busyAll {
				loads = append(loads, true)
			} else if i == len(budgets)-1 {
				loads = []bool{true} // the short sweep: its last budget beside busy loops
			}
			for _, load := range loads {
				row.check(t, j.args, b, load)
			}
		}
		rows = append(rows, row)
	}
	return rows
}

func TestBudgetSweep(t *testing.T) {
	seed := sweepSeed(t)
	t.Logf("sweep seed %d (QTUNE_SWEEP_SEED=%d repeats it)", seed, seed)
	r := rand.New(rand.NewPCG(seed, 0x5eed))
	long := os.Getenv("QTUNE_MEM_SWEEP") == "long"
	var rows []sweepRow
	if !long {
		rows = sweep(t, r, model(t, "110M", quant.Q4_0), 2, false)
	} else {
		for _, typ := range []quant.Type{quant.Q4_0, quant.NF4} {
			rows = append(rows, sweep(t, r, model(t, "110M", typ), 6, true)...)
		}
		for _, typ := range []quant.Type{quant.Q4_0, quant.NF4} {
			m := model(t, "1B", typ)
			for _, j := range sweepJobs(t, m) {
				if j.name != "generate" && j.name != "eval" && j.name != "lora" && j.name != "mezo" {
					continue
				}
				smallest := smallestBudget(t, j.args)
				row := sweepRow{model: filepath.Base(m), job: j.name, smallest: smallest}
				for _, b := range []int64{smallest, (smallest*3/2 + (1 << 20) - 1) >> 20 << 20} {
					row.check(t, j.args, b, true)
				}
				rows = append(rows, row)
			}
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "seed %d, %s\n\n| model | job | smallest budget | runs | highest peak/budget, quiet | busy |\n|---|---|---|---|---|---|\n", seed, runtime.GOARCH)
	pct := func(f float64) string {
		if f == 0 {
			return "–"
		}
		return fmt.Sprintf("%.1f%%", 100*f)
	}
	for _, row := range rows {
		fmt.Fprintf(&b, "| %s | %s | %s | %d | %s | %s |\n", row.model, row.job, budget.FormatSize(row.smallest), row.runs, pct(row.worst), pct(row.worstBusy))
	}
	t.Log("\n" + b.String())
	if p := os.Getenv("QTUNE_SWEEP_TABLE"); p != "" {
		if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
			t.Error(err)
		}
	}
}
