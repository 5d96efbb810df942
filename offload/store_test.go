package offload

import (
	"bytes"
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
	if s.MappedBytes() != int64(len(want)) {
		t.Fatalf("MappedBytes %d", s.MappedBytes())
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
