package mpi

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/qtune/qtune/internal/shared"
	"github.com/qtune/qtune/offload/comm"
)

func TestLaunchedFromEnv(t *testing.T) {
	for _, v := range []string{"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS"} {
		t.Setenv(v, "")
	}
	if Launched() {
		t.Fatal("launched without a launcher's variables")
	}
	t.Setenv("PMI_SIZE", "1")
	if Launched() {
		t.Error("one rank is not a group")
	}
	t.Setenv("OMPI_COMM_WORLD_SIZE", "4")
	if !Launched() {
		t.Error("OMPI_COMM_WORLD_SIZE=4 not seen")
	}
}

func TestNoLibraryIsAnError(t *testing.T) {
	t.Setenv("QTUNE_MPI_LIB", "/nonexistent/libmpi.so.40")
	if _, err := Open(time.Second); !errors.Is(err, ErrNoMPI) {
		t.Fatalf("Open without a library: %v, want ErrNoMPI", err)
	}
	t.Setenv("QTUNE_MPI_LIB", "libc.so.6")
	if _, err := Open(time.Second); err == nil || !strings.Contains(err.Error(), "not an MPI library") {
		t.Fatalf("Open of libc: %v", err)
	}
}

// launch runs this test binary's TestRankHelper as n ranks in mode.
func launch(t *testing.T, n int, mode string, limit time.Duration) (string, error, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, shared.Tool(t, "mpirun", "apt-get install openmpi-bin"), "--oversubscribe", "--allow-run-as-root", "-np", fmt.Sprint(n),
		os.Args[0], "-test.run=^TestRankHelper$", "-test.v")
	// In a container: no ssh (one node needs none, but Open MPI looks for
	// an agent), and no cross-memory attach for shared-memory copies.
	cmd.Env = append(os.Environ(), "QTUNE_MPI_HELPER="+mode, "OMPI_MCA_plm_rsh_agent=sh", "OMPI_MCA_btl_vader_single_copy_mechanism=none")
	t0 := time.Now()
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("mpirun -np %d (%s) did not finish in %s:\n%s", n, mode, limit, out)
	}
	return string(out), err, time.Since(t0)
}

// Two ranks: each one's sums, broadcasts, gathers and barrier give what
// the arithmetic says.
func TestTwoRanks(t *testing.T) {
	out, err, _ := launch(t, 2, "collectives", 2*time.Minute)
	if err != nil {
		t.Fatalf("mpirun: %v\n%s", err, out)
	}
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "collectives ok") {
			t.Log(l)
		}
	}
	for r := range 2 {
		if !strings.Contains(out, fmt.Sprintf("rank %d of 2: collectives ok", r)) {
			t.Errorf("rank %d did not report:\n%s", r, out)
		}
	}
}

// MPICH (Debian's mpich beside Open MPI): its launcher, its library, the
// same collectives.
func TestTwoRanksMPICH(t *testing.T) {
	exe := shared.Tool(t, "mpiexec.mpich", "apt-get install mpich")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, "-n", "2", os.Args[0], "-test.run=^TestRankHelper$", "-test.v")
	cmd.Env = append(os.Environ(), "QTUNE_MPI_HELPER=collectives")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("mpiexec.mpich: %v\n%s", err, out)
	}
	for r := range 2 {
		if !strings.Contains(string(out), fmt.Sprintf("rank %d of 2: collectives ok (MPICH", r)) {
			t.Errorf("rank %d did not report over MPICH:\n%s", r, out)
		}
	}
}

// A rank that dies makes the others stop with an error, not wait forever.
func TestKilledRankStopsOthers(t *testing.T) {
	out, err, took := launch(t, 2, "die", 2*time.Minute)
	if err == nil {
		t.Fatalf("a rank died and the job succeeded:\n%s", out)
	}
	t.Logf("stopped after %s:\n%s", took.Round(time.Millisecond), out)
	if !strings.Contains(out, "did not complete") && !strings.Contains(out, "exited") && !strings.Contains(out, "non-zero") {
		t.Errorf("no clear error when a rank died:\n%s", out)
	}
}

// A rank that stops answering (alive, but not in the collective) makes
// the others fail at their timeout with an error that says so.
func TestStalledRankTimesOut(t *testing.T) {
	out, err, took := launch(t, 2, "stall", 2*time.Minute)
	if err == nil {
		t.Fatalf("a rank stalled and the job succeeded:\n%s", out)
	}
	if !strings.Contains(out, "rank 0 of 2: MPI_Allreduce did not complete in 3s") {
		t.Errorf("rank 0 did not time out with a clear error (after %s):\n%s", took, out)
	}
	if took > time.Minute {
		t.Errorf("the job took %s to stop", took)
	}
}

