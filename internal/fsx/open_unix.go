//go:build unix

package fsx

import (
	"os"
	"syscall"
)

// openRegular opens path with O_NONBLOCK, so that a named pipe (however it
// came to be at path) opens at once instead of waiting for a writer, checks
// the opened file's own mode, and clears O_NONBLOCK on a regular file (it
// is not in the poller: regular files are not pollable).
func openRegular(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err == nil {
		err = checkMode(path, st.Mode())
	}
	if err == nil {
		var rc syscall.RawConn
		if rc, err = f.SyscallConn(); err == nil {
			cerr := rc.Control(func(fd uintptr) { err = syscall.SetNonblock(int(fd), false) })
			if err == nil {
				err = cerr
			}
		}
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}
