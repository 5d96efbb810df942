//go:build !amd64 || noasm

package machine

func fmaLoop() (func(int), float64, string) { return nil, 0, "" }

func readLoop() func([]byte) uint64 { return nil }
