package train

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/qtune/qtune/internal/shared"
	"github.com/qtune/qtune/methods/lora"
	"github.com/qtune/qtune/model"
	"github.com/qtune/qtune/offload/comm"
	"github.com/qtune/qtune/offload/mpi"
)

// parallelRun is the run both sides make: 4 steps of 2 micro-batches (one
// per rank with two ranks), dropout on.
func parallelRun(t *testing.T, dir string) Config {
	c := smallRun(t, dir)
	c.Iters, c.GradAccum, c.StepsPerEval, c.SaveEvery = 4, 2, 2, 2
	// SGD with momentum: AdamW divides each gradient by its own running
	// size, so entries that are rounding noise (the two sums' orders
	// differ: one process adds micro-batch 1 into micro-batch 0's
	// gradient, two ranks add the two afterwards) move by up to the
	// learning rate either way; with the generic kernels (-tags noasm)
	// that left adapters 1e-4 apart after 4 steps while every loss stayed
	// within 1e-5. The summing is the optimizer's input either way.
	c.Optimizer, c.Momentum, c.LearningRate = "sgd", 0.9, 0.05
	switch m := os.Getenv("QTUNE_DP_METHOD"); m {
	case "mezo":
		c.Method, c.Dropout = "mezo", 0
	case "loho", "loreml":
		c.Method = m
		c.Stage1Iters = 2 // LoReML forms its mask after step 2
	}
	if a := os.Getenv("QTUNE_DP_ACCUM"); a != "" {
		fmt.Sscan(a, &c.GradAccum)
	}
	// On: a 2-core machine running 2 ranks has no core free for MPI, so
	// auto would sum after the backward pass.
	c.OverlapSums = "on"
	if o := os.Getenv("QTUNE_DP_OVERLAP"); o != "" {
		c.OverlapSums = o
	}
	return c
}

// TestDataParallelRank is one rank of TestDataParallelMatchesOneProcess
// (run by mpirun; skipped otherwise).
func TestDataParallelRank(t *testing.T) {
	out := os.Getenv("QTUNE_DP_OUT")
	if out == "" {
		t.Skip("a rank of TestDataParallelMatchesOneProcess, started by mpirun")
	}
	mode := os.Getenv("QTUNE_DP_MODE")
	timeout := 2 * time.Minute
	if mode == "die" {
		timeout = 5 * time.Second // the survivor's collective gives up after this
	}
	g, err := mpi.Open(timeout)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	cfg := parallelRun(t, os.Getenv("QTUNE_DP_DIR"))
	cfg.Comm = g
	cfg.OverlapSums = overlapOf(cfg, g.Rank())
	cfg.Resume = mode == "resume"
	if mode == "nostart" && g.Rank() == 1 {
		cfg.MaxMem = "1MiB" // refused by its plan; rank 0's fits
	}
	var onProgress func(Progress)
	if mode == "die" && g.Rank() == 1 {
		onProgress = func(p Progress) {
			if p.Kind == KindTrain && p.Iter == 3 { // after the save at 2
				os.Exit(3)
			}
		}
	}
	passes := 0
	testHookPass = func(phase string) {
		if phase == "step" {
			passes++
		}
	}
	var sums []string // per step: block sums the backward pass started / all
	testHookBlockSums = func(inPass, all int) { sums = append(sums, fmt.Sprintf("%d/%d", inPass, all)) }
	defer func() { testHookPass, testHookBlockSums = nil, nil }()
	res, err := Run(context.Background(), cfg, nil, onProgress)
	if mode == "nostart" {
		fmt.Printf("rank %d: %v\n", g.Rank(), err)
		g.Close()
		os.Exit(0) // the parent reads the messages
	}
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(res)
	if err := os.WriteFile(filepath.Join(out, fmt.Sprintf("rank%d.json", g.Rank())), b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(out, fmt.Sprintf("rank%d.passes", g.Rank())), []byte(fmt.Sprint(passes)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(out, fmt.Sprintf("rank%d.sums", g.Rank())), []byte(strings.Join(sums, " ")), 0o644); err != nil {
		t.Fatal(err)
	}
}

// ranks runs TestDataParallelRank as two ranks in mode.
func ranks(mpirun, mode, dir, out string, limit time.Duration) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	sh, _ := shared.Dir()
	cmd := exec.CommandContext(ctx, mpirun, "--oversubscribe", "--allow-run-as-root", "-np", "2",
		os.Args[0], "-test.run=^TestDataParallelRank$", "-test.v")
	cmd.Env = append(os.Environ(), "QTUNE_DP_OUT="+out, "QTUNE_DP_DIR="+dir, "QTUNE_SHARED="+sh, "QTUNE_DP_MODE="+mode,
		"OMPI_MCA_plm_rsh_agent=sh", "OMPI_MCA_btl_vader_single_copy_mechanism=none")
	b, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		return b, fmt.Errorf("did not finish in %s (a hang)", limit)
	}
	return b, err
}

