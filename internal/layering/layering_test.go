// Package layering checks the import rule of design.md: imports point down
// only (cmd → train → methods → model → nn → kernels, with quant, tensor and
// budget at the bottom and format, offload, optim, checkpoint, data,
// tokenizer beside the chain).
package layering

import (
	"os/exec"
	"strings"
	"testing"
)

const mod = "github.com/qtune/qtune/"

// rank: a package may import only packages of strictly lower rank.
var rank = map[string]int{
	"quant": 0, "budget": 0, "internal/shared": 0, "internal/llamacpp": 0, "internal/hfjinja": 0, "chat": 0, "internal/fsx": 0, "internal/cudaemu": 0, "internal/procmem": 0,
	"tensor": 1, "offload/comm": 1, // the interface offload/mpi implements
	"format/gguf": 2, "format/safetensors": 2, "format/llama2c": 2, "format/adapter": 3, "offload": 2, "data": 2, "optim": 2, "checkpoint": 2,
	"kernels":   2,
	"tokenizer": 3, "nn": 3,
	"model":            4,
	"internal/synth":   4,
	"methods":          5,
	"train":            6,
	"cmd/qtune":        7,
	"capi":             7,
	"examples":         7,
	"internal/cmd":     7,
	"internal/memtest": 7,
}

func rankOf(p string) (int, bool) {
	p = strings.TrimPrefix(p, mod)
	for {
		if r, ok := rank[p]; ok {
			return r, true
		}
		i := strings.LastIndex(p, "/")
		if i < 0 {
			return 0, false
		}
		p = p[:i] // a subpackage (methods/mezo) takes its room's rank
	}
}

func TestImportsPointDown(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}} {{join .Imports " "}}`, mod+"...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		from := f[0]
		if strings.HasPrefix(from, mod+"internal/layering") {
			continue
		}
		rf, ok := rankOf(from)
		if !ok {
			t.Errorf("package %s has no room in the layering table; add it", from)
			continue
		}
		for _, to := range f[1:] {
			if !strings.HasPrefix(to, mod) {
				continue
			}
			rt, ok := rankOf(to)
			if !ok {
				continue // reported as its own line
			}
			if rt >= rf {
				t.Errorf("%s imports %s: imports must point down", strings.TrimPrefix(from, mod), strings.TrimPrefix(to, mod))
			}
		}
	}
}

// cgo is the C ABI's alone (capi builds libqtune with it): the binary and
// the library beneath stay cgo-free, so they cross-compile with
// CGO_ENABLED=0 and load native code only through purego.
func TestCgoOnlyInCAPI(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}} {{len .CgoFiles}}`, mod+"...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	found := false
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) != 2 || f[1] == "0" {
			continue
		}
		if f[0] != mod+"capi" {
			t.Errorf("%s uses cgo: only capi may", strings.TrimPrefix(f[0], mod))
		}
		found = true
	}
	if !found {
		t.Error("capi has no cgo files: the check sees nothing")
	}
}

// purego, which loads native libraries at run time, belongs to the native
// backends' own subfolders (design.md: "native GPU code through purego in
// its own subfolder"): kernels/<backend>, offload/<transport>. The
// library's core (the rest) never imports it, so it stays pure Go.
func TestPuregoOnlyInBackends(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}} {{join .Imports " "}}`, mod+"...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		p := strings.TrimPrefix(f[0], mod)
		backend := strings.Count(p, "/") >= 1 && (strings.HasPrefix(p, "kernels/") || strings.HasPrefix(p, "offload/"))
		for _, imp := range f[1:] {
			if strings.HasPrefix(imp, "github.com/ebitengine/purego") && !backend {
				t.Errorf("%s imports %s: only a backend's subfolder (kernels/<name>, offload/<name>) may", p, imp)
			}
		}
	}
}
