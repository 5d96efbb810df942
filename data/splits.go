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

// LoadSplits loads a folder holding train.jsonl and, optionally, valid.jsonl
// and test.jsonl (other files are ignored), or a single file (JSONL or plain
// text, see Load) as Train alone. A folder without train.jsonl is an error
// (ErrNoData); so is any file that fails to load.
func LoadSplits(path string) (Splits, error) {
	st, err := os.Stat(path)
	if err != nil {
		return Splits{}, fmt.Errorf("data: %w", err)
	}
	if !st.IsDir() {
		s, err := loadSet(path)
		if err != nil {
			return Splits{}, err
		}
		return Splits{Train: s}, nil
	}
	var out Splits
	for _, f := range []struct {
		name string
		dst  **Set
	}{{TrainFile, &out.Train}, {ValidFile, &out.Valid}, {TestFile, &out.Test}} {
		p := filepath.Join(path, f.name)
		if _, err := os.Stat(p); errors.Is(err, fs.ErrNotExist) {
			continue
		}
		s, err := loadSet(p)
		if err != nil {
			return Splits{}, err
		}
		*f.dst = s
	}
	if out.Train == nil {
		return Splits{}, fmt.Errorf("data: %s: %w: a data folder needs %s (and optionally %s, %s)", path, ErrNoData, TrainFile, ValidFile, TestFile)
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
