package model

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/qtune/qtune/internal/shared"
	"github.com/qtune/qtune/internal/synth"
	"github.com/qtune/qtune/quant"
)

func benchGenerate(b *testing.B, m *Model, n int) {
	prompt := []int{1, 403, 407, 261, 378}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := m.Generate(context.Background(), prompt, GenerateOptions{MaxTokens: n}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "tokens/s")
}

// BenchmarkGenerate reports greedy decoding speed (prompt of 5 tokens, then
// one token at a time through the KV cache) on stories260K and on synthetic
// 15M and 110M models with quantized matrices.
func BenchmarkGenerate(b *testing.B) {
	b.Run("stories260K/F32", func(b *testing.B) {
		m, err := Open(shared.Path(b, "assets", "models", "stories260K.gguf"), Options{})
		if err != nil {
			b.Fatal(err)
		}
		defer m.Close()
		benchGenerate(b, m, 200)
	})
	for _, preset := range []string{"15M", "110M"} {
		for _, typ := range []quant.Type{quant.F32, quant.Q8_0, quant.Q4_0, quant.Q4_K, quant.NF4} {
			b.Run(fmt.Sprintf("synthetic%s/%s", preset, typ), func(b *testing.B) {
				p := filepath.Join(b.TempDir(), "m.gguf")
				if err := synth.Write(p, synth.Presets[preset], typ, 1); err != nil {
					b.Fatal(err)
				}
				m, err := Open(p, Options{})
				if err != nil {
					b.Fatal(err)
				}
				defer m.Close()
				benchGenerate(b, m, 32)
			})
		}
	}
}
