// Command cudaemu builds qtune's CUDA emulator (internal/cudaemu) and
// prints the library's path, or with -env the variables that point qtune
// at it:
//
//	eval "$(go run ./internal/cmd/cudaemu -dir out/cudaemu -env)"
//	qtune train --device cuda …   # the GPU path, on the CPU
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/qtune/qtune/internal/cudaemu"
)

func main() {
	dir := flag.String("dir", "out/cudaemu", "folder for the built library")
	env := flag.Bool("env", false, "print export lines for a shell instead of the path")
	flag.Parse()
	lib, err := cudaemu.Build(*dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if !*env {
		fmt.Println(lib)
		return
	}
	for _, e := range cudaemu.Env(lib) {
		fmt.Printf("export %s\n", e)
	}
}
