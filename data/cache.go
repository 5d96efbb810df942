package data

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/qtune/qtune/internal/fsx"
	"hash"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
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

// LossFlag is the bit of a packed token (Source.ReadTokens, the token
// cache) that marks a target; the other 31 bits are the id.
const LossFlag = 1 << 31

const (
	cacheMagic   = "QTOKCACH"
	cacheVersion = 2
	cacheExt     = ".qtok"
	cacheHead    = 8 + 4 + 32 // magic, version, sum
	cacheFoot    = 8 + 8 + 4  // examples, tokens, CRC
	// cacheChunk is the fixed buffer of streaming reads and writes.
	cacheChunk = 64 << 10
	// markEvery: a TokenFile keeps the token offset of every markEvery-th
	// example and adds the lengths in between.
	markEvery = 64
)

// CachedTokenFile returns the tokens of the data file at path (see Scan),
// tokenized as Tokenize would with o, from a cache file in cacheDir named by
// the SHA-256 of the records' content (the parsed data, so the same records
// from any path share a file), their kind, o and key.Tokenizer.
//
// Nothing is held but one record at a time. A first pass parses and hashes
// the records. A file that is missing, truncated, corrupt (CRC-32C), of
// another version or made for other records is ignored; a second pass then
// tokenizes the records one by one into a temporary file that is synced and
// renamed over the cache's name, so a crash never leaves a partial cache
// under the real name. If the records of the second pass differ from the
// first (the file changed meanwhile), that is an error and nothing is
// written. hit reports whether the tokens came from the cache. The caller
// closes the TokenFile.
func CachedTokenFile(cacheDir string, key CacheKey, enc Encoder, path string, o TokenizeOptions) (tf *TokenFile, hit bool, err error) {
	return CachedTokenFileContext(context.Background(), cacheDir, key, enc, path, o)
}

// CachedTokenFileContext is CachedTokenFile stopping when ctx is done: both
// passes check it before each record, and a build cut short returns an
// error wrapping ctx.Err() and removes its temporary file, so the cache
// holds nothing a later run would trust (and that run builds it anew).
func CachedTokenFileContext(ctx context.Context, cacheDir string, key CacheKey, enc Encoder, path string, o TokenizeOptions) (tf *TokenFile, hit bool, err error) {
	if key.Tokenizer == "" {
		return nil, false, errors.New("data: token cache: CacheKey.Tokenizer is empty")
	}
	h := newRecordHasher(key.Tokenizer, o)
	kind, _, err := ScanMax(path, o.MaxRecord, func(r Record) error {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("data: %s: reading stopped at record %d: %w", path, h.n+1, err)
		}
		h.add(&r)
		return nil
	})
	if err != nil {
		return nil, false, err
	}
	sum := h.sum(kind)
	cpath := cachePath(cacheDir, key, sum)
	if tf, err := openTokenFile(cpath, &sum); err == nil {
		return tf, true, nil
	}
	if err := writeTokenFile(ctx, cpath, sum, key.Tokenizer, enc, path, kind, o); err != nil {
		return nil, false, err
	}
	if tf, err = openTokenFile(cpath, &sum); err != nil {
		return nil, false, fmt.Errorf("data: token cache: %s as written: %w", cpath, err)
	}
	return tf, false, nil
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

// recordHasher hashes everything that decides the examples, streaming:
// the tokenizer and options, then each record, then the kind and the
// number of records. Every string is length-prefixed so that no two inputs
// share a byte stream.
type recordHasher struct {
	h   hash.Hash
	buf []byte
	n   uint64
}

// sumLayout names the layout of the hashed stream (not the file format: a
// new file format with the same identity rebuilds files in place).
const sumLayout = "qtune data cache records v2"

func newRecordHasher(tok string, o TokenizeOptions) *recordHasher {
	r := &recordHasher{h: sha256.New()}
	r.str(sumLayout)
	r.str(tok)
	r.num(b2u(o.AddEOS))
	r.num(b2u(o.NoBOS))
	r.str(o.ChatTemplate)
	return r
}

func (r *recordHasher) num(v uint64) { r.buf = binary.AppendUvarint(r.buf, v) }
func (r *recordHasher) str(s string) { r.num(uint64(len(s))); r.buf = append(r.buf, s...) }

func (r *recordHasher) add(rec *Record) {
	r.str(rec.Text)
	r.str(rec.Prompt)
	r.str(rec.Completion)
	r.num(uint64(len(rec.Messages)))
	for _, m := range rec.Messages {
		r.str(m.Role)
		r.str(m.Content)
	}
	r.num(uint64(len(rec.Choices)))
	for _, c := range rec.Choices {
		r.str(c)
	}
	r.num(uint64(int64(rec.Label)))
	r.n++
	if len(r.buf) > cacheChunk {
		r.h.Write(r.buf)
		r.buf = r.buf[:0]
	}
}

