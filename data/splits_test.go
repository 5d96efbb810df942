package data

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qtune/qtune/internal/shared"
)

func TestLoadSplitsRealFolders(t *testing.T) {
	s, err := LoadSplits(shared.Path(t, "assets", "data", "sst2"))
	if err != nil {
		t.Fatal(err)
	}
	if s.Train == nil || s.Valid == nil || s.Test == nil || len(s.Train.Records) != 1000 || len(s.Valid.Records) != 500 || len(s.Test.Records) != 872 {
		t.Fatalf("sst2 splits %+v", s)
	}
	if s.Train.Kind != Classification || filepath.Base(s.Test.Path) != TestFile {
		t.Errorf("sst2 train %s, test %s", s.Train.Kind, s.Test.Path)
	}

	s, err = LoadSplits(shared.Path(t, "assets", "data", "tinyshakespeare"))
	if err != nil {
		t.Fatal(err)
	}
	if s.Train == nil || s.Valid == nil || s.Test != nil || s.Train.Kind != Text {
		t.Fatalf("tinyshakespeare splits %+v", s)
	}

	s, err = LoadSplits(shared.Path(t, "assets", "data", "tinystories", "sample.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if s.Train == nil || s.Valid != nil || s.Test != nil || len(s.Train.Records) != 1 {
		t.Fatalf("single file %+v", s)
	}
}

func TestLoadSplitsErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadSplits(filepath.Join(dir, "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing path: %v", err)
	}
	if _, err := LoadSplits(dir); !errors.Is(err, ErrNoData) || !strings.Contains(err.Error(), TrainFile) {
		t.Errorf("empty folder: %v", err)
	}
	os.WriteFile(filepath.Join(dir, TrainFile), []byte(`{"text":"a"}`+"\n"), 0o644)
	os.WriteFile(filepath.Join(dir, ValidFile), []byte(`{"text":"a"}`+"\n{oops\n"), 0o644)
	_, err := LoadSplits(dir)
	if !errors.Is(err, ErrData) || !strings.Contains(err.Error(), ValidFile) || !strings.Contains(err.Error(), "line 2") {
		t.Errorf("bad valid.jsonl: %v", err)
	}
	os.Remove(filepath.Join(dir, ValidFile))
	if s, err := LoadSplits(dir); err != nil || s.Valid != nil || s.Train.Records[0].Text != "a" {
		t.Errorf("train only: %+v %v", s, err)
	}
}

// The real data sets through the whole path with the toy encoder: SST-2's
// targets are exactly the label's choice; tinyshakespeare packs into full
// rows.
func TestRealDataToBatches(t *testing.T) {
	enc := &toyEnc{}
	s, err := LoadSplits(shared.Path(t, "assets", "data", "sst2"))
	if err != nil {
		t.Fatal(err)
	}
	exs, err := Tokenize(enc, s.Train.Records, s.Train.Kind, TokenizeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range exs {
		var tgt []byte
		for j, l := range e.Loss {
			if l {
				tgt = append(tgt, byte(e.Tokens[j]-3))
			}
		}
		r := s.Train.Records[i]
		if string(tgt) != r.Choices[r.Label] {
			t.Fatalf("record %d: targets %q, want %q", i, tgt, r.Choices[r.Label])
		}
	}
	bt, err := NewBatcher(Examples(exs), BatchOptions{BatchSize: 8, MaxSeqLen: 64, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	if bt.BatchesPerEpoch() != 125 {
		t.Errorf("%d batches", bt.BatchesPerEpoch())
	}

	valid := shared.Path(t, "assets", "data", "tinyshakespeare", ValidFile)
	tf, _, err := CachedTokenFile(t.TempDir(), CacheKey{Tokenizer: "toy"}, enc, valid, TokenizeOptions{AddEOS: true})
	if err != nil {
		t.Fatal(err)
	}
	defer tf.Close()
	bt, err = NewBatcher(tf, BatchOptions{BatchSize: 4, MaxSeqLen: 256, Pack: true, DropLast: true, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	tokens := 0
	for i := 0; i < bt.BatchesPerEpoch(); i++ {
		b := next(t, bt)
		if b.B != 4 || b.T != 256 || b.NumTokens() != 4*256 {
			t.Fatalf("batch %d: %dx%d, %d tokens", i, b.B, b.T, b.NumTokens())
		}
		tokens += b.NumTokens()
	}
	stream := int(tf.NumTokens())
	if tokens > stream-1 || tokens < stream-1-4*256 {
		t.Errorf("%d positions from a stream of %d tokens", tokens, stream)
	}
}
