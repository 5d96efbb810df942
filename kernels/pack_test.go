package kernels

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// TestTransposePanel: the transposing pack (its assembly groups and Go
// remainder) writes exactly pan[k*nr+j] = src[j*ld+k], zeros past nn, and
// nothing past the panel, at every level and for every remainder shape.
func TestTransposePanel(t *testing.T) {
	r := rand.New(rand.NewPCG(21, 22))
	for _, nr := range []int{4, 8, 24, 48} {
		for _, nn := range []int{1, 3, 4, 5, 7, 8, 9, 15, 16, 17, 23, 24, 31, 32, 33, 47, 48} {
			if nn > nr {
				continue
			}
			for _, kc := range []int{1, 7, 8, 9, 15, 16, 17, 31, 32, 100, 256} {
				for _, pad := range []int{0, 3} {
					ld := kc + pad
					src := randSlice(r, (nn-1)*ld+kc) // the last row ends at kc
					for _, l := range levels() {
						withLevel(t, l, func() {
							pan := randSlice(r, nr*kc+5)
							guard := append([]float32(nil), pan[nr*kc:]...)
							transposePanel(pan, src, ld, kc, nn, nr)
							for k := 0; k < kc; k++ {
								for j := 0; j < nr; j++ {
									want := float32(0)
									if j < nn {
										want = src[j*ld+k]
									}
									if got := pan[k*nr+j]; got != want {
										t.Fatalf("%s nr=%d nn=%d kc=%d ld=%d: pan[%d*nr+%d] = %g, want %g", l, nr, nn, kc, ld, k, j, got, want)
									}
								}
							}
							if fmt.Sprint(pan[nr*kc:]) != fmt.Sprint(guard) {
								t.Fatalf("%s nr=%d nn=%d kc=%d: wrote past the panel", l, nr, nn, kc)
							}
						})
					}
				}
			}
		}
	}
}

// TestCopyPanel: the copying pack writes exactly pan[k*nr+j] = src[k*ld+j],
// zeros past nn, and nothing past the panel, at every level.
func TestCopyPanel(t *testing.T) {
	r := rand.New(rand.NewPCG(23, 24))
	for _, nr := range []int{4, 8, 24, 48} {
		for _, nn := range []int{1, 3, 4, 5, 8, 12, 16, 20, 23, 24, 44, 47, 48} {
			if nn > nr {
				continue
			}
			for _, kc := range []int{1, 2, 7, 256} {
				ld := nn + 5
				src := randSlice(r, (kc-1)*ld+nn) // the last row ends at nn
				for _, l := range levels() {
					withLevel(t, l, func() {
						pan := randSlice(r, nr*kc+5)
						guard := append([]float32(nil), pan[nr*kc:]...)
						copyPanel(pan, src, ld, kc, nn, nr)
						for k := 0; k < kc; k++ {
							for j := 0; j < nr; j++ {
								want := float32(0)
								if j < nn {
									want = src[k*ld+j]
								}
								if got := pan[k*nr+j]; got != want {
									t.Fatalf("%s nr=%d nn=%d kc=%d: pan[%d*nr+%d] = %g, want %g", l, nr, nn, kc, k, j, got, want)
								}
							}
						}
						if fmt.Sprint(pan[nr*kc:]) != fmt.Sprint(guard) {
							t.Fatalf("%s nr=%d nn=%d kc=%d: wrote past the panel", l, nr, nn, kc)
						}
					})
				}
			}
		}
	}
}
