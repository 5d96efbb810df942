package procmem

import (
	"runtime"
	"testing"
)

// The resident set grows by what is touched, and the peak is never below it.
func TestResidentAndPeak(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("/proc/self/status is Linux's")
	}
	before, ok := Resident()
	if !ok || before <= 0 {
		t.Fatalf("resident %d, %v", before, ok)
	}
	b := make([]byte, 64<<20)
	for i := range b {
		b[i] = 1
	}
	after, _ := Resident()
	peak, ok := Peak()
	if after-before < 48<<20 || !ok || peak < after {
		t.Errorf("touching 64 MiB: resident %d -> %d, peak %d", before, after, peak)
	}
	runtime.KeepAlive(b)
}
