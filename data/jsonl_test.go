package data

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/qtune/qtune/internal/shared"
)

func TestLoadRealDatasets(t *testing.T) {
	for _, c := range []struct {
		path []string
		kind Kind
		n    int
	}{
		{[]string{"assets", "data", "sst2", "train.jsonl"}, Classification, 1000},
		{[]string{"assets", "data", "sst2", "test.jsonl"}, Classification, 872},
		{[]string{"assets", "data", "tinyshakespeare", "valid.jsonl"}, Text, 0},
		{[]string{"assets", "data", "tinystories", "sample.txt"}, Text, 1},
	} {
		recs, kind, err := Load(shared.Path(t, c.path...))
		if err != nil {
			t.Fatal(err)
		}
		if kind != c.kind || (c.n > 0 && len(recs) != c.n) || len(recs) == 0 {
			t.Errorf("%v: %d %s records", c.path, len(recs), kind)
		}
		if kind == Classification && (recs[0].Choices[0] != " terrible" || !strings.HasSuffix(recs[0].Prompt, "It was")) {
			t.Errorf("sst2 record %+v", recs[0])
		}
	}
}

func TestJSONLErrorsNameTheLine(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"{\"text\":\"a\"}\n\n{\"text\":1}\n", "line 3"},
		{"{\"text\":\"a\"}\nnot json\n", "line 2"},
		{"{\"prompt\":\"p\",\"choices\":[\"a\",\"b\"],\"label\":2}\n", "out of range"},
		{"{\"prompt\":\"p\",\"choices\":[\"a\"],\"label\":0}\n", "at least 2"},
		{"{\"prompt\":\"p\",\"choices\":[\"a\",\"b\"],\"label\":\"x\"}\n", "integer"},
		{"{\"text\":\"a\"}\n{\"prompt\":\"p\",\"completion\":\"c\"}\n", "line 2"},
		{"{\"messages\":[{\"role\":\"robot\",\"content\":\"x\"}]}\n", "unknown role"},
		{"{\"prompt\":\"p\"}\n", "go together"},
		{"{\"other\":1}\n", "none of"},
		{"\n\n", "no records"},
	} {
		_, _, err := ReadJSONL(strings.NewReader(c.in))
		if err == nil || !errors.Is(err, ErrData) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: error %v, want one mentioning %q", c.in, err, c.want)
		}
	}
}

func TestJSONLKinds(t *testing.T) {
	recs, kind, err := ReadJSONL(strings.NewReader(`{"prompt":"2+2=","completion":"4"}` + "\n" + `{"prompt":"a","completion":"b"}`))
	if err != nil || kind != Completion || len(recs) != 2 || recs[0].Completion != "4" {
		t.Fatalf("%v %v %+v", err, kind, recs)
	}
	recs, kind, err = ReadJSONL(strings.NewReader(`{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]}`))
	if err != nil || kind != Chat || len(recs[0].Messages) != 2 {
		t.Fatalf("%v %v %+v", err, kind, recs)
	}
}

func TestLoadPlainAndBadFiles(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "a.txt")
	os.WriteFile(p, []byte("hello world"), 0o644)
	recs, kind, err := Load(p)
	if err != nil || kind != Text || recs[0].Text != "hello world" {
		t.Fatalf("%v %v %v", err, kind, recs)
	}
	os.WriteFile(p, []byte{0xff, 0xfe, 0x00}, 0o644)
	if _, _, err := Load(p); err == nil {
		t.Fatal("binary file accepted as text")
	}
	if _, _, err := Load(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("missing file accepted")
	}
}

