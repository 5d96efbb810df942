// Package shared locates the read-only ../shared folder (models, datasets,
// golden reference files) that sits beside the project checkout. Tests use it;
// the library never does.
package shared

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// Dir returns the absolute path of the shared folder: $QTUNE_SHARED when set,
// else ../shared relative to the module root (the folder holding go.mod).
func Dir() (string, bool) {
	if d := os.Getenv("QTUNE_SHARED"); d != "" {
		return d, true
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", false
	}
	for d := wd; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			s := filepath.Join(filepath.Dir(d), "shared")
			if _, err := os.Stat(s); err == nil {
				return s, true
			}
			return "", false
		}
		if filepath.Dir(d) == d {
			return "", false
		}
	}
}

// Path joins elem under the shared folder, failing the test when the folder is
// missing: the golden data is part of the test suite, not optional.
func Path(t testing.TB, elem ...string) string {
	t.Helper()
	d, ok := Dir()
	if !ok {
		t.Fatalf("shared folder not found: expected ../shared beside the module root or $QTUNE_SHARED")
	}
	return filepath.Join(append([]string{d}, elem...)...)
}

// Tool finds a program a test drives. Missing, the test skips, saying how
// to install it (install, when given: "apt-get install openmpi-bin"); under
// CI (CI=true), whose .ci/run installs every such program, it fails.
func Tool(t testing.TB, name, install string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is not installed: %v", name, err)
		}
		if install != "" {
			t.Skipf("%s is not installed (%s)", name, install)
		}
		t.Skipf("%s is not installed", name)
	}
	return p
}
