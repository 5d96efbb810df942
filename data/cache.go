package data

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"os"
	"path/filepath"
	"strings"
)

// CacheKey is what, besides the records and options, decides the tokens.
type CacheKey struct {
	// Tokenizer identifies the encoder: it must change whenever Encode,
	// BOS, EOS or TokenID could give other ids (a hash of the vocabulary and
	// the tokenizer's code version, for example). Required.
	Tokenizer string
	// Name is an optional readable prefix of the cache file's name
	// ("sst2-train"); it is not part of the identity.
	Name string
}

// ErrCache marks a cache file that cannot be used (it is then rebuilt).
var ErrCache = errors.New("data: bad token cache")

const (
	cacheMagic   = "QTOKCACH"
	cacheVersion = 1
	cacheExt     = ".qtok"
)

// CachedTokenize is Tokenize with a cache: the examples are kept in
// cacheDir in a file named by the SHA-256 of the records' content (the
// parsed data, so the same records from any path share a file), kind, o and
// key.Tokenizer. A file that is missing, truncated, corrupt (CRC-32C) or of
// another version is ignored and rebuilt; files are written to a temporary
// name, synced and renamed, so a crash never leaves a partial cache under
// the real name. hit reports whether the examples came from the cache. An
// error writing the cache is returned (with the examples).
func CachedTokenize(cacheDir string, key CacheKey, enc Encoder, recs []Record, kind Kind, o TokenizeOptions) (ex []Example, hit bool, err error) {
	if key.Tokenizer == "" {
		return nil, false, errors.New("data: token cache: CacheKey.Tokenizer is empty")
	}
	sum := cacheSum(key.Tokenizer, recs, kind, o)
	path := cachePath(cacheDir, key, sum)
	if b, err := os.ReadFile(path); err == nil {
		if ex, err := readCache(b, sum); err == nil {
			return ex, true, nil
		}
	}
	ex, err = Tokenize(enc, recs, kind, o)
	if err != nil {
		return nil, false, err
	}
	if err := writeFileAtomic(path, encodeCache(sum, ex)); err != nil {
		return ex, false, fmt.Errorf("data: token cache: %w", err)
	}
	return ex, false, nil
}

// cachePath is the file of a cache sum.
func cachePath(cacheDir string, key CacheKey, sum [32]byte) string {
	name := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.' {
			return r
		}
		return '_'
	}, key.Name)
	if len(name) > 40 {
		name = name[:40]
	}
	if name != "" {
		name += "-"
	}
	return filepath.Join(cacheDir, name+hex.EncodeToString(sum[:])+cacheExt)
}

// cacheSum hashes everything that decides the examples, each string
// length-prefixed so that no two inputs share a byte stream.
func cacheSum(tok string, recs []Record, kind Kind, o TokenizeOptions) [32]byte {
	h := sha256.New()
	var buf []byte
	num := func(v uint64) { buf = binary.AppendUvarint(buf, v) }
	str := func(s string) { num(uint64(len(s))); buf = append(buf, s...) }
	flush := func() {
		if len(buf) > 1<<16 {
			h.Write(buf)
			buf = buf[:0]
		}
	}
	str(fmt.Sprintf("qtune data cache v%d", cacheVersion))
	str(tok)
	num(uint64(kind))
	num(b2u(o.AddEOS))
	num(b2u(o.NoBOS))
	str(o.ChatTemplate)
	num(uint64(len(recs)))
	for i := range recs {
		r := &recs[i]
		str(r.Text)
		str(r.Prompt)
		str(r.Completion)
		num(uint64(len(r.Messages)))
		for _, m := range r.Messages {
			str(m.Role)
			str(m.Content)
		}
		num(uint64(len(r.Choices)))
		for _, c := range r.Choices {
			str(c)
		}
		num(uint64(int64(r.Label)))
		flush()
	}
	h.Write(buf)
	var s [32]byte
	h.Sum(s[:0])
	return s
}

