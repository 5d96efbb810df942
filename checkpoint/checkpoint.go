package checkpoint

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/qtune/qtune/internal/fsx"
	"math"
	"os"
	"path/filepath"
)

// Tensor is one named float32 array.
type Tensor struct {
	Name  string
	Shape []int     // ggml order, Shape[0] innermost; empty for a scalar
	Data  []float32 // (product of Shape)
	// Written, when set, is called once Data has been encoded (a caller
	// whose data lives in a file-backed scratch drops it from memory then).
	Written func() `json:"-"`
}

// State is everything one checkpoint file holds.
type State struct {
	Version int             // the caller's schema number for Meta and tensor names (0..2^32-1)
	Meta    json.RawMessage // the caller's JSON (step, data position, RNG, hyper-parameters); may be empty
	Tensors []Tensor        // unique names, saved in this order
}

// Errors that callers can branch on with errors.Is.
var (
	// ErrCorrupt marks every file that Decode and Load refuse for its
	// content: bad magic, checksum mismatch, truncation, impossible
	// counts, duplicate names, an unsupported version, a body over the
	// limit.
	ErrCorrupt = errors.New("corrupt checkpoint")
	// ErrVersion additionally marks a file written in a newer format
	// version than this build reads.
	ErrVersion = errors.New("unsupported checkpoint format version")
	// ErrLimit additionally marks a file whose body is larger than the
	// caller's limit.
	ErrLimit = errors.New("checkpoint larger than the limit")
	// ErrInvalid marks a State that Encode and Save refuse to write.
	ErrInvalid = errors.New("invalid state")
)

// The default limit (Load, LoadLimit and Decode with limit <= 0) bounds the
// body by what the compressed bytes can honestly hold: MaxRatio times them,
// plus MinLimit. Training state is float32 values that zstd barely shrinks
// (adapters and moments: about 1:1, measured); only long runs of zeros go
// further (about 9000:1), so a file of a few KB that declares or inflates
// to gigabytes is refused before it is inflated (a fixed 16 GiB default let
// a 7 KB file fill 16 GiB). A caller expecting such a state passes its own
// limit.
const (
	MaxRatio = 64
	MinLimit = 1 << 20
)

// FileLimit is the default limit for a checkpoint file of size bytes.
func FileLimit(size int64) int64 {
	if size <= 0 {
		return MinLimit
	}
	if size > (math.MaxInt64-MinLimit)/MaxRatio {
		return math.MaxInt64
	}
	return MaxRatio*size + MinLimit
}

// Save writes s to path atomically: it encodes into path+".tmp" in the same
// folder, fsyncs it, renames it over path and fsyncs the folder, so a crash
// at any point leaves the previous file at path intact. An invalid State is
// refused before anything is written.
func Save(path string, s *State) error {
	if _, err := bodySize(s); err != nil {
		return fmt.Errorf("checkpoint: save %s: %w", path, err)
	}
	tmp := path + ".tmp"
	if err := writeSynced(tmp, s); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("checkpoint: save %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("checkpoint: save %s: %w", path, err)
	}
	if err := fsx.SyncDir(filepath.Dir(path)); err != nil {
		return fmt.Errorf("checkpoint: save %s: sync folder: %w", path, err)
	}
	return nil
}

// writeSynced encodes s into a new file at name and fsyncs it.
func writeSynced(name string, s *State) (err error) {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}()
	bw := bufio.NewWriterSize(f, 64<<10) // the zstd stream comes in blocks; a run's last save must not set its peak
	if err := encode(bw, s); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	return f.Sync()
}

// Load reads the checkpoint at path with the default limit, FileLimit of
// its size.
func Load(path string) (*State, error) { return LoadLimit(path, 0) }

// LoadLimit reads the checkpoint at path, refusing a body larger than limit
// decompressed bytes (limit <= 0: FileLimit of the file's size). Every
// refusal is one line naming the file and the problem, and wraps
// ErrCorrupt; a failure to open or read the file is returned as the os
// error.
func LoadLimit(path string, limit int64) (*State, error) {
	f, err := fsx.Open(path)
	if err != nil {
		return nil, fmt.Errorf("checkpoint: %w", err)
	}
	defer f.Close()
	var lim bodyLimit = fixedLimit(limit)
	if limit <= 0 {
		st, err := f.Stat()
		if err != nil {
			return nil, fmt.Errorf("checkpoint: %w", err)
		}
		lim = fileLimit(st.Size())
	}
	s, err := decode(bufio.NewReaderSize(f, 1<<20), lim)
	if err != nil {
		return nil, fmt.Errorf("checkpoint: %s: %w", path, err)
	}
	return s, nil
}
