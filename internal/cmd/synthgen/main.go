// Command synthgen writes a synthetic Llama-shaped GGUF model with random
// weights (internal/synth), for memory and speed measurements:
//
//	go run ./internal/cmd/synthgen -preset 1B -type q4_0 -out /tmp/synth-1b-q4_0.gguf
package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/qtune/qtune/internal/synth"
	"github.com/qtune/qtune/quant"
)

func main() {
	preset := flag.String("preset", "15M", "260K, 15M, 110M or 1B")
	typ := flag.String("type", "q4_0", "matrix type")
	out := flag.String("out", "", "output .gguf")
	seed := flag.Uint64("seed", 1, "random seed")
	flag.Parse()
	c, ok := synth.Presets[*preset]
	t, err := quant.ParseType(*typ)
	if !ok || err != nil || *out == "" {
		fmt.Fprintln(os.Stderr, "synthgen: need -preset (260K, 15M, 110M, 1B), -type and -out")
		os.Exit(2)
	}
	t0 := time.Now()
	if err := synth.Write(*out, c, t, *seed); err != nil {
		fmt.Fprintln(os.Stderr, "synthgen:", err)
		os.Exit(1)
	}
	st, _ := os.Stat(*out)
	fmt.Printf("%s: %s %s, %d parameters, %.1f MiB, %s\n", *out, *preset, t, c.Params(), float64(st.Size())/(1<<20), time.Since(t0).Round(time.Millisecond))
}
