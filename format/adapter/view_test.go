package adapter

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"testing"

	"github.com/qtune/qtune/quant"
)

// TestWritersStreamViews: the writers read a factor given as a function
// (AAt, BAt) exactly as the same values given as slices (the files are
// byte-identical), and writing a PEFT or MLX-LM folder (q/k rows permuted,
// MLX's factors transposed) allocates far less than the adapter holds: no
// factor is copied whole (issue 13). Each writer is measured on its own.
func TestWritersStreamViews(t *testing.T) {
	const heads, D, R, In = 32, 64, 32, 2048
	rows := heads * D // 2048
	rng := rand.New(rand.NewPCG(3, 4))
	mk := func(target string) LoRA {
		l := LoRA{Target: target, In: In, Out: rows, Rank: R, A: make([]float32, R*In), B: make([]float32, rows*R)}
		for i := range l.A {
			l.A[i] = rng.Float32() - 0.5
		}
		for i := range l.B {
			l.B[i] = rng.Float32() - 0.5
		}
		return l
	}
	const blocks = 4
	held := &Adapter{Rank: R, Alpha: 16}
	for b := range blocks {
		for _, k := range []string{"attn_q", "attn_k", "attn_v"} {
			held.Layers = append(held.Layers, mk(fmt.Sprintf("blk.%d.%s.weight", b, k)))
		}
	}
	views := &Adapter{Rank: R, Alpha: 16}
	for _, l := range held.Layers {
		A, B := l.A, l.B
		views.Layers = append(views.Layers, LoRA{Target: l.Target, In: l.In, Out: l.Out, Rank: l.Rank,
			AAt: func(r, c int) float32 { return A[r*In+c] }, BAt: func(r, c int) float32 { return B[r*R+c] }})
	}
	adapterBytes := uint64(len(held.Layers) * 4 * (R*In + rows*R)) // 6 MiB; the writers' own buffers are under 0.5 MiB
	writers := []struct {
		name, file string
		write      func(dir string, a *Adapter) error
	}{
		{"peft", PEFTWeights, func(dir string, a *Adapter) error { return WritePEFT(dir, a, heads, heads, quant.F32) }},
		{"peft-bf16", PEFTWeights, func(dir string, a *Adapter) error { return WritePEFT(dir, a, heads, heads, quant.BF16) }},
		{"mlx", MLXWeights, func(dir string, a *Adapter) error { return WriteMLX(dir, a, blocks, heads, heads, quant.F32) }},
		{"gguf", "adapter.gguf", func(dir string, a *Adapter) error {
			return WriteGGUFFile(filepath.Join(dir, "adapter.gguf"), a, quant.F32, "llama")
		}},
	}
	for _, w := range writers {
		var files [2][]byte
		for i, a := range []*Adapter{held, views} {
			dir := t.TempDir()
			w.write(t.TempDir(), a) // warm the chunk pools
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			if err := w.write(dir, a); err != nil {
				t.Fatalf("%s: %v", w.name, err)
			}
			runtime.ReadMemStats(&after)
			if got := after.TotalAlloc - before.TotalAlloc; got > adapterBytes/8 {
				t.Errorf("%s (views %v): writing allocated %d bytes, the adapter holds %d: a factor was copied", w.name, i == 1, got, adapterBytes)
			}
			b, err := os.ReadFile(filepath.Join(dir, w.file))
			if err != nil {
				t.Fatal(err)
			}
			files[i] = b
		}
		if !bytes.Equal(files[0], files[1]) {
			t.Errorf("%s: the file written from views differs from the one written from slices", w.name)
		}
	}

	// And the values: MLX's read back (transposed, q/k rows moved in place)
	// are the adapter's.
	dir := t.TempDir()
	if err := WriteMLX(dir, views, blocks, heads, heads, quant.F32); err != nil {
		t.Fatal(err)
	}
	back, err := ReadMLX(dir, heads, heads)
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range back.Layers {
		if !slices.Equal(l.A, held.Layers[i].A) || !slices.Equal(l.B, held.Layers[i].B) {
			t.Errorf("MLX round trip: %s differs", l.Target)
		}
	}
}
