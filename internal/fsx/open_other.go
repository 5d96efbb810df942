//go:build !unix

package fsx

import "os"

// openRegular checks path, opens it and checks the opened file (no named
// pipes to block an open here; the second check catches a swap).
func openRegular(path string) (*os.File, error) {
	if err := CheckRegular(path); err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err == nil {
		err = checkMode(path, st.Mode())
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}
