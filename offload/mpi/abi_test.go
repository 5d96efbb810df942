package mpi

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qtune/qtune/internal/shared"
)

// fakeABI is an MPI library that follows the MPI 5.0 standard ABI as far as
// qtune calls it (MPI_Abi_get_version exported; handles the ABI's
// constants): a group of two ranks in one process, whose other rank holds
// the same values, so a sum doubles them. Every call checks the handles and
// thread level it is given against the ABI's values (mpi_abi.h of MPI 5.0)
// and fails with MPI_ERR_TYPE (3) otherwise, so a wrong constant in qtune
// is an error here rather than a quiet misreading.
const fakeABI = `
#include <string.h>
#include <stdint.h>
#define WORLD ((void*)0x101)
#define FLOAT ((void*)0x210)
#define DOUBLE ((void*)0x214)
#define BYTE ((void*)0x247)
#define SUM ((void*)0x21)
#define IN_PLACE ((void*)1)
int MPI_Abi_get_version(int *v, int *s) { *v = 1; *s = 0; return 0; }
int MPI_Init_thread(int *argc, char ***argv, int required, int *provided) {
	if (required != 1024) return 3;
	*provided = 1024; return 0;
}
int MPI_Finalize(void) { return 0; }
int MPI_Comm_rank(void *c, int *r) { if (c != WORLD) return 3; *r = 0; return 0; }
int MPI_Comm_size(void *c, int *n) { if (c != WORLD) return 3; *n = 2; return 0; }
int MPI_Allreduce(void *send, void *recv, int count, void *type, void *op, void *c) {
	if (send != IN_PLACE || op != SUM || c != WORLD) return 3;
	if (type == FLOAT) { float *f = recv; for (int i = 0; i < count; i++) f[i] *= 2; return 0; }
	if (type == DOUBLE) { double *d = recv; for (int i = 0; i < count; i++) d[i] *= 2; return 0; }
	return 3;
}
int MPI_Bcast(void *buf, int count, void *type, int root, void *c) {
	return (type == BYTE && c == WORLD && root >= 0 && root < 2) ? 0 : 3;
}
int MPI_Allgather(void *s, int sc, void *st, void *r, int rc, void *rt, void *c) {
	if (st != BYTE || rt != BYTE || c != WORLD || sc != rc) return 3;
	memcpy(r, s, sc); memcpy((char*)r + sc, s, sc); return 0;
}
int MPI_Barrier(void *c) { return c == WORLD ? 0 : 3; }
int MPI_Get_library_version(char *buf, int *n) { strcpy(buf, "fake MPI ABI 1.0"); *n = 16; return 0; }
`

// TestStandardABI: a library exporting MPI_Abi_get_version is driven with
// the standard ABI's handles and thread level. No MPI with the standard ABI
// is installed here (Debian's Open MPI 4.1 and MPICH 4.0 predate it), so
// the library is a fake compiled by the test: it checks qtune's constants
// against the ABI's, not a real implementation's behaviour.
func TestStandardABI(t *testing.T) {
	cc := shared.Tool(t, "cc", "apt-get install gcc") // builds the fake library
	dir := t.TempDir()
	src, lib := filepath.Join(dir, "fake.c"), filepath.Join(dir, "libmpi_abi.so")
	if err := os.WriteFile(src, []byte(fakeABI), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(cc, "-shared", "-fPIC", "-o", lib, src).CombinedOutput(); err != nil {
		t.Fatalf("cc: %v\n%s", err, out)
	}
	t.Setenv("QTUNE_MPI_LIB", lib)
	c, err := Open(time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if c.Size() != 2 || c.Rank() != 0 || !strings.Contains(c.Name(), "fake MPI ABI 1.0") {
		t.Fatalf("opened %s: rank %d of %d", c.Name(), c.Rank(), c.Size())
	}
	f, d := []float32{1, 2.5}, []float64{3}
	if err := c.AllReduceSum(f); err != nil || f[0] != 2 || f[1] != 5 {
		t.Fatalf("float32 sum: %v %v", f, err)
	}
	if err := c.StartAllReduceSum(f)(); err != nil || f[0] != 4 {
		t.Fatalf("started float32 sum: %v %v", f, err)
	}
	if err := c.AllReduceSum64(d); err != nil || d[0] != 6 {
		t.Fatalf("float64 sum: %v %v", d, err)
	}
	if err := c.Broadcast([]byte{1}, 1); err != nil {
		t.Fatal(err)
	}
	if err := c.Barrier(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}
