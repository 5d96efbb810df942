// Command synthgen writes a synthetic Llama-shaped GGUF model with random
// weights (internal/synth), for memory and speed measurements:
//
//	go run ./internal/cmd/synthgen -preset 1B -type q4_0 -out /tmp/synth-1b-q4_0.gguf
//
// or a tiny model of one family (synth.Families) as llama.cpp's GGUF and,
// with -hf, the Hugging Face folder it converts from:
//
//	go run ./internal/cmd/synthgen -family gemma3 -type f32 -out /tmp/gemma3.gguf -hf /tmp/gemma3-hf
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/qtune/qtune/internal/synth"
	"github.com/qtune/qtune/quant"
)

func main() {
	preset := flag.String("preset", "15M", "260K, 15M, 110M or 1B")
	typ := flag.String("type", "q4_0", "matrix type")
	out := flag.String("out", "", "output .gguf")
	seed := flag.Uint64("seed", 1, "random seed")
	family := flag.String("family", "", "a family's tiny model instead of a preset: "+familyNames())
	hf := flag.String("hf", "", "with -family: also write the Hugging Face folder here")
	flag.Parse()
	if *family != "" {
		f, ok := synth.FamilyByName(*family)
		t, err := quant.ParseType(*typ)
		if !ok || err != nil || *out == "" {
			fmt.Fprintln(os.Stderr, "synthgen: need -family ("+familyNames()+"), -type and -out")
			os.Exit(2)
		}
		if err := f.WriteGGUF(*out, t, *seed); err != nil {
			fmt.Fprintln(os.Stderr, "synthgen:", err)
			os.Exit(1)
		}
		fmt.Printf("%s: %s (%s) %s\n", *out, f.Name, f.Arch, t)
		if *hf != "" {
			if err := f.WriteHF(*hf, *seed); err != nil {
				fmt.Fprintln(os.Stderr, "synthgen:", err)
				os.Exit(1)
			}
			fmt.Printf("%s: the same model as a Hugging Face folder (model_type %s)\n", *hf, f.ModelType)
		}
		return
	}
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

func familyNames() string {
	var n []string
	for _, f := range synth.Families() {
		n = append(n, f.Name)
	}
	return strings.Join(n, ", ")
}
