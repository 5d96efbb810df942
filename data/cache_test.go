package data

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/qtune/qtune/internal/shared"
)

// cacheJSONL is a small prompt/completion file (one empty pair included).
const cacheJSONL = `{"prompt":"a","completion":"bc"}
{"prompt":"long prompt here","completion":" and its answer"}
{"prompt":"","completion":""}
`

func writeData(t testing.TB, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// fileExamples reads every example of a TokenFile.
func fileExamples(t testing.TB, tf *TokenFile) []Example {
	t.Helper()
	out := make([]Example, tf.NumExamples())
	total := int64(0)
	for i := range out {
		e, err := tf.Example(i)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = e
		total += int64(len(e.Tokens))
	}
	if total != tf.NumTokens() {
		t.Fatalf("examples hold %d tokens, NumTokens %d", total, tf.NumTokens())
	}
	return out
}

// loadTokenize is the in-memory path the cache must reproduce.
func loadTokenize(t testing.TB, enc Encoder, path string, o TokenizeOptions) []Example {
	t.Helper()
	recs, kind, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	ex, err := Tokenize(enc, recs, kind, o)
	if err != nil {
		t.Fatal(err)
	}
	return ex
}

func sameExamples(t testing.TB, what string, got, want []Example) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d examples, want %d", what, len(got), len(want))
	}
	for i := range want {
		if !sameExample(got[i], want[i]) {
			t.Fatalf("%s: example %d: %+v, want %+v", what, i, got[i], want[i])
		}
	}
}

func sameExample(a, b Example) bool {
	if len(a.Tokens) != len(b.Tokens) || len(a.Loss) != len(b.Loss) {
		return false
	}
	for i := range a.Tokens {
		if a.Tokens[i] != b.Tokens[i] || a.Loss[i] != b.Loss[i] {
			return false
		}
	}
	return true
}

// The cache file holds exactly what Tokenize makes in memory, for the real
// data sets and every record kind, and a second call is a hit that encodes
// nothing.
func TestTokenFileEqualsTokenize(t *testing.T) {
	dir := t.TempDir()
	chat := writeData(t, dir, "chat.jsonl", `{"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]}
{"messages":[{"role":"user","content":"only a question"}]}
`)
	for _, c := range []struct {
		path string
		enc  *toyEnc
		o    TokenizeOptions
	}{
		{shared.Path(t, "assets", "data", "sst2", "train.jsonl"), &toyEnc{}, TokenizeOptions{}},
		{shared.Path(t, "assets", "data", "sst2", "valid.jsonl"), &toyEnc{pieces: []string{" the", "It was", "e"}, prefix: true}, TokenizeOptions{AddEOS: true}},
		{shared.Path(t, "assets", "data", "tinyshakespeare", "train.jsonl"), &toyEnc{}, TokenizeOptions{AddEOS: true}},
		{shared.Path(t, "assets", "data", "tinyshakespeare", "valid.jsonl"), &toyEnc{pieces: []string{"th", "the", "\n"}}, TokenizeOptions{NoBOS: true}},
		{shared.Path(t, "assets", "data", "tinystories", "sample.txt"), &toyEnc{}, TokenizeOptions{AddEOS: true}},
		{writeData(t, dir, "c.jsonl", cacheJSONL), &toyEnc{pieces: []string{"an", "and"}}, TokenizeOptions{AddEOS: true}},
		{chat, &toyEnc{}, TokenizeOptions{AddEOS: true, Template: renderFunc(plainChat), ChatTemplate: "plain"}},
		{chat, &toyEnc{}, TokenizeOptions{Template: renderFunc(chatml), ChatTemplate: "chatml"}},
	} {
		name := filepath.Base(c.path)
		want := loadTokenize(t, c.enc, c.path, c.o)
		tf, hit, err := CachedTokenFile(filepath.Join(dir, "cache"), CacheKey{Tokenizer: "toy", Name: name}, c.enc, c.path, c.o)
		if err != nil || hit {
			t.Fatalf("%s: hit %v err %v", name, hit, err)
		}
		sameExamples(t, name, fileExamples(t, tf), want)
		tf.Close()
		calls := c.enc.calls
		tf, hit, err = CachedTokenFile(filepath.Join(dir, "cache"), CacheKey{Tokenizer: "toy", Name: name}, c.enc, c.path, c.o)
		if err != nil || !hit || c.enc.calls != calls {
			t.Fatalf("%s again: hit %v err %v, %d encodes", name, hit, err, c.enc.calls-calls)
		}
		sameExamples(t, name+" (hit)", fileExamples(t, tf), want)
		// Pieces of an example read back as the whole does.
		for i := 0; i < tf.NumExamples(); i += 7 {
			n := tf.ExampleLen(i)
			if n < 3 {
				continue
			}
			w := make([]uint32, n-2)
			if err := tf.ReadTokens(i, 1, w); err != nil {
				t.Fatal(err)
			}
			for k, v := range w {
				if int32(v&^LossFlag) != want[i].Tokens[k+1] || (v&LossFlag != 0) != want[i].Loss[k+1] {
					t.Fatalf("%s: example %d token %d read in a piece differs", name, i, k+1)
				}
			}
		}
		tf.Close()
	}
}