func rankResults(t *testing.T, out string) [2]Result {
	var rs [2]Result
	for r := range rs {
		b, err := os.ReadFile(filepath.Join(out, fmt.Sprintf("rank%d.json", r)))
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(b, &rs[r]); err != nil {
			t.Fatal(err)
		}
	}
	return rs
}

// A rank that cannot start (its plan refused) still makes the start's
// collective: the other stops at once naming it, instead of waiting in its
// first sum for the group's timeout (2 minutes here).
func TestDataParallelRankThatCannotStart(t *testing.T) {
	exe := shared.Tool(t, "mpirun", "apt-get install openmpi-bin")
	t0 := time.Now()
	b, err := ranks(exe, "nostart", t.TempDir(), t.TempDir(), time.Minute)
	if err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	out := string(b)
	if !strings.Contains(out, "rank 1: budget: train does not fit") || !strings.Contains(out, "rank 0: train: 1 of 2 ranks could not start") {
		t.Fatalf("messages:\n%s", out)
	}
	t.Logf("both ranks stopped in %s", time.Since(t0).Round(time.Millisecond))
}

// A rank that dies mid-run (after the state saved at iteration 2) stops
// the run with an error, not a hang; the two ranks then resume from rank
// 0's state and finish with the uninterrupted run's losses.
func TestDataParallelKilledRankResumes(t *testing.T) {
	exe := shared.Tool(t, "mpirun", "apt-get install openmpi-bin")
	whole, err := Run(context.Background(), parallelRun(t, t.TempDir()), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	t0 := time.Now()
	b, err := ranks(exe, "die", dir, t.TempDir(), 2*time.Minute)
	if err == nil || strings.Contains(err.Error(), "a hang") {
		t.Fatalf("a killed rank: %v\n%s", err, b)
	}
	t.Logf("the run stopped %s after it began: %v", time.Since(t0).Round(time.Millisecond), err)
	out := t.TempDir()
	if b, err := ranks(exe, "resume", dir, out, 5*time.Minute); err != nil {
		t.Fatalf("resuming: %v\n%s", err, b)
	}
	rs := rankResults(t, out)
	if len(rs[0].Curve) != len(whole.Curve) {
		t.Fatalf("resumed curve of %d points, want %d", len(rs[0].Curve), len(whole.Curve))
	}
	for i, p := range whole.Curve {
		if q := rs[0].Curve[i]; math.Abs(q.Loss-p.Loss) > 1e-5*math.Abs(p.Loss) || q != rs[1].Curve[i] {
			t.Errorf("iteration %d: resumed ranks %v %v, uninterrupted %v", p.Iter, q, rs[1].Curve[i], p)
		}
	}
}

// Two ranks under mpirun train what one process trains with the same
// micro-batches per step: every iteration's loss, the validations and the
// saved adapters within 1e-5 (the gradient sums' order differs), the ranks
// equal to each other exactly, and only rank 0's folder written.
func TestDataParallelMatchesOneProcess(t *testing.T) {
	dataParallelMatches(t, "lora")
}

// Shares that differ between the ranks: 3 micro-batches a step (rank 0
// runs two, rank 1 one) and 1 (rank 1 runs none and sums zeros, starting
// every block's sum after the step while rank 0 started them in its
// backward pass): the same sums in the same order, the same results.
func TestDataParallelUnevenShares(t *testing.T) {
	for _, accum := range []string{"3", "1"} {
		t.Run("accum"+accum, func(t *testing.T) {
			t.Setenv("QTUNE_DP_ACCUM", accum)
			dataParallelMatches(t, "lora")
		})
	}
}

// --overlap-sums off: LoRA's gradients summed after the step (block by
// block, the collectives of an overlapping rank), the same results.
func TestDataParallelSumsAfterTheStep(t *testing.T) {
	t.Setenv("QTUNE_DP_OVERLAP", "off")
	dataParallelMatches(t, "lora")
}

// overlapOf is rank r's --overlap-sums: QTUNE_DP_OVERLAP_BY_RANK
// ("on,off") gives each rank its own, else the run's.
func overlapOf(c Config, r int) string {
	if v := strings.Split(os.Getenv("QTUNE_DP_OVERLAP_BY_RANK"), ","); len(v) == 2 {
		return v[r]
	}
	return c.OverlapSums
}

// Ranks that decide differently (a free core on one machine, none on the
// other): one sums during its backward pass, the other after it, with the
// same collectives; the results are one process's.
func TestDataParallelOverlapOnOneRank(t *testing.T) {
	t.Setenv("QTUNE_DP_OVERLAP_BY_RANK", "off,on")
	dataParallelMatches(t, "lora")
}

// groupOf is a group of size ranks, local of them on this machine, for
// the decisions made from those numbers alone.
type groupOf struct {
	comm.Comm
	size, local int
}

func (g groupOf) Size() int      { return g.size }
func (g groupOf) LocalSize() int { return g.local }
func (g groupOf) LocalRank() int { return 0 }
func (g groupOf) Name() string   { return "a test group" }

// Auto overlaps the sums only where the user left a core free for MPI's
// thread (GOMAXPROCS set below the cores the ranks here may use); on and
// off are obeyed; the plan's line says which and why.
func TestOverlapSumsDecision(t *testing.T) {
	cores, procs := runtime.NumCPU(), runtime.GOMAXPROCS(0)
	for _, c := range []struct {
		setting, env string
		local        int
		want         bool
	}{
		{"auto", "", 1, false}, // the runtime's choice leaves nothing free
		{"auto", fmt.Sprint(procs), 1, cores > procs},
		{"", fmt.Sprint(procs), cores, false},
		{"auto", fmt.Sprint(procs), 2, cores > 2*procs},
		{"on", "", cores, true},
		{"off", fmt.Sprint(procs), 1, false},
	} {
		t.Setenv("GOMAXPROCS", c.env) // read, not applied: the runtime reads it at start
		cfg := Config{Comm: groupOf{comm.Single(), 4, c.local}, OverlapSums: c.setting}
		got, why := cfg.overlapSums()
		if got != c.want || why == "" {
			t.Errorf("%q with %d local ranks, GOMAXPROCS=%q (%d cores, %d threads): %v (%s), want %v", c.setting, c.local, c.env, cores, procs, got, why, c.want)
		}
	}
	// A core left free: GOMAXPROCS=1 on this machine's cores.
	if cores > 1 {
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
		t.Setenv("GOMAXPROCS", "1")
		if got, why := (&Config{Comm: groupOf{comm.Single(), 4, 1}}).overlapSums(); !got {
			t.Errorf("one rank here on GOMAXPROCS=1 of %d cores: %s", cores, why)
		}
	}
	if got, _ := (&Config{OverlapSums: "on"}).overlapSums(); got {
		t.Error("one process overlaps sums")
	}
	bad := Defaults()
	bad.OverlapSums = "yes"
	if err := bad.checkRanges(); err == nil || !strings.Contains(err.Error(), "--overlap-sums") {
		t.Errorf("--overlap-sums yes: %v", err)
	}
}

// MeZO: each rank's share of every perturbed evaluation, the sums added;
// the same losses and the same values as one process.
func TestDataParallelMeZO(t *testing.T) {
	dataParallelMatches(t, "mezo")
}

// LoHO: the zeroth-order part's evaluations summed as MeZO's, the
// first-order LoRA gradients summed once per step; LoReML: the scores'
// gradients summed, the mask formed from equal scores on both ranks, then
// stage 2's gradients summed. Every loss as one process's.
func TestDataParallelLoHOAndLoReML(t *testing.T) {
	for _, m := range []string{"loho", "loreml"} {
		t.Run(m, func(t *testing.T) { dataParallelMatches(t, m) })
	}
}

func dataParallelMatches(t *testing.T, method string) {
	t.Setenv("QTUNE_DP_METHOD", method)
	exe := shared.Tool(t, "mpirun", "apt-get install openmpi-bin")
	oneDir := t.TempDir()
	one, err := Run(context.Background(), parallelRun(t, oneDir), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	dir, out := t.TempDir(), t.TempDir()
	if b, err := ranks(exe, "", dir, out, 5*time.Minute); err != nil {
		t.Fatalf("mpirun -np 2: %v\n%s", err, b)
	}
	ranks := rankResults(t, out)
	close := func(a, b float64) bool { return math.Abs(a-b) <= 1e-5*math.Abs(b) }
	if len(ranks[0].Curve) != len(one.Curve) || len(ranks[0].ValCurve) != len(one.ValCurve) {
		t.Fatalf("curves of %d/%d points, one process %d/%d", len(ranks[0].Curve), len(ranks[0].ValCurve), len(one.Curve), len(one.ValCurve))
	}
	for i, p := range one.Curve {
		if q := ranks[0].Curve[i]; !close(q.Loss, p.Loss) || q != ranks[1].Curve[i] {
			t.Errorf("iteration %d: ranks %v %v, one process %v", p.Iter, q, ranks[1].Curve[i], p)
		}
	}
	for i, p := range one.ValCurve {
		if q := ranks[0].ValCurve[i]; !close(q.Loss, p.Loss) {
			t.Errorf("validation %d: %v, one process %v", p.Iter, q, p)
		}
	}
	if ranks[0].Trained != one.Trained {
		t.Errorf("trained tokens %d, one process %d", ranks[0].Trained, one.Trained)
	}
	if method == "loho" || method == "loreml" {
		t.Logf("2 ranks vs one process (%s): final loss %.6f vs %.6f", method, ranks[0].FinalTrain, one.FinalTrain)
		return
	}
	if method != "lora" {
		for r := range 2 {
			b, _ := os.ReadFile(filepath.Join(out, fmt.Sprintf("rank%d.passes", r)))
			if strings.TrimSpace(string(b)) != "8" { // 4 steps × 2 evaluations × 2 micro-batches / 2 ranks
				t.Errorf("rank %d ran %q passes, want 8", r, b)
			}
		}
		t.Logf("2 ranks vs one process (%s): final loss %.6f vs %.6f", method, ranks[0].FinalTrain, one.FinalTrain)
		return
	}
	// The adapters rank 0 saved equal the one process's.
	m, err := model.Open(shared.Path(t, "assets", "models", "stories260K.gguf"), model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	a, err := lora.Load(m, oneDir)
	if err != nil {
		t.Fatal(err)
	}
	b, err := lora.Load(m, dir)
	if err != nil {
		t.Fatalf("rank 0's adapters: %v", err)
	}
	worst := 0.0
	for i, la := range a.Layers {
		for j, v := range la.B {
			d := math.Abs(float64(b.Layers[i].B[j] - v))
			worst = max(worst, d)
		}
		for j, v := range la.A {
			worst = max(worst, math.Abs(float64(b.Layers[i].A[j]-v)))
		}
	}
	if worst > 1e-5 {
		t.Errorf("saved adapters differ by up to %g", worst)
	}
	if _, err := os.Stat(filepath.Join(dir, stateFile)); err != nil {
		t.Errorf("rank 0 saved no state: %v", err)
	}
	// Each rank ran its share of the micro-batches (4 steps × 2 / 2, or
	// the uneven shares of 1 and 3), and the sums of every step's 5 blocks
	// were started by its last backward pass (none when the rank had no
	// micro-batch: it starts them all when the others wait).
	pr := parallelRun(t, oneDir)
	for r := range 2 {
		share := (pr.GradAccum - r + 1) / 2
		b, _ := os.ReadFile(filepath.Join(out, fmt.Sprintf("rank%d.passes", r)))
		if strings.TrimSpace(string(b)) != fmt.Sprint(4*share) {
			t.Errorf("rank %d ran %q training passes, want %d", r, b, 4*share)
		}
		want := "5/5 5/5 5/5 5/5"
		if overlapOf(pr, r) == "off" || share == 0 {
			want = "0/5 0/5 0/5 0/5" // the same sums, started after the step
		}
		if b, _ := os.ReadFile(filepath.Join(out, fmt.Sprintf("rank%d.sums", r))); string(b) != want {
			t.Errorf("rank %d: block sums started in the pass / all, per step: %q, want %q", r, b, want)
		}
	}
	t.Logf("2 ranks vs one process: final loss %.6f vs %.6f, adapters within %.2g", ranks[0].FinalTrain, one.FinalTrain, worst)
}

// A data-parallel group's ranks on one machine take its GPUs one each
// (local rank r, cuda:r); more ranks there than GPUs is refused, naming
// how many fit.
func TestRankDevice(t *testing.T) {
	for _, c := range []struct{ local, rank, gpus, want int }{{1, 0, 4, 0}, {2, 1, 2, 1}, {4, 3, 8, 3}, {2, 0, 2, 0}} {
		g := rankedGroup{groupOf{local: c.local, size: 2 * c.local}, c.rank}
		ord, line, err := rankDevice(g, c.gpus)
		if err != nil || ord != c.want || (c.local > 1) != strings.Contains(line, fmt.Sprintf("takes cuda:%d", c.want)) {
			t.Errorf("%+v: cuda:%d, %q, %v", c, ord, line, err)
		}
	}
	if _, _, err := rankDevice(rankedGroup{groupOf{local: 3, size: 3}, 2}, 2); err == nil || !strings.Contains(err.Error(), "at most 2 ranks a machine") {
		t.Errorf("3 ranks on 2 GPUs: %v", err)
	}
}

// rankedGroup is a groupOf whose rank on its machine is given.
type rankedGroup struct {
	groupOf
	local int
}

func (g rankedGroup) LocalRank() int { return g.local }
