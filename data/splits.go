package data

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Set is one loaded data file.
type Set struct {
	Path    string
	Records []Record
	Kind    Kind
}

// Splits are the data sets of a run. A nil split is absent.
type Splits struct {
	Train, Valid, Test *Set
}

// The file names of a data folder, as MLX-LM lays it out.
const (
	TrainFile = "train.jsonl"
	ValidFile = "valid.jsonl"
	TestFile  = "test.jsonl"
)

// ErrNoData marks a data path that holds none of the expected files.
var ErrNoData = errors.New("no data")

// SplitFiles are the data files of a run, found but not read. An empty
// path is an absent split.
type SplitFiles struct {
	Train, Valid, Test string
}

// FindSplits finds the files LoadSplits would load, without reading them:
// train.jsonl and, when present, valid.jsonl and test.jsonl of a folder
// (ErrNoData without train.jsonl), or a single file as Train alone.
func FindSplits(path string) (SplitFiles, error) {
	st, err := os.Stat(path)
	if err != nil {
		return SplitFiles{}, fmt.Errorf("data: %w", err)
	}
	if !st.IsDir() {
		return SplitFiles{Train: path}, nil
	}
	var out SplitFiles
	for _, f := range []struct {
		name string
		dst  *string
	}{{TrainFile, &out.Train}, {ValidFile, &out.Valid}, {TestFile, &out.Test}} {
		p := filepath.Join(path, f.name)
		if _, err := os.Stat(p); errors.Is(err, fs.ErrNotExist) {
			continue
		}
		*f.dst = p
	}
	if out.Train == "" {
		return SplitFiles{}, fmt.Errorf("data: %s: %w: a data folder needs %s (and optionally %s, %s)", path, ErrNoData, TrainFile, ValidFile, TestFile)
	}
	return out, nil
}

// LoadSplits loads a folder holding train.jsonl and, optionally, valid.jsonl
// and test.jsonl (other files are ignored), or a single file (JSONL or plain
// text, see Load) as Train alone. A folder without train.jsonl is an error
// (ErrNoData); so is any file that fails to load. It holds every record of
// every split; a training run streams them instead (FindSplits, Scan).
func LoadSplits(path string) (Splits, error) {
	files, err := FindSplits(path)
	if err != nil {
		return Splits{}, err
	}
	var out Splits
	for _, f := range []struct {
		path string
		dst  **Set
	}{{files.Train, &out.Train}, {files.Valid, &out.Valid}, {files.Test, &out.Test}} {
		if f.path == "" {
			continue
		}
		s, err := loadSet(f.path)
		if err != nil {
			return Splits{}, err
		}
		*f.dst = s
	}
	return out, nil
}

func loadSet(path string) (*Set, error) {
	recs, kind, err := Load(path)
	if err != nil {
		return nil, err
	}
	return &Set{Path: path, Records: recs, Kind: kind}, nil
}
