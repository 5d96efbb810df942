package train

import "github.com/qtune/qtune/internal/procmem"

// PeakRSS returns the process's peak resident set size in bytes (VmHWM
// from /proc/self/status), or 0 where that is not available.
func PeakRSS() int64 {
	n, _ := procmem.Peak()
	return n
}

// residentBytes is the process's resident set (VmRSS).
func residentBytes() (int64, bool) { return procmem.Resident() }