// cacheFile builds the cache of cacheJSONL in dir and returns its path and
// bytes.
func cacheFile(t *testing.T, dir string, enc Encoder, data string, key CacheKey, o TokenizeOptions) (string, []byte, [32]byte) {
	t.Helper()
	tf, _, err := CachedTokenFile(dir, key, enc, data, o)
	if err != nil {
		t.Fatal(err)
	}
	tf.Close()
	files, _ := filepath.Glob(filepath.Join(dir, "*"+cacheExt))
	if len(files) != 1 {
		t.Fatalf("cache folder holds %v", files)
	}
	b, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	return files[0], b, tf.Sum()
}

func TestCacheHitMissCorrupt(t *testing.T) {
	dir := t.TempDir()
	cdir := filepath.Join(dir, "cache")
	enc := &toyEnc{}
	key := CacheKey{Tokenizer: "toy-v1", Name: "unit/test"}
	o := TokenizeOptions{AddEOS: true}
	data := writeData(t, dir, "d.jsonl", cacheJSONL)
	want := loadTokenize(t, enc, data, o)
	path, good, sum := cacheFile(t, cdir, enc, data, key, o)
	if !strings.HasPrefix(filepath.Base(path), "unit_test-") {
		t.Errorf("cache file %s", path)
	}
	recs, kind, _ := Load(data)
	if sum != cacheSum(key.Tokenizer, recs, kind, o) {
		t.Error("the streamed sum differs from the sum of the records in memory")
	}

	// Anything that changes the tokens changes the file; the path and the
	// layout of the data file do not.
	other := writeData(t, dir, "other.jsonl", "\n"+strings.ReplaceAll(cacheJSONL, "\n", "\n\n"))
	for name, c := range map[string]struct {
		key  CacheKey
		data string
		o    TokenizeOptions
		hit  bool
	}{
		"tokenizer":  {CacheKey{Tokenizer: "toy-v2", Name: key.Name}, data, o, false},
		"options":    {key, data, TokenizeOptions{}, false},
		"records":    {key, writeData(t, dir, "more.jsonl", `{"prompt":"x","completion":"y"}`+"\n"+cacheJSONL), o, false},
		"a record":   {key, writeData(t, dir, "less.jsonl", cacheJSONL[:strings.LastIndex(cacheJSONL[:len(cacheJSONL)-1], "\n")+1]), o, false},
		"kind":       {key, writeData(t, dir, "text.jsonl", `{"text":"abc"}`+"\n"), o, false},
		"other path": {key, other, o, true},
		"other name": {CacheKey{Tokenizer: key.Tokenizer}, data, o, false},
		"same again": {key, data, o, true},
	} {
		tf, hit, err := CachedTokenFile(cdir, c.key, enc, c.data, c.o)
		if err != nil || hit != c.hit {
			t.Errorf("%s: hit %v err %v", name, hit, err)
			continue
		}
		tf.Close()
	}

	footer := len(good) - cacheFoot
	index := footer - 4*len(want)
	for name, bad := range map[string][]byte{
		"empty":        {},
		"header only":  good[:cacheHead],
		"truncated":    good[:len(good)-5],
		"token gone":   fixCRC(append(append([]byte(nil), good[:cacheHead+4]...), good[cacheHead+8:]...)),
		"bit flip":     flip(good, len(good)/2),
		"bad crc":      flip(good, len(good)-1),
		"other sum":    fixCRC(flip(good, 20)),
		"bad magic":    fixCRC(flip(good, 0)),
		"version 1":    fixCRC(setU32(good, 8, 1)),
		"examples":     fixCRC(setU64(good, footer, uint64(len(want)+1))),
		"huge count":   fixCRC(setU64(good, footer, 1<<62)),
		"tokens":       fixCRC(setU64(good, footer+8, 1<<40)),
		"index":        fixCRC(setU32(good, index, 1)),
		"index wraps":  fixCRC(setU32(good, index, 1<<32-1)),
		"extra bytes":  fixCRC(append(append([]byte(nil), good[:len(good)-4]...), 0, 0, 0, 0, 0)),
		"v1 old bytes": appendCRC(append([]byte(cacheMagic+"\x01\x00\x00\x00"), append(sum[:], 3, 9)...)),
	} {
		if err := os.WriteFile(path, bad, 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := openTokenFile(path, &sum); !errors.Is(err, ErrCache) {
			t.Errorf("%s: accepted (%v)", name, err)
		}
		tf, hit, err := CachedTokenFile(cdir, key, enc, data, o)
		if err != nil || hit {
			t.Errorf("%s: hit %v err %v", name, hit, err)
			continue
		}
		sameExamples(t, name, fileExamples(t, tf), want)
		tf.Close()
		if b, _ := os.ReadFile(path); !reflect.DeepEqual(b, good) {
			t.Errorf("%s: cache not rebuilt", name)
		}
	}
	if tmp, _ := filepath.Glob(filepath.Join(cdir, ".tmp-*")); len(tmp) != 0 {
		t.Errorf("temporary files left: %v", tmp)
	}

	if _, _, err := CachedTokenFile(cdir, CacheKey{}, enc, data, o); err == nil {
		t.Error("empty tokenizer identity accepted")
	}
	if _, _, err := CachedTokenFile(cdir, key, enc, filepath.Join(dir, "missing.jsonl"), o); err == nil {
		t.Error("missing data file accepted")
	}
	// An unwritable cache folder is an error.
	blocker := writeData(t, dir, "file", "")
	if _, _, err := CachedTokenFile(filepath.Join(blocker, "sub"), key, enc, data, o); err == nil || !strings.Contains(err.Error(), "token cache") {
		t.Errorf("unwritable folder: %v", err)
	}
}

// A file opened stays readable after the cache is rebuilt over it (rename
// keeps its inode); a file cut short under it fails reads with ErrCache;
// reads outside an example are errors, not panics.
func TestTokenFileReads(t *testing.T) {
	dir := t.TempDir()
	data := writeData(t, dir, "d.jsonl", cacheJSONL)
	path, _, _ := cacheFile(t, dir, &toyEnc{}, data, CacheKey{Tokenizer: "t"}, TokenizeOptions{})
	tf, err := OpenTokenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer tf.Close()
	n := tf.ExampleLen(1)
	w := make([]uint32, n)
	for _, c := range []struct{ i, off, n int }{{-1, 0, 1}, {3, 0, 1}, {1, -1, 1}, {1, 1, n}, {1, 0, n + 1}} {
		if err := tf.ReadTokens(c.i, c.off, make([]uint32, c.n)); err == nil {
			t.Errorf("ReadTokens(%d, %d, %d tokens) accepted", c.i, c.off, c.n)
		}
	}
	if err := tf.ReadTokens(1, 0, w); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, cacheHead+4); err != nil {
		t.Fatal(err)
	}
	if err := tf.ReadTokens(1, 0, w); !errors.Is(err, ErrCache) {
		t.Errorf("read past a truncated file: %v", err)
	}
}

