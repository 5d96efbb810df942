//go:build !amd64 || noasm

package kernels

// q8Act is the int8 activation row of the amd64 integer matrix-vector
// kernels (matvec_q8.go); other builds have none.
type q8Act struct{}

// haveQ8 reports that this build has the integer matrix-vector kernels.
const haveQ8 = false

func newQ8Acts(*Matrix, []float32, int) []*q8Act { return nil }

func putQ8Acts([]*q8Act) {}

func (*q8Act) rowsDot(*Matrix, []float32, int, int) {
	panic("kernels: no integer matvec in this build")
}
