// Package procmem reads this process's memory figures from the kernel
// (/proc/self/status): its resident set now and at its peak.
package procmem

import (
	"bufio"
	"os"
	"strconv"
	"strings"
)

// Resident is the process's resident set (VmRSS) in bytes; false where
// the kernel does not say.
func Resident() (int64, bool) { return field("VmRSS:") }

// Peak is the process's peak resident set (VmHWM) in bytes; false where
// the kernel does not say.
func Peak() (int64, bool) { return field("VmHWM:") }

// field reads a size field ("VmRSS:") of /proc/self/status.
func field(name string) (int64, bool) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fs := strings.Fields(sc.Text()); len(fs) >= 2 && fs[0] == name {
			kb, err := strconv.ParseInt(fs[1], 10, 64)
			return kb << 10, err == nil
		}
	}
	return 0, false
}