func (r *recordHasher) sum(kind Kind) [32]byte {
	r.num(uint64(kind))
	r.num(r.n)
	r.h.Write(r.buf)
	r.buf = r.buf[:0]
	var s [32]byte
	r.h.Sum(s[:0])
	return s
}

// cacheSum is the sum of records held in memory.
func cacheSum(tok string, recs []Record, kind Kind, o TokenizeOptions) [32]byte {
	h := newRecordHasher(tok, o)
	for i := range recs {
		h.add(&recs[i])
	}
	return h.sum(kind)
}

func b2u(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// The cache file (integers little-endian):
//
//	"QTOKCACH" | u32 version | [32]byte sum
//	tokens: u32 each, id | loss<<31, the examples one after another
//	index:  u32 length of each example
//	footer: u64 examples | u64 tokens | u32 CRC-32C of everything before
//
// The sizes decide the file's length exactly, so they are checked against it
// before anything is allocated, and the index (read when the file is opened)
// gives every example's place.

// writeTokenFile tokenizes the records of the data file at path into the
// cache file cpath, record by record through a buffered writer, and fails
// if the records do not hash to sum (the data file changed since the first
// pass). It checks ctx before each record.
func writeTokenFile(ctx context.Context, cpath string, sum [32]byte, tok string, enc Encoder, path string, kind Kind, o TokenizeOptions) error {
	var dataErr error // of the data file, returned as it is
	err := writeFileAtomic(cpath, func(f io.Writer) error {
		crc := crc32.New(castagnoli)
		w := bufio.NewWriterSize(io.MultiWriter(f, crc), cacheChunk)
		var word [8]byte
		u32 := func(v uint32) { binary.LittleEndian.PutUint32(word[:], v); w.Write(word[:4]) }
		u64 := func(v uint64) { binary.LittleEndian.PutUint64(word[:], v); w.Write(word[:]) }
		w.WriteString(cacheMagic)
		u32(cacheVersion)
		w.Write(sum[:])
		h := newRecordHasher(tok, o)
		chk := &idCheck{Encoder: enc}
		var lens []uint32 // (N)
		var total uint64
		k, _, err := ScanMax(path, o.MaxRecord, func(r Record) error {
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("data: %s: tokenizing stopped before record %d: %w", path, len(lens)+1, err)
			}
			h.add(&r)
			ex, err := tokenizeRecord(chk, &r, kind, o)
			if err == nil {
				err = chk.err()
			}
			if err == nil && uint64(len(ex.Tokens)) > 1<<32-1 {
				err = fmt.Errorf("%d tokens in one example", len(ex.Tokens))
			}
			if err != nil {
				return &Error{File: path, Line: r.Line, Record: len(lens) + 1, Err: err}
			}
			for j, t := range ex.Tokens {
				v := uint32(t)
				if ex.Loss[j] {
					v |= LossFlag
				}
				u32(v)
			}
			lens = append(lens, uint32(len(ex.Tokens)))
			total += uint64(len(ex.Tokens))
			return nil
		})
		if err == nil && (k != kind || h.sum(k) != sum) {
			err = fmt.Errorf("data: %s changed while it was tokenized (its records differ between two readings); run again once it is stable", path)
		}
		if err != nil {
			dataErr = err
			return err
		}
		for _, l := range lens {
			u32(l)
		}
		u64(uint64(len(lens)))
		u64(total)
		if err := w.Flush(); err != nil {
			return err
		}
		binary.LittleEndian.PutUint32(word[:], crc.Sum32())
		_, err = f.Write(word[:4])
		return err
	})
	if dataErr != nil {
		return dataErr
	}
	if err != nil {
		return fmt.Errorf("data: token cache: %w", err)
	}
	return nil
}

// idCheck passes an Encoder through and remembers the first id that does
// not fit an example's int32 and the cache's 31 bits. It always offers
// TokenID, failing the lookup when the encoder has none, which chat
// rendering treats as an encoder without lookups.
type idCheck struct {
	Encoder
	bad    int
	hasBad bool
}

func (c *idCheck) check(id int) {
	if (id < 0 || id >= LossFlag) && !c.hasBad {
		c.bad, c.hasBad = id, true
	}
}

func (c *idCheck) Encode(s string, addBOS bool) []int {
	ids := c.Encoder.Encode(s, addBOS)
	for _, id := range ids {
		c.check(id)
	}
	return ids
}