// A data file that changes between the pass that hashes it and the pass
// that tokenizes it is an error, and no cache file is left.
func TestCacheDataChangedBetweenPasses(t *testing.T) {
	dir := t.TempDir()
	var sb strings.Builder
	for i := 0; i < 8000; i++ { // well past the readers' buffers
		fmt.Fprintf(&sb, "{\"text\":\"record %05d\"}\n", i)
	}
	data := writeData(t, dir, "d.jsonl", sb.String())
	last := int64(sb.Len() - len("00000\"}\n"))
	enc := &hookEnc{hook: func() {
		f, err := os.OpenFile(data, os.O_WRONLY, 0)
		if err != nil {
			t.Error(err)
			return
		}
		f.WriteAt([]byte("99999"), last) // the last record, same length
		f.Close()
	}}
	cdir := filepath.Join(dir, "cache")
	_, _, err := CachedTokenFile(cdir, CacheKey{Tokenizer: "t"}, enc, data, TokenizeOptions{})
	if err == nil || !strings.Contains(err.Error(), "changed while it was tokenized") {
		t.Fatalf("changed data file: %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(cdir, "*")); len(left) != 0 {
		t.Errorf("files left: %v", left)
	}
	if _, _, err := CachedTokenFile(cdir, CacheKey{Tokenizer: "t"}, enc, data, TokenizeOptions{}); err != nil {
		t.Errorf("stable again: %v", err)
	}
}

// hookEnc is a toy encoder that runs hook at its first Encode.
type hookEnc struct {
	toyEnc
	hook func()
}

func (e *hookEnc) Encode(s string, bos bool) []int {
	if e.hook != nil {
		e.hook()
		e.hook = nil
	}
	return e.toyEnc.Encode(s, bos)
}

// bigEnc gives an id that does not fit 31 bits.
type bigEnc struct{ toyEnc }

func (e *bigEnc) Encode(s string, bos bool) []int {
	return append(e.toyEnc.Encode(s, bos), 1<<31)
}

func TestTokenIDsBeyond31BitsAreErrors(t *testing.T) {
	dir := t.TempDir()
	data := writeData(t, dir, "d.jsonl", cacheJSONL)
	_, _, err := CachedTokenFile(dir, CacheKey{Tokenizer: "t"}, &bigEnc{}, data, TokenizeOptions{})
	if !errors.Is(err, ErrData) || !strings.Contains(err.Error(), "line 1: ") || !strings.Contains(err.Error(), "2147483648") {
		t.Errorf("cache: %v", err)
	}
	if _, err := Tokenize(&bigEnc{}, []Record{{Text: "a"}}, Text, TokenizeOptions{}); !errors.Is(err, ErrData) {
		t.Errorf("Tokenize: %v", err)
	}
}

func flip(b []byte, i int) []byte {
	c := append([]byte(nil), b...)
	c[i] ^= 0x55
	return c
}

func setU32(b []byte, at int, v uint32) []byte {
	c := append([]byte(nil), b...)
	binary.LittleEndian.PutUint32(c[at:], v)
	return c
}

func setU64(b []byte, at int, v uint64) []byte {
	c := append([]byte(nil), b...)
	binary.LittleEndian.PutUint64(c[at:], v)
	return c
}

// appendCRC appends the CRC-32C of b.
func appendCRC(b []byte) []byte {
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

// fixCRC recomputes the trailer so that the checks behind the checksum are
// what reject the file.
func fixCRC(b []byte) []byte {
	if len(b) < 4 {
		return b
	}
	return appendCRC(append([]byte(nil), b[:len(b)-4]...))
}

// FuzzOpenTokenFile writes arbitrary bytes to a file and opens it (with the
// CRC fixed up when fix, so that the checks behind it are reached): it never
// panics, errors wrap ErrCache, it allocates in proportion to the file (no
// count read from the file sizes anything before it is checked), and a file
// it accepts reads back consistently.
func FuzzOpenTokenFile(f *testing.F) {
	dir := f.TempDir()
	for i, c := range []string{cacheJSONL, `{"text":"a"}`, "plain text"} {
		data := writeData(f, dir, fmt.Sprint("d", i), c)
		tf, _, err := CachedTokenFile(filepath.Join(dir, fmt.Sprint("c", i)), CacheKey{Tokenizer: "t"}, &toyEnc{}, data, TokenizeOptions{AddEOS: true})
		if err != nil {
			f.Fatal(err)
		}
		b, err := os.ReadFile(tf.f.Name())
		if err != nil {
			f.Fatal(err)
		}
		tf.Close()
		f.Add(b, false)
		f.Add(b, true)
	}
	f.Add([]byte{}, false)
	f.Add(make([]byte, cacheHead+cacheFoot), true)
	f.Fuzz(func(t *testing.T, b []byte, fix bool) {
		if fix {
			b = fixCRC(b)
		}
		p := filepath.Join(t.TempDir(), "f"+cacheExt)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		tf, err := OpenTokenFile(p)
		runtime.ReadMemStats(&after)
		if grew := after.TotalAlloc - before.TotalAlloc; grew > uint64(len(b))*9/8+2*cacheChunk {
			t.Fatalf("opening %d bytes allocated %d", len(b), grew)
		}
		if err != nil {
			if !errors.Is(err, ErrCache) {
				t.Fatalf("error %v does not wrap ErrCache", err)
			}
			return
		}
		defer tf.Close()
		if 4*(int64(tf.NumExamples())+tf.NumTokens()) != int64(len(b)-cacheHead-cacheFoot) {
			t.Fatalf("%d examples, %d tokens in %d bytes", tf.NumExamples(), tf.NumTokens(), len(b))
		}
		ex := fileExamples(t, tf)
		for i, e := range ex {
			for _, tok := range e.Tokens {
				if tok < 0 {
					t.Fatalf("example %d: negative token", i)
				}
			}
		}
	})
}

// A token cache build cancelled partway stops at the next record with an
// error wrapping the context's, leaves no file in the cache folder (neither
// the cache nor its temporary file), and the next build makes the whole
// cache, which the one after trusts. A cancelled context stops the first
// pass (hashing the records) before anything is tokenized.
func TestCachedTokenFileCancelled(t *testing.T) {
	dir := t.TempDir()
	var sb strings.Builder
	const n = 500
	for i := range n {
		fmt.Fprintf(&sb, "{\"text\":\"record %05d\"}\n", i)
	}
	data := writeData(t, dir, "d.jsonl", sb.String())
	cdir := filepath.Join(dir, "cache")
	key := CacheKey{Tokenizer: "t", Name: "d"}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	enc := &cancelEnc{at: 10, cancel: cancel}
	_, _, err := CachedTokenFileContext(ctx, cdir, key, enc, data, TokenizeOptions{})
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "before record 11") {
		t.Fatalf("cancelled at record 10: %v", err)
	}
	if enc.calls != 10 {
		t.Errorf("%d of %d records tokenized, want 10 (none after the cancellation)", enc.calls, n)
	}
	if left, _ := filepath.Glob(filepath.Join(cdir, "*")); len(left) != 0 {
		t.Errorf("files left: %v", left)
	}
	enc = &cancelEnc{}
	if _, _, err := CachedTokenFileContext(ctx, cdir, key, enc, data, TokenizeOptions{}); !errors.Is(err, context.Canceled) || enc.calls != 0 {
		t.Fatalf("cancelled before the first pass: %v, %d records tokenized", err, enc.calls)
	}
	for _, want := range []bool{false, true} {
		tf, hit, err := CachedTokenFileContext(context.Background(), cdir, key, &toyEnc{}, data, TokenizeOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if hit != want || tf.NumExamples() != n {
			t.Errorf("after a cancelled build: hit %v with %d examples, want hit %v with %d", hit, tf.NumExamples(), want, n)
		}
		tf.Close()
	}
}

// cancelEnc is a toy encoder that calls cancel at its at-th Encode.
type cancelEnc struct {
	toyEnc
	at     int
	cancel func()
}

func (e *cancelEnc) Encode(s string, bos bool) []int {
	ids := e.toyEnc.Encode(s, bos)
	if e.calls == e.at {
		e.cancel()
	}
	return ids
}
