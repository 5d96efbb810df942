package gguf

import (
	"io"
	"os"

	"github.com/qtune/qtune/internal/shared"
)

func sharedDir() (string, bool) { return shared.Dir() }

func readFileHead(path string, n int) ([]byte, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	b := make([]byte, n)
	k, err := io.ReadFull(fh, b)
	if err == io.ErrUnexpectedEOF {
		err = nil
	}
	return b[:k], err
}