// TestRankHelper is one rank of the tests above (run under mpirun).
func TestRankHelper(t *testing.T) {
	mode := os.Getenv("QTUNE_MPI_HELPER")
	if mode == "" {
		t.Skip("a rank of TestTwoRanks, run under mpirun")
	}
	timeout := 10 * time.Second
	if mode == "stall" {
		timeout = 3 * time.Second
	}
	c, err := Open(timeout)
	if err != nil {
		t.Fatal(err)
	}
	r, n := c.Rank(), c.Size()
	if mode == "stall" {
		if r == 1 {
			time.Sleep(90 * time.Second) // alive, never joining
			os.Exit(0)
		}
		err := c.AllReduceSum([]float32{1})
		fmt.Printf("%v\n", err)
		os.Exit(1)
	}
	if mode == "die" {
		if r == 1 {
			os.Exit(3) // gone without MPI_Finalize
		}
		buf := []float32{1}
		err := c.AllReduceSum(buf)
		fmt.Printf("rank %d of %d: %v\n", r, n, err)
		if !errors.Is(err, comm.ErrComm) {
			t.Fatalf("all-reduce with a dead rank: %v", err)
		}
		os.Exit(1) // a broken group is not finalized
	}
	// sums: rank r holds r+1 at every position, and its rank at its own
	f := make([]float32, 1000)
	d := []float64{float64(r) + 0.5, 1e15}
	for i := range f {
		f[i] = float32(r + 1)
	}
	f[r] += 100
	if err := c.AllReduceSum(f); err != nil {
		t.Fatal(err)
	}
	if err := c.AllReduceSum64(d); err != nil {
		t.Fatal(err)
	}
	want := float32(n * (n + 1) / 2)
	for i, v := range f {
		w := want
		if i < n {
			w += 100
		}
		if v != w {
			t.Fatalf("rank %d: sum[%d] = %v, want %v", r, i, v, w)
		}
	}
	if d[0] != float64(n*n)/2 || d[1] != float64(n)*1e15 {
		t.Fatalf("rank %d: float64 sums %v", r, d)
	}
	// broadcast from the last rank
	b := make([]byte, 8)
	if r == n-1 {
		binary.LittleEndian.PutUint64(b, math.Float64bits(math.Pi))
	}
	if err := c.Broadcast(b, n-1); err != nil {
		t.Fatal(err)
	}
	if math.Float64frombits(binary.LittleEndian.Uint64(b)) != math.Pi {
		t.Fatalf("rank %d: broadcast gave %v", r, b)
	}
	// gather: every rank's rank
	g := make([]byte, n*4)
	s := make([]byte, 4)
	binary.LittleEndian.PutUint32(s, uint32(r*7))
	if err := c.AllGather(s, g); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if v := binary.LittleEndian.Uint32(g[4*i:]); v != uint32(i*7) {
			t.Fatalf("rank %d: gathered %d from rank %d", r, v, i)
		}
	}
	if err := c.Barrier(); err != nil {
		t.Fatal(err)
	}
	// A sum of more than a bucket goes in pieces (1.39 M values: the
	// gradients of a 110M model's rank-8 LoRA): every piece's boundary
	// summed, nothing twice.
	big := make([]float32, 5*comm.BucketFloats+12345)
	for i := range big {
		big[i] = float32(r+1) * float32(i%1000)
	}
	t0 := time.Now()
	if err := c.AllReduceSum(big); err != nil {
		t.Fatal(err)
	}
	took := time.Since(t0)
	for i, v := range big {
		if w := float32(n*(n+1)/2) * float32(i%1000); v != w {
			t.Fatalf("rank %d: bucketed sum[%d] = %v, want %v", r, i, v, w)
		}
	}
	// Started sums (a backward pass's blocks): two queued, the second over
	// a bucket, a blocking sum after them; each waited for later, in
	// order, with the values of their own sums.
	s1, s2, s3 := make([]float32, 777), make([]float32, comm.BucketFloats+3), []float64{float64(r)}
	for i := range s1 {
		s1[i] = float32(r + i)
	}
	for i := range s2 {
		s2[i] = float32((r + 1) * (i % 97))
	}
	w1 := c.StartAllReduceSum(s1)
	w2 := c.StartAllReduceSum(s2)
	if err := c.AllReduceSum64(s3); err != nil {
		t.Fatal(err)
	}
	if err := w1(); err != nil {
		t.Fatal(err)
	}
	if err := w2(); err != nil {
		t.Fatal(err)
	}
	for i, v := range s1 {
		if w := float32(n*(n-1)/2 + n*i); v != w {
			t.Fatalf("rank %d: started sum 1 [%d] = %v, want %v", r, i, v, w)
		}
	}
	for i, v := range s2 {
		if w := float32(n * (n + 1) / 2 * (i % 97)); v != w {
			t.Fatalf("rank %d: started sum 2 [%d] = %v, want %v", r, i, v, w)
		}
	}
	if s3[0] != float64(n*(n-1)/2) {
		t.Fatalf("rank %d: the blocking sum after two started gave %v", r, s3[0])
	}
	if c.Footprint() <= 0 {
		t.Fatalf("rank %d: no footprint measured", r)
	}
	fmt.Printf("rank %d of %d: collectives ok (%s); %.1f MiB summed in %v; MPI's footprint %.1f MiB\n", r, n, c.Name(),
		float64(4*len(big))/(1<<20), took.Round(time.Microsecond), float64(c.Footprint())/(1<<20))
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}
