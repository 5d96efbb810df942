package tokenizer

import (
	"os"
	"testing"
	"time"

	"github.com/qtune/qtune/internal/shared"
)

func shakespeare(t testing.TB) string {
	t.Helper()
	b, err := os.ReadFile(shared.Path(t, "assets", "data", "tinyshakespeare", "input.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > 1<<20 {
		b = b[:1<<20]
	}
	return string(b)
}

// TestEncodeLong encodes 1 MiB of text as one string with each algorithm: the
// heap-based merge loop keeps this O(n log n) even for SPM, which does not
// pre-split the text.
func TestEncodeLong(t *testing.T) {
	text := shakespeare(t)
	toks := map[string]*Tokenizer{
		"stories": loadGGUF(t, "assets", "models", "stories260K.gguf"),
		"llama2":  loadFile(t, FromSentencePiece, "assets", "tokenizers", "llama2", "tokenizer.model"),
		"gpt2":    loadGGUF(t, "assets", "tokenizers", "gpt2", "vocab-gpt2.gguf"),
	}
	for name, tk := range toks {
		start := time.Now()
		ids := tk.Encode(text, true)
		d := time.Since(start)
		t.Logf("%s: %d bytes -> %d tokens in %v (%.1f MB/s)", name, len(text), len(ids), d, float64(len(text))/d.Seconds()/1e6)
		if d > 5*time.Second {
			t.Errorf("%s: encoding 1 MiB took %v", name, d)
		}
		for _, id := range ids {
			if id < 0 || id >= tk.VocabSize() {
				t.Fatalf("%s: id %d out of range", name, id)
			}
		}
		if got := tk.Decode(ids); got != text {
			t.Errorf("%s: round trip of 1 MiB differs", name)
		}
	}
}

func BenchmarkEncode(b *testing.B) {
	text := shakespeare(b)[:256<<10]
	for _, c := range []struct {
		name string
		tk   func() *Tokenizer
	}{
		{"stories-spm", func() *Tokenizer { return loadGGUF(b, "assets", "models", "stories260K.gguf") }},
		{"llama2-spm", func() *Tokenizer {
			return loadFile(b, FromSentencePiece, "assets", "tokenizers", "llama2", "tokenizer.model")
		}},
		{"gpt2-bpe", func() *Tokenizer { return loadGGUF(b, "assets", "tokenizers", "gpt2", "vocab-gpt2.gguf") }},
	} {
		tk := c.tk()
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(text)))
			n := 0
			for b.Loop() {
				n = len(tk.Encode(text, false))
			}
			b.ReportMetric(float64(len(text))*float64(b.N)/b.Elapsed().Seconds()/1e6, "MB/s")
			b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "tokens/s")
		})
	}
}

// BenchmarkEncodeReference compares the heap-based merge loop with the
// O(n²) reference loop (llama2.c's) on 16 KiB.
func BenchmarkEncodeReference(b *testing.B) {
	text := shakespeare(b)[:16<<10]
	tk := loadGGUF(b, "assets", "models", "stories260K.gguf")
	for _, c := range []struct {
		name string
		enc  func() []int
	}{
		{"heap", func() []int { return tk.Encode(text, false) }},
		{"naive", func() []int { return refSPM(tk, text) }},
	} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				c.enc()
			}
			b.ReportMetric(float64(len(text))*float64(b.N)/b.Elapsed().Seconds()/1e6, "MB/s")
		})
	}
}

func TestConcurrentEncode(t *testing.T) {
	toks := fuzzTokenizers(t)
	texts, want := vectors(t, "gpt2")
	done := make(chan bool)
	for g := 0; g < 4; g++ {
		go func() {
			ok := true
			for i, s := range texts {
				ok = ok && equalIDs(toks["gpt2"].Encode(s, false), want[i])
				toks["llama2"].Encode(s, true)
			}
			done <- ok
		}()
	}
	for g := 0; g < 4; g++ {
		if !<-done {
			t.Error("concurrent encodes differ")
		}
	}
}