func b2u(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// The cache file:
//
//	"QTOKCACH" | u32 version | [32]byte sum | body | u32 CRC-32C of all before
//	body: uvarint examples | uvarint tokens in all | per example:
//	      uvarint n | uvarint runs | runs × uvarint | n × uvarint token
//
// The loss flags are run lengths, alternating false, true, false, ...
// starting with false (a first run may be 0); they sum to n. Integers are
// little-endian.
func encodeCache(sum [32]byte, ex []Example) []byte {
	dst := []byte(cacheMagic)
	dst = binary.LittleEndian.AppendUint32(dst, cacheVersion)
	dst = append(dst, sum[:]...)
	dst = binary.AppendUvarint(dst, uint64(len(ex)))
	total := 0
	for _, e := range ex {
		total += len(e.Tokens)
	}
	dst = binary.AppendUvarint(dst, uint64(total))
	var runs []uint64
	for _, e := range ex {
		runs = runs[:0]
		cur, n := false, uint64(0)
		for _, l := range e.Loss {
			if l != cur {
				runs = append(runs, n)
				cur, n = l, 0
			}
			n++
		}
		if len(e.Loss) > 0 {
			runs = append(runs, n)
		}
		dst = binary.AppendUvarint(dst, uint64(len(e.Tokens)))
		dst = binary.AppendUvarint(dst, uint64(len(runs)))
		for _, r := range runs {
			dst = binary.AppendUvarint(dst, r)
		}
		for _, t := range e.Tokens {
			dst = binary.AppendUvarint(dst, uint64(t))
		}
	}
	return appendCRC(dst)
}

// appendCRC appends the CRC-32C of b.
func appendCRC(b []byte) []byte {
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

// readCache checks and decodes a whole cache file made for sum.
func readCache(b []byte, sum [32]byte) ([]Example, error) {
	const head = len(cacheMagic) + 4 + 32
	if len(b) < head+4 {
		return nil, fmt.Errorf("%w: %d bytes", ErrCache, len(b))
	}
	body, tail := b[:len(b)-4], b[len(b)-4:]
	if crc32.Checksum(body, castagnoli) != binary.LittleEndian.Uint32(tail) {
		return nil, fmt.Errorf("%w: checksum mismatch", ErrCache)
	}
	if string(body[:8]) != cacheMagic {
		return nil, fmt.Errorf("%w: not a token cache", ErrCache)
	}
	if v := binary.LittleEndian.Uint32(body[8:12]); v != cacheVersion {
		return nil, fmt.Errorf("%w: version %d, want %d", ErrCache, v, cacheVersion)
	}
	if !bytes.Equal(body[12:head], sum[:]) {
		return nil, fmt.Errorf("%w: made for other data", ErrCache)
	}
	return parseCacheBody(body[head:])
}

// parseCacheBody decodes the examples. Every count is bounded by the bytes
// left (each thing counted takes at least one), so a hostile file cannot make
// it allocate more than about 5 bytes per byte of file for tokens and flags,
// plus the examples it actually holds.
func parseCacheBody(b []byte) ([]Example, error) {
	r := cacheReader{b: b}
	nex := r.count(len(b))
	total := r.count(len(b))
	if r.err != nil {
		return nil, r.err
	}
	ex := make([]Example, 0, min(nex, 1<<12)) // grows with what is actually read
	toks := make([]int32, total)
	loss := make([]bool, total)
	used := 0
	for i := 0; i < nex; i++ {
		n := r.count(total - used)
		nruns := r.count(n + 1)
		if r.err != nil {
			return nil, r.err
		}
		e := Example{Tokens: toks[used : used+n : used+n], Loss: loss[used : used+n : used+n]}
		at, cur := 0, false
		for k := 0; k < nruns; k++ {
			l := r.count(n - at)
			for j := at; j < at+l; j++ {
				e.Loss[j] = cur
			}
			at += l
			cur = !cur
		}
		if at != n {
			r.fail("example %d: loss runs cover %d of %d tokens", i, at, n)
		}
		for j := 0; j < n && r.err == nil; j++ {
			e.Tokens[j] = int32(r.count(math.MaxInt32))
		}
		if r.err != nil {
			return nil, r.err
		}
		used += n
		ex = append(ex, e)
	}
	if used != total || len(r.b) != 0 {
		return nil, fmt.Errorf("%w: %d of %d tokens, %d bytes left over", ErrCache, used, total, len(r.b))
	}
	return ex, nil
}

type cacheReader struct {
	b   []byte
	err error
}

func (r *cacheReader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: "+format, append([]any{ErrCache}, args...)...)
	}
}

// count reads a uvarint that must be at most limit (and at most the bytes
// left when limit is a count of things that take a byte each).
func (r *cacheReader) count(limit int) int {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail("truncated or overlong integer")
		return 0
	}
	r.b = r.b[n:]
	if limit < 0 || v > uint64(limit) {
		r.fail("value %d above its bound %d", v, limit)
		return 0
	}
	return int(v)
}

// writeFileAtomic writes b to a temporary file beside path, syncs it and
// renames it over path.
func writeFileAtomic(path string, b []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, ".tmp-*"+cacheExt)
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(b)
	if err == nil {
		err = f.Chmod(0o644)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}
