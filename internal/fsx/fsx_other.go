//go:build !linux

package fsx

const dirSyncWorks = false

func exchange(a, b string) error { return errNoExchange }

// Lock is a no-op where flock is not wired (qtune's platform is Linux).
func Lock(dir string) (unlock func(), err error) { return func() {}, nil }
