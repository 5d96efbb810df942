package memtest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/qtune/qtune/budget"
	"github.com/qtune/qtune/internal/shared"
	"github.com/qtune/qtune/quant"
)

// TestBudgetPerRankUnderMPI: under mpirun -np 2, --max-mem holds in every
// rank. MPI's libraries, heap and shared memory (about 10 MiB a rank with
// Open MPI) are measured when it starts and planned as their own item: the
// smallest budget a too-small one names is accepted, and each rank's peak
// (VmHWM, QTUNE_PEAK_FILE.RANK) stays under it and under 1.5 times it, for
// LoRA and MeZO on a 15M Q4_0 model. Before the item, ranks of a
// stories260K run under 20 MiB peaked at 28.6 MB.
func TestBudgetPerRankUnderMPI(t *testing.T) {
	mpirun := shared.Tool(t, "mpirun", "apt-get install openmpi-bin")
	m := model(t, "15M", quant.Q4_0)
	data := shared.Path(t, "assets", "data", "tinyshakespeare")
	for _, method := range []string{"lora", "mezo"} {
		args := []string{"train", "--model", m, "--data", data, "--method", method, "--iters", "3", "--batch-size", "4",
			"--max-seq-length", "64", "--steps-per-eval", "100", "--val-batches", "1", "--adapter-path", t.TempDir()}
		_, errs, err := mpiRun(t, mpirun, append(args, "--max-mem", "8MiB"))
		mm := regexp.MustCompile(`--max-mem (\d+)MiB`).FindStringSubmatch(errs)
		if err == nil || mm == nil {
			t.Fatalf("%s: 8 MiB under mpirun was not refused with a budget named: %v\n%s", method, err, errs)
		}
		smallest, _ := strconv.Atoi(mm[1])
		// qtune plan under mpirun plans as train does: one plan (rank
		// 0's), with MPI's item, accepting the budget train named.
		_, out, err := mpiRun(t, mpirun, append([]string{"plan"}, append(args, "--max-mem", fmt.Sprintf("%dMiB", smallest))...))
		if err != nil || strings.Count(out, "communication: the MPI library") != 1 || !strings.Contains(out, "data-parallel: ") {
			t.Errorf("%s: qtune plan under mpirun at %d MiB: %v\n%s", method, smallest, err, out)
		}
		for _, mib := range []int{smallest, smallest * 3 / 2} {
			peaks, errs, err := mpiRun(t, mpirun, append(args, "--max-mem", fmt.Sprintf("%dMiB", mib)))
			if err != nil {
				t.Fatalf("%s at %d MiB (named by the refusal): %v\n%s", method, mib, err, errs)
			}
			for r, p := range peaks {
				t.Logf("%s --max-mem %d MiB: rank %d peak %s (%.1f%%)", method, mib, r, budget.FormatSize(p), 100*float64(p)/float64(int64(mib)<<20))
				if p > int64(mib)<<20 {
					t.Errorf("%s: rank %d's peak %s is over --max-mem %d MiB", method, r, budget.FormatSize(p), mib)
				}
			}
		}
	}
}

// mpiRun runs qtune under mpirun -np 2 and returns each rank's peak RSS
// (for a failed run, those that were written).
func mpiRun(t *testing.T, mpirun string, args []string) ([]int64, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	pf := filepath.Join(t.TempDir(), "peak")
	cmd := exec.CommandContext(ctx, mpirun, append([]string{"--oversubscribe", "--allow-run-as-root", "-np", "2", bin, "--quiet"}, args...)...)
	cmd.Env = append(os.Environ(), "QTUNE_PEAK_FILE="+pf, "QTUNE_MPI_TIMEOUT=2m")
	var e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &e, &e
	err := cmd.Run()
	var peaks []int64
	for r := range 2 {
		b, rerr := os.ReadFile(fmt.Sprintf("%s.%d", pf, r))
		p, perr := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		if rerr != nil || perr != nil {
			if err != nil { // a refused run: mpirun may stop a rank before it writes
				continue
			}
			t.Fatalf("no peak RSS from rank %d: %v %v\n%s", r, rerr, perr, e.String())
		}
		peaks = append(peaks, p)
	}
	return peaks, e.String(), err
}