// BOS and EOS may be negative (none); only a large id is wrong.
func (c *idCheck) BOS() int { id := c.Encoder.BOS(); c.check(max(id, 0)); return id }
func (c *idCheck) EOS() int { id := c.Encoder.EOS(); c.check(max(id, 0)); return id }

func (c *idCheck) TokenID(text string) (int, bool) {
	ti, ok := c.Encoder.(TokenIDer)
	if !ok {
		return 0, false
	}
	id, ok := ti.TokenID(text)
	if ok {
		c.check(max(id, 0))
	}
	return id, ok
}

// err reports a bad id seen since the last call, and forgets it.
func (c *idCheck) err() error {
	if !c.hasBad {
		return nil
	}
	c.hasBad = false
	return fmt.Errorf("%w: token id %d outside 0..2^31-1", ErrData, c.bad)
}

// TokenFile is a token cache file opened for random access. It keeps the
// file open and in memory only the examples' lengths (4 bytes each, and the
// token offset of every 64th example); ReadTokens reads with ReadAt into the
// caller's buffer, so tokens cost no memory until they are read (and no
// mapping: mapped pages would count as resident). Its methods are safe for
// concurrent use.
type TokenFile struct {
	f      *os.File
	sum    [32]byte
	tokens int64
	lens   []uint32 // (N) tokens of each example
	marks  []int64  // (N/markEvery+1) token offset of example markEvery·j

	mu  sync.Mutex
	buf []byte // ReadTokens' scratch, under mu
}

// OpenTokenFile opens a token cache file and checks it whole: the sizes in
// its footer against the file's length, then (streaming, through a fixed
// buffer) its CRC-32C and its index. A file that fails wraps ErrCache.
func OpenTokenFile(path string) (*TokenFile, error) {
	return openTokenFile(path, nil)
}

// openTokenFile is OpenTokenFile that also refuses a file made for another
// sum (before reading it whole).
func openTokenFile(path string, want *[32]byte) (_ *TokenFile, err error) {
	f, err := fsx.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCache, err)
	}
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCache, err)
	}
	size := st.Size()
	if size < int64(cacheHead+cacheFoot) {
		return nil, fmt.Errorf("%w: %s: %d bytes", ErrCache, path, size)
	}
	var head [cacheHead]byte
	var foot [cacheFoot]byte
	if _, err := f.ReadAt(head[:], 0); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrCache, path, err)
	}
	if _, err := f.ReadAt(foot[:], size-cacheFoot); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrCache, path, err)
	}
	if string(head[:8]) != cacheMagic {
		return nil, fmt.Errorf("%w: %s: not a token cache", ErrCache, path)
	}
	if v := binary.LittleEndian.Uint32(head[8:12]); v != cacheVersion {
		return nil, fmt.Errorf("%w: %s: version %d, want %d", ErrCache, path, v, cacheVersion)
	}
	t := &TokenFile{f: f}
	copy(t.sum[:], head[12:])
	if want != nil && t.sum != *want {
		return nil, fmt.Errorf("%w: %s: made for other data", ErrCache, path)
	}
	nex, ntok := binary.LittleEndian.Uint64(foot[0:]), binary.LittleEndian.Uint64(foot[8:])
	body := uint64(size) - cacheHead - cacheFoot
	if nex > body/4 || ntok > body/4 || 4*(nex+ntok) != body {
		return nil, fmt.Errorf("%w: %s: %d examples and %d tokens in %d bytes", ErrCache, path, nex, ntok, size)
	}
	// Every size is now bounded by the file's; read it through one buffer.
	buf := make([]byte, min(size, cacheChunk))
	crc := uint32(0)
	for at := int64(0); at < size-4; {
		n := min(int64(len(buf)), size-4-at)
		if _, err := f.ReadAt(buf[:n], at); err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrCache, path, err)
		}
		crc = crc32.Update(crc, castagnoli, buf[:n])
		at += n
	}
	if crc != binary.LittleEndian.Uint32(foot[16:]) {
		return nil, fmt.Errorf("%w: %s: checksum mismatch", ErrCache, path)
	}
	t.tokens = int64(ntok)
	t.lens = make([]uint32, nex)
	t.marks = make([]int64, nex/markEvery+1)
	sum := int64(0)
	for i, at := 0, int64(cacheHead+4*ntok); i < int(nex); {
		n := min(len(buf)/4, int(nex)-i)
		if _, err := f.ReadAt(buf[:4*n], at); err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrCache, path, err)
		}
		for j := 0; j < n; j, i = j+1, i+1 {
			if i%markEvery == 0 {
				t.marks[i/markEvery] = sum
			}
			t.lens[i] = binary.LittleEndian.Uint32(buf[4*j:])
			sum += int64(t.lens[i])
		}
		at += 4 * int64(n)
	}
	if sum != t.tokens {
		return nil, fmt.Errorf("%w: %s: examples hold %d tokens, footer says %d", ErrCache, path, sum, t.tokens)
	}
	return t, nil
}