func FuzzReadJSONL(f *testing.F) {
	f.Add([]byte(`{"text":"a"}`))
	f.Add([]byte(`{"prompt":"p","choices":["a","b"],"label":1}`))
	f.Add([]byte(`{"messages":[{"role":"user","content":"x"}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		recs, kind, err := ReadJSONL(strings.NewReader(string(b)))
		if err != nil {
			return
		}
		for _, r := range recs {
			if kind == Classification && (r.Label < 0 || r.Label >= len(r.Choices)) {
				t.Fatalf("label %d of %d choices accepted", r.Label, len(r.Choices))
			}
		}
	})
}

// Scan walks the records Load returns, in order, without keeping them; its
// errors are Load's, and an error of the callback stops the walk unchanged.
func TestScanMatchesLoad(t *testing.T) {
	for _, p := range [][]string{
		{"assets", "data", "sst2", "valid.jsonl"},
		{"assets", "data", "tinyshakespeare", "valid.jsonl"},
		{"assets", "data", "tinystories", "sample.txt"},
	} {
		path := shared.Path(t, p...)
		want, wantKind, err := Load(path)
		if err != nil {
			t.Fatal(err)
		}
		i := 0
		kind, n, err := Scan(path, func(r Record) error {
			if i >= len(want) || !reflect.DeepEqual(r, want[i]) {
				t.Fatalf("%v: record %d differs from Load's", p, i)
			}
			i++
			return nil
		})
		if err != nil || kind != wantKind || n != len(want) || i != n {
			t.Errorf("%v: kind %s, %d records (%d seen), err %v; Load: %s, %d", p, kind, n, i, err, wantKind, len(want))
		}
	}

	dir := t.TempDir()
	p := filepath.Join(dir, "d.jsonl")
	os.WriteFile(p, []byte("{\"text\":\"a\"}\n{\"text\":\"b\"}\n{\"prompt\":\"p\",\"completion\":\"c\"}\n"), 0o644)
	seen := 0
	_, _, err := Scan(p, func(Record) error { seen++; return nil })
	if !errors.Is(err, ErrData) || !strings.Contains(err.Error(), "line 3") || !strings.Contains(err.Error(), p) || seen != 2 {
		t.Errorf("mixed kinds: %v after %d records", err, seen)
	}
	stop := errors.New("stop")
	seen = 0
	if _, _, err := Scan(p, func(Record) error { seen++; return stop }); err != stop || seen != 1 {
		t.Errorf("callback error: %v after %d records", err, seen)
	}
	txt := filepath.Join(dir, "t.txt")
	os.WriteFile(txt, []byte("plain"), 0o644)
	if _, _, err := Scan(txt, func(Record) error { return stop }); err != stop {
		t.Errorf("callback error on plain text: %v", err)
	}
}

// ScanMax refuses a record longer than its bound, naming the line or the
// file, and accepts one at the bound.
func TestScanMax(t *testing.T) {
	dir := t.TempDir()
	rec := `{"text": "` + strings.Repeat("a", 1000) + `"}`
	p := filepath.Join(dir, "d.jsonl")
	os.WriteFile(p, []byte(`{"text": "short"}`+"\n"+rec+"\n"), 0o644)
	if _, n, err := ScanMax(p, int64(len(rec)), func(Record) error { return nil }); err != nil || n != 2 {
		t.Fatalf("at the bound: %d records, %v", n, err)
	}
	if _, _, err := ScanMax(p, int64(len(rec)-1), func(Record) error { return nil }); err == nil || !strings.Contains(err.Error(), "line 2") || !strings.Contains(err.Error(), "memory budget") {
		t.Errorf("over the bound: %v", err)
	}
	txt := filepath.Join(dir, "notes.txt")
	os.WriteFile(txt, []byte(strings.Repeat("word ", 400)), 0o644)
	if _, _, err := ScanMax(txt, 1000, func(Record) error { return nil }); err == nil || !strings.Contains(err.Error(), "notes.txt") {
		t.Errorf("a plain-text file over the bound: %v", err)
	}
}

// TestPlainTextByteOrderMark: a plain-text data file saved with a UTF-8 BOM
// is read without it (the BOM became the first character of the record and
// was trained on); a JSONL file's BOM is dropped too.
func TestPlainTextByteOrderMark(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"a.txt":   "\ufeffOnce upon a time.",
		"b.jsonl": "\ufeff{\"text\": \"Once upon a time.\"}\n",
	} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		recs, _, err := Load(p)
		if err != nil || len(recs) != 1 || recs[0].Text != "Once upon a time." {
			t.Errorf("%s: %+v %v", name, recs, err)
		}
	}
}
