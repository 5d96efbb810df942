package train

import (
	"bufio"
	"os"
	"strconv"
	"strings"
)

// PeakRSS returns the process's peak resident set size in bytes (VmHWM
// from /proc/self/status), or 0 where that is not available.
func PeakRSS() int64 {
	n, _ := statusBytes("VmHWM:")
	return n
}

// residentBytes is the process's resident set (VmRSS).
func residentBytes() (int64, bool) { return statusBytes("VmRSS:") }

// statusBytes reads a size field ("VmRSS:") of /proc/self/status.
func statusBytes(field string) (int64, bool) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fs := strings.Fields(sc.Text()); len(fs) >= 2 && fs[0] == field {
			kb, err := strconv.ParseInt(fs[1], 10, 64)
			return kb << 10, err == nil
		}
	}
	return 0, false
}