// NumExamples is the number of examples.
func (t *TokenFile) NumExamples() int { return len(t.lens) }

// NumTokens is the number of tokens of all examples.
func (t *TokenFile) NumTokens() int64 { return t.tokens }

// ExampleLen is the number of tokens of example i.
func (t *TokenFile) ExampleLen(i int) int { return int(t.lens[i]) }

// Sum is the sum of the records the file was made for.
func (t *TokenFile) Sum() [32]byte { return t.sum }

// MemBytes is what the open file holds in memory (its index and the
// largest read scratch), for memory plans.
func (t *TokenFile) MemBytes() int64 {
	return 4*int64(len(t.lens)) + 8*int64(len(t.marks)) + cacheChunk
}

// ReadTokens fills dst with tokens off, off+1, ... of example i, each
// id | loss<<31 (LossFlag). A read that fails (the file was truncated under
// it) wraps ErrCache.
func (t *TokenFile) ReadTokens(i, off int, dst []uint32) error {
	if i < 0 || i >= len(t.lens) || off < 0 || off+len(dst) > int(t.lens[i]) {
		return fmt.Errorf("data: token file: tokens %d..%d of example %d of %d: out of range", off, off+len(dst), i, len(t.lens))
	}
	at := t.marks[i/markEvery]
	for j := i - i%markEvery; j < i; j++ {
		at += int64(t.lens[j])
	}
	pos := int64(cacheHead) + 4*(at+int64(off))
	t.mu.Lock()
	defer t.mu.Unlock()
	for len(dst) > 0 {
		n := min(len(dst), cacheChunk/4)
		if cap(t.buf) < 4*n {
			t.buf = make([]byte, 4*min(len(dst), cacheChunk/4))
		}
		b := t.buf[:4*n]
		if _, err := t.f.ReadAt(b, pos); err != nil {
			return fmt.Errorf("%w: %s: %w", ErrCache, t.f.Name(), err)
		}
		for k := range n {
			dst[k] = binary.LittleEndian.Uint32(b[4*k:])
		}
		dst, pos = dst[n:], pos+int64(4*n)
	}
	return nil
}

// Example reads example i whole (for tests and small sets; batches read
// through ReadTokens).
func (t *TokenFile) Example(i int) (Example, error) {
	w := make([]uint32, t.ExampleLen(i))
	if err := t.ReadTokens(i, 0, w); err != nil {
		return Example{}, err
	}
	ex := Example{Tokens: make([]int32, len(w)), Loss: make([]bool, len(w))}
	for k, v := range w {
		ex.Tokens[k], ex.Loss[k] = int32(v&^LossFlag), v&LossFlag != 0
	}
	return ex, nil
}

// Close closes the file.
func (t *TokenFile) Close() error { return t.f.Close() }

// writeFileAtomic writes path through a temporary file beside it: write
// fills it, then it is synced and renamed over path. On any error the
// temporary file is removed and path is untouched.
func writeFileAtomic(path string, write func(w io.Writer) error) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, ".tmp-*"+cacheExt)
	if err != nil {
		return err
	}
	tmp := f.Name()
	err = write(f)
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

// EncodeSpecial, EOG and Token pass through to a SpecialEncoder (see
// specialOf); ids are checked as Encode's are.
func (c *idCheck) EncodeSpecial(s string, addBOS bool) []int {
	ids := c.Encoder.(SpecialEncoder).EncodeSpecial(s, addBOS)
	for _, id := range ids {
		c.check(id)
	}
	return ids
}

func (c *idCheck) EOG() []int { return c.Encoder.(SpecialEncoder).EOG() }

func (c *idCheck) Token(id int) string { return c.Encoder.(SpecialEncoder).Token(id) }

// specialOf returns enc as a SpecialEncoder when it (or the encoder an
// idCheck wraps) is one.
func specialOf(enc Encoder) (SpecialEncoder, bool) {
	if c, ok := enc.(*idCheck); ok {
		if _, ok := c.Encoder.(SpecialEncoder); ok {
			return c, true
		}
		return nil, false
	}
	se, ok := enc.(SpecialEncoder)
	return se, ok
}
