package data

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

var cacheRecs = []Record{
	{Prompt: "a", Completion: "bc"},
	{Prompt: "long prompt here", Completion: " and its answer"},
	{Prompt: "", Completion: ""},
}

func TestCacheHitMissCorrupt(t *testing.T) {
	dir := t.TempDir()
	enc := &toyEnc{}
	key := CacheKey{Tokenizer: "toy-v1", Name: "unit/test"}
	o := TokenizeOptions{AddEOS: true}
	want, err := Tokenize(&toyEnc{}, cacheRecs, Completion, o)
	if err != nil {
		t.Fatal(err)
	}

	got, hit, err := CachedTokenize(dir, key, enc, cacheRecs, Completion, o)
	if err != nil || hit || !reflect.DeepEqual(got, want) {
		t.Fatalf("first call: hit %v err %v", hit, err)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*"))
	if len(files) != 1 || !strings.HasPrefix(filepath.Base(files[0]), "unit_test-") || !strings.HasSuffix(files[0], ".qtok") {
		t.Fatalf("cache folder holds %v", files)
	}
	path := files[0]

	calls := enc.calls
	got, hit, err = CachedTokenize(dir, key, enc, cacheRecs, Completion, o)
	if err != nil || !hit || !reflect.DeepEqual(got, want) || enc.calls != calls {
		t.Fatalf("second call: hit %v err %v, %d encodes", hit, err, enc.calls-calls)
	}

	// Anything that changes the tokens changes the file.
	for name, c := range map[string]struct {
		key  CacheKey
		recs []Record
		o    TokenizeOptions
	}{
		"tokenizer": {CacheKey{Tokenizer: "toy-v2", Name: key.Name}, cacheRecs, o},
		"options":   {key, cacheRecs, TokenizeOptions{}},
		"records":   {key, append([]Record{{Prompt: "x", Completion: "y"}}, cacheRecs...), o},
	} {
		if _, hit, err := CachedTokenize(dir, c.key, enc, c.recs, Completion, c.o); hit || err != nil {
			t.Errorf("%s changed: hit %v err %v", name, hit, err)
		}
	}
	// The name is not part of the identity.
	if cachePath(dir, CacheKey{Tokenizer: "t"}, [32]byte{}) == cachePath(dir, CacheKey{Tokenizer: "t", Name: "n"}, [32]byte{}) {
		t.Error("name not in the file name")
	}

	good, _ := os.ReadFile(path)
	for name, bad := range map[string][]byte{
		"empty":      {},
		"truncated":  good[:len(good)-5],
		"bit flip":   flip(good, len(good)/2),
		"bad crc":    flip(good, len(good)-1),
		"other sum":  fixCRC(flip(good, 20)),
		"bad magic":  fixCRC(flip(good, 0)),
		"version":    fixCRC(flip(good, 8)),
		"bad count":  fixCRC(flip(good, 8+4+32)),
		"extra byte": fixCRC(append(append([]byte(nil), good[:len(good)-4]...), 0, 0, 0, 0, 0)),
	} {
		if err := os.WriteFile(path, bad, 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := readCache(bad, cacheSum(key.Tokenizer, cacheRecs, Completion, o)); !errors.Is(err, ErrCache) {
			t.Errorf("%s: readCache accepted it (%v)", name, err)
		}
		got, hit, err := CachedTokenize(dir, key, enc, cacheRecs, Completion, o)
		if err != nil || hit || !reflect.DeepEqual(got, want) {
			t.Errorf("%s: hit %v err %v", name, hit, err)
		}
		if b, _ := os.ReadFile(path); !reflect.DeepEqual(b, good) {
			t.Errorf("%s: cache not rebuilt", name)
		}
	}
	if tmp, _ := filepath.Glob(filepath.Join(dir, ".tmp-*")); len(tmp) != 0 {
		t.Errorf("temporary files left: %v", tmp)
	}

	if _, _, err := CachedTokenize(dir, CacheKey{}, enc, cacheRecs, Completion, o); err == nil {
		t.Error("empty tokenizer identity accepted")
	}
	// An unwritable cache folder is reported, with the examples.
	blocker := filepath.Join(dir, "file")
	os.WriteFile(blocker, nil, 0o644)
	got, _, err = CachedTokenize(filepath.Join(blocker, "sub"), key, enc, cacheRecs, Completion, o)
	if err == nil || !reflect.DeepEqual(got, want) {
		t.Errorf("unwritable folder: %v", err)
	}
}

func flip(b []byte, i int) []byte {
	c := append([]byte(nil), b...)
	c[i] ^= 0x55
	return c
}

// fixCRC recomputes the trailer so that the parser behind the checksum is
// what rejects the file.
func fixCRC(b []byte) []byte {
	body := b[:len(b)-4]
	return appendCRC(append([]byte(nil), body...))
}

func TestCacheRoundTrip(t *testing.T) {
	sum := [32]byte{1, 2, 3}
	for _, exs := range [][]Example{
		nil,
		{{}},
		{ex([]int{0}, "1"), ex([]int{1, 2, 3}, "000")},
		manyExamples(50),
		{ex([]int{1 << 30, 128, 127, 16384}, "0110")},
	} {
		b := encodeCache(sum, exs)
		got, err := readCache(b, sum)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(exs) {
			t.Fatalf("%d examples back of %d", len(got), len(exs))
		}
		for i := range exs {
			if !sameExample(got[i], exs[i]) {
				t.Errorf("example %d: %+v, want %+v", i, got[i], exs[i])
			}
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

func FuzzReadCache(f *testing.F) {
	sum := [32]byte{9}
	f.Add(encodeCache(sum, []Example{ex([]int{1, 300, 2}, "011")}))
	f.Add(encodeCache(sum, manyExamples(5)))
	f.Add(encodeCache(sum, nil))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, parse := range []func([]byte) ([]Example, error){
			func(b []byte) ([]Example, error) { return readCache(b, sum) },
			parseCacheBody, // behind the checksum, where the fuzzer can reach
		} {
			exs, err := parse(b)
			if err != nil {
				if !errors.Is(err, ErrCache) {
					t.Fatalf("error %v does not wrap ErrCache", err)
				}
				continue
			}
			total := 0
			for _, e := range exs {
				if len(e.Loss) != len(e.Tokens) {
					t.Fatal("mask length differs from tokens")
				}
				for _, tok := range e.Tokens {
					if tok < 0 {
						t.Fatal("negative token")
					}
				}
				total += len(e.Tokens)
			}
			if total > len(b) {
				t.Fatalf("%d tokens from %d bytes", total, len(b))
			}
			back, err := readCache(encodeCache(sum, exs), sum)
			if err != nil || len(back) != len(exs) {
				t.Fatalf("re-encoded cache does not read back: %v", err)
			}
			for i := range exs {
				if !sameExample(back[i], exs[i]) {
					t.Fatalf("example %d changed in a round trip", i)
				}
			}
		}
	})
}
