package offload

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

func TestMapViewsFileBytes(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f.bin")
	want := []byte("GGUF and some weights\x00\x01\x02")
	if err := os.WriteFile(p, want, 0o644); err != nil {
		t.Fatal(err)
	}
	var s Store
	m, err := s.Map(p)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(m.Bytes(), want) {
		t.Fatalf("mapped bytes %q, want %q", m.Bytes(), want)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestMapErrors(t *testing.T) {
	if _, err := Map(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Fatal("missing file mapped")
	}
	if _, err := Map(t.TempDir()); err == nil {
		t.Fatal("directory mapped")
	}
	p := filepath.Join(t.TempDir(), "empty")
	os.WriteFile(p, nil, 0o644)
	m, err := Map(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Bytes()) != 0 {
		t.Fatal("empty file has bytes")
	}
	m.Close()
}

func rssFile(t *testing.T) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skip("no /proc")
	}
	var total int64
	found := false
	for _, l := range bytes.Split(b, []byte("\n")) {
		var kb int64
		for _, f := range []string{"RssFile: %d kB", "RssShmem: %d kB"} { // tmpfs pages count as shmem
			if n, _ := fmt.Sscanf(string(l), f, &kb); n == 1 {
				total += kb << 10
				found = true
			}
		}
	}
	if !found {
		t.Skip("no RssFile")
	}
	return total
}

// TestReleaseDropsResidency: touching a mapped file makes its pages
// resident; Release drops them from the resident set, and the data is still
// readable afterwards.
func TestReleaseDropsResidency(t *testing.T) {
	p := filepath.Join(t.TempDir(), "big.bin")
	data := make([]byte, 64<<20)
	for i := range data {
		data[i] = byte(i * 7)
	}
	os.WriteFile(p, data, 0o644)
	m, err := Map(p)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	before := rssFile(t)
	sum := touch(m.Bytes())
	touched := rssFile(t)
	Release(m.Bytes())
	after := rssFile(t)
	t.Logf("RssFile: %d MiB before, %d MiB touched, %d MiB released", before>>20, touched>>20, after>>20)
	if touched-before < 48<<20 || after > before+8<<20 {
		t.Fatalf("residency not dropped: before %d touched %d after %d", before, touched, after)
	}
	if m.Bytes()[4096*3+5] != data[4096*3+5] {
		t.Fatal("data changed after Release")
	}
	if sum == 0xff && touched < 0 {
		t.Log(sum) // keeps the touching loop alive
	}
}

//go:noinline
func touch(b []byte) byte {
	var s byte
	for i := 0; i < len(b); i += 4096 {
		s += b[i]
	}
	return s
}

// TestScratchEvictKeepsValues: values written to a scratch survive Evict,
// which takes them out of the resident set.
func TestScratchEvictKeepsValues(t *testing.T) {
	s, err := NewScratch(t.TempDir(), 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	v, err := s.Alloc(12 << 20) // 48 MiB
	if err != nil {
		t.Fatal(err)
	}
	for i := range v {
		v[i] = float32(i % 1000)
	}
	before := rssFile(t)
	s.Evict(v)
	after := rssFile(t)
	t.Logf("resident file/shared pages: %d MiB before Evict, %d MiB after", before>>20, after>>20)
	if before-after < 40<<20 {
		t.Fatalf("Evict released only %d MiB", (before-after)>>20)
	}
	for _, i := range []int{0, 4095, 1 << 20, len(v) - 1} {
		if v[i] != float32(i%1000) {
			t.Fatalf("v[%d] = %v after Evict", i, v[i])
		}
	}
	if _, err := s.Alloc(5 << 20); err == nil {
		t.Fatal("allocation past the end accepted")
	}
}

// TestScratchEvictIgnoresOtherMemory: Evict on a slice outside the scratch
// (ordinary heap memory) must leave it alone.
func TestScratchEvictIgnoresOtherMemory(t *testing.T) {
	s, err := NewScratch(t.TempDir(), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	heap := make([]float32, 8192)
	for i := range heap {
		heap[i] = 7
	}
	s.Evict(heap[10:12])
	for i, v := range heap {
		if v != 7 {
			t.Fatalf("heap[%d] = %v after Evict of another slice", i, v)
		}
	}
}
