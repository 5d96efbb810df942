package checkpoint

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"math/bits"
	"unicode/utf8"

	"github.com/klauspost/compress/zstd"
)

// Format constants of the file layout described in the package doc.
const (
	Magic         = "QTCK"
	FormatVersion = 1

	flagZstd    = 1
	headerSize  = 24
	maxRank     = 8
	maxDim      = 1 << 48
	maxNameLen  = 1<<16 - 1
	dtypeF32    = 1
	minBody     = 16      // version, meta length, count, CRC
	minTensor   = 5       // name length, a 1-byte name, type, rank
	eagerBytes  = 1 << 24 // allocated up front; larger claims grow as data arrives
	chunkBytes  = 64 << 10
	zstdWindow  = 1 << 20 // window Encode writes with
	zstdMaxWind = 1 << 23 // largest window Decode accepts
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// formatError is a refusal of a file's content: it is ErrCorrupt, and kind
// (ErrVersion, ErrLimit) when set; cause is what went wrong underneath.
type formatError struct {
	msg   string
	kind  error
	cause error
}

func (e *formatError) Error() string { return e.msg }
func (e *formatError) Unwrap() error { return e.cause }
func (e *formatError) Is(target error) bool {
	return target == ErrCorrupt || (e.kind != nil && target == e.kind)
}

func corrupt(format string, args ...any) error {
	return &formatError{msg: fmt.Sprintf(format, args...)}
}

// Encode writes s in the checkpoint format (header and zstd-compressed
// body) to w. It validates s first and writes nothing when it is invalid.
func Encode(w io.Writer, s *State) error {
	if err := encode(w, s); err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	return nil
}

// Decode reads one checkpoint from r, which must end where the checkpoint
// ends. It refuses a body larger than limit decompressed bytes; with limit
// <= 0, one that inflates past MaxRatio times the compressed bytes read so
// far plus MinLimit (the default limit, as the stream's length is not
// known). The memory it allocates is bounded by the bytes it actually
// decompresses plus 16 MiB. Every refusal wraps ErrCorrupt.
func Decode(r io.Reader, limit int64) (*State, error) {
	var lim bodyLimit = fixedLimit(limit)
	if limit <= 0 {
		cr := &countReader{r: r}
		r, lim = cr, ratioLimit{cr}
	}
	s, err := decode(r, lim)
	if err != nil {
		return nil, fmt.Errorf("checkpoint: %w", err)
	}
	return s, nil
}

// elems returns the number of values of a shape, saturated at 2^63 when the
// product overflows (a shape with a zero dimension holds 0 values).
func elems(dims []uint64) uint64 {
	n := uint64(1)
	over := false
	for _, d := range dims {
		if d == 0 {
			return 0
		}
		hi, lo := bits.Mul64(n, d)
		if hi != 0 || lo > math.MaxInt64 {
			over = true
		}
		n = lo
	}
	if over {
		return 1 << 63
	}
	return n
}

// bodySize validates s and returns its body length.
func bodySize(s *State) (uint64, error) {
	if s == nil {
		return 0, fmt.Errorf("nil state: %w", ErrInvalid)
	}
	if s.Version < 0 || uint64(s.Version) > math.MaxUint32 {
		return 0, fmt.Errorf("version %d: must fit in 32 bits: %w", s.Version, ErrInvalid)
	}
	if uint64(len(s.Meta)) > math.MaxUint32 {
		return 0, fmt.Errorf("meta of %d bytes: too long: %w", len(s.Meta), ErrInvalid)
	}
	if len(s.Meta) > 0 && !json.Valid(s.Meta) {
		return 0, fmt.Errorf("meta is not valid JSON: %w", ErrInvalid)
	}
	if uint64(len(s.Tensors)) > math.MaxUint32 {
		return 0, fmt.Errorf("%d tensors: too many: %w", len(s.Tensors), ErrInvalid)
	}
	size := uint64(minBody + len(s.Meta))
	seen := make(map[string]struct{}, len(s.Tensors))
	dims := make([]uint64, 0, maxRank)
	for i, t := range s.Tensors {
		switch {
		case t.Name == "" || len(t.Name) > maxNameLen || !utf8.ValidString(t.Name):
			return 0, fmt.Errorf("tensor %d: name %.40q: must be 1..%d bytes of UTF-8: %w", i, t.Name, maxNameLen, ErrInvalid)
		case len(t.Shape) > maxRank:
			return 0, fmt.Errorf("tensor %q: rank %d: at most %d: %w", t.Name, len(t.Shape), maxRank, ErrInvalid)
		}
		if _, dup := seen[t.Name]; dup {
			return 0, fmt.Errorf("tensor %q: duplicate name: %w", t.Name, ErrInvalid)
		}
		seen[t.Name] = struct{}{}
		dims = dims[:0]
		for _, d := range t.Shape {
			if d < 0 || uint64(d) >= maxDim {
				return 0, fmt.Errorf("tensor %q: shape %v: dimensions must be in [0, 2^48): %w", t.Name, t.Shape, ErrInvalid)
			}
			dims = append(dims, uint64(d))
		}
		if n := elems(dims); n != uint64(len(t.Data)) {
			return 0, fmt.Errorf("tensor %q: shape %v holds %d values, data has %d: %w", t.Name, t.Shape, n, len(t.Data), ErrInvalid)
		}
		size += uint64(2+len(t.Name)+2+8*len(t.Shape)) + 4*uint64(len(t.Data))
	}
	return size, nil
}

// encode is Encode without the package prefix on errors.
func encode(w io.Writer, s *State) error {
	size, err := bodySize(s)
	if err != nil {
		return err
	}
	var hdr [headerSize]byte
	copy(hdr[:4], Magic)
	binary.LittleEndian.PutUint32(hdr[4:], FormatVersion)
	binary.LittleEndian.PutUint32(hdr[8:], flagZstd)
	binary.LittleEndian.PutUint64(hdr[12:], size)
	binary.LittleEndian.PutUint32(hdr[20:], crc32.Checksum(hdr[:20], castagnoli))
	if _, err := w.Write(hdr[:]); err != nil {
		return err
	}
	// A small state (a zeroth-order run's adapters) gets a window its own
	// size: the encoder's history is twice its window, and saving should
	// not be the step that sets a run's peak.
	win := zstdWindow
	for win/2 >= zstd.MinWindowSize && uint64(win/2) >= size {
		win /= 2
	}
	zw, err := zstd.NewWriter(w, zstd.WithEncoderConcurrency(1), zstd.WithWindowSize(win),
		zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithLowerEncoderMem(true))
	if err != nil {
		return err
	}
	bw := &bodyWriter{w: bufio.NewWriterSize(zw, chunkBytes), buf: make([]byte, chunkBytes)}
	bw.u32(uint32(s.Version))
	bw.u32(uint32(len(s.Meta)))
	bw.bytes(s.Meta)
	bw.u32(uint32(len(s.Tensors)))
	for _, t := range s.Tensors {
		bw.u16(uint16(len(t.Name)))
		bw.bytes([]byte(t.Name))
		bw.bytes([]byte{dtypeF32, byte(len(t.Shape))})
		for _, d := range t.Shape {
			bw.u64(uint64(d))
		}
		bw.floats(t.Data)
		if t.Written != nil {
			t.Written()
		}
	}
	if bw.err == nil && bw.n+4 != size { // a failed write stops counting: keep its error (a full disk)
		bw.err = fmt.Errorf("internal error: wrote %d body bytes, planned %d", bw.n+4, size)
	}
	var sum [4]byte
	binary.LittleEndian.PutUint32(sum[:], bw.crc)
	bw.bytes(sum[:])
	if bw.err == nil {
		bw.err = bw.w.Flush()
	}
	if err := zw.Close(); bw.err == nil {
		bw.err = err
	}
	return bw.err
}

// bodyWriter writes body bytes, keeping their CRC and the first error.
type bodyWriter struct {
	w   *bufio.Writer
	buf []byte
	crc uint32
	n   uint64
	err error
}

func (b *bodyWriter) bytes(p []byte) {
	if b.err != nil {
		return
	}
	b.crc = crc32.Update(b.crc, castagnoli, p)
	b.n += uint64(len(p))
	_, b.err = b.w.Write(p)
}

func (b *bodyWriter) u16(v uint16) { b.bytes(binary.LittleEndian.AppendUint16(b.buf[:0], v)) }
func (b *bodyWriter) u32(v uint32) { b.bytes(binary.LittleEndian.AppendUint32(b.buf[:0], v)) }
func (b *bodyWriter) u64(v uint64) { b.bytes(binary.LittleEndian.AppendUint64(b.buf[:0], v)) }

func (b *bodyWriter) floats(d []float32) {
	for len(d) > 0 && b.err == nil {
		k := min(len(d), len(b.buf)/4)
		p := b.buf[:4*k]
		for i, x := range d[:k] {
			binary.LittleEndian.PutUint32(p[4*i:], math.Float32bits(x))
		}
		b.bytes(p)
		d = d[k:]
	}
}

// bodyLimit decides how large a body may be: check refuses a declared
// size, inflated one that has grown to n bytes (nil: fine).
type bodyLimit interface {
	check(size uint64) error
	inflated(n int64) error
}

// fixedLimit is a limit the caller chose.
type fixedLimit int64

func (l fixedLimit) check(size uint64) error {
	if size > uint64(l) {
		return &formatError{kind: ErrLimit, msg: fmt.Sprintf("body of %d bytes exceeds the limit of %d bytes", size, int64(l))}
	}
	return nil
}

func (fixedLimit) inflated(int64) error { return nil }

// fileLimit is the default limit of a file of known size.
type fileLimit int64

func (l fileLimit) check(size uint64) error {
	if most := FileLimit(int64(l)); size > uint64(most) {
		return &formatError{kind: ErrLimit, msg: fmt.Sprintf("body of %d bytes declared by a file of %d bytes exceeds the limit of %d bytes (the default: %d× the file plus %d); pass a limit to accept it",
			size, int64(l), most, MaxRatio, MinLimit)}
	}
	return nil
}

func (fileLimit) inflated(int64) error { return nil }

// ratioLimit is the default limit of a stream: the body may inflate to
// FileLimit of the compressed bytes read so far.
type ratioLimit struct{ in *countReader }

func (ratioLimit) check(uint64) error { return nil }

func (l ratioLimit) inflated(n int64) error {
	if most := FileLimit(l.in.n); n > most {
		return &formatError{kind: ErrLimit, msg: fmt.Sprintf("body inflates past %d bytes from %d compressed bytes: it exceeds the limit (the default: %d× the compressed bytes plus %d); pass a limit to accept it",
			most, l.in.n, MaxRatio, MinLimit)}
	}
	return nil
}

// countReader counts the bytes read through it.
type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// decode is Decode without the package prefix on errors.
func decode(r io.Reader, limit bodyLimit) (*State, error) {
	var hdr [headerSize]byte
	if n, err := io.ReadFull(r, hdr[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, &formatError{msg: fmt.Sprintf("truncated header: %d of %d bytes", n, headerSize), cause: err}
		}
		return nil, err
	}
	if string(hdr[:4]) != Magic {
		return nil, corrupt("bad magic %q: not a qtune checkpoint", hdr[:4])
	}
	version := binary.LittleEndian.Uint32(hdr[4:])
	stored, sum := binary.LittleEndian.Uint32(hdr[20:]), crc32.Checksum(hdr[:20], castagnoli)
	if version > FormatVersion {
		msg := fmt.Sprintf("format version %d is newer than this build reads (%d)", version, FormatVersion)
		if stored != sum {
			msg += ", or the header is damaged"
		}
		return nil, &formatError{kind: ErrVersion, msg: msg}
	}
	if stored != sum {
		return nil, corrupt("header checksum mismatch: stored %08x, computed %08x", stored, sum)
	}
	if version == 0 {
		return nil, corrupt("format version 0 does not exist")
	}
	if flags := binary.LittleEndian.Uint32(hdr[8:]); flags != flagZstd {
		return nil, corrupt("unknown flags %#x", flags)
	}
	size := binary.LittleEndian.Uint64(hdr[12:])
	if size < minBody {
		return nil, corrupt("body length %d is below the minimum %d", size, minBody)
	}
	if err := limit.check(size); err != nil {
		return nil, err
	}
	zr, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
		zstd.WithDecoderMaxMemory(zstdMaxWind), zstd.WithDecoderMaxWindow(zstdMaxWind))
	if err != nil {
		return nil, err
	}
	defer zr.Close()
	return readBody(zr, size, limit)
}

// readBody reads a body of size bytes (its CRC included) from r, which must
// end where the body ends.
func readBody(r io.Reader, size uint64, limit bodyLimit) (*State, error) {
	br := &bodyReader{r: r, left: int64(size) - 4, size: int64(size) - 4, limit: limit, buf: make([]byte, chunkBytes)}
	s, err := br.state()
	if err != nil {
		return nil, err
	}
	var tail [4]byte
	if _, err := io.ReadFull(r, tail[:]); err != nil {
		return nil, br.readErr("body checksum", err)
	}
	if stored := binary.LittleEndian.Uint32(tail[:]); stored != br.crc {
		return nil, corrupt("body checksum mismatch: stored %08x, computed %08x", stored, br.crc)
	}
	var one [1]byte
	switch n, err := io.ReadFull(r, one[:]); {
	case n > 0:
		return nil, corrupt("body is longer than the %d bytes the header says", size)
	case !errors.Is(err, io.EOF):
		return nil, br.readErr("end of stream", err)
	}
	return s, nil
}

// bodyReader reads body bytes, keeping their CRC and checking every claim
// against the bytes left.
type bodyReader struct {
	r     io.Reader
	left  int64 // body bytes not yet read, excluding the trailing CRC
	size  int64 // body bytes, excluding the trailing CRC
	limit bodyLimit
	crc   uint32
	buf   []byte
}

func (b *bodyReader) readErr(what string, err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return &formatError{msg: fmt.Sprintf("truncated in %s", what), cause: err}
	}
	return &formatError{msg: fmt.Sprintf("compressed body, reading %s: %v", what, err), cause: err}
}

// need checks that n more bytes are left for what.
func (b *bodyReader) need(what string, n uint64) error {
	if n > uint64(b.left) {
		return corrupt("%s needs %d bytes, %d left in the body", what, n, b.left)
	}
	return nil
}

// read fills p from the body.
func (b *bodyReader) read(what string, p []byte) error {
	if err := b.need(what, uint64(len(p))); err != nil {
		return err
	}
	if _, err := io.ReadFull(b.r, p); err != nil {
		return b.readErr(what, err)
	}
	b.crc = crc32.Update(b.crc, castagnoli, p)
	b.left -= int64(len(p))
	return b.limit.inflated(b.size - b.left)
}

func (b *bodyReader) u8(what string) (uint8, error) {
	err := b.read(what, b.buf[:1])
	return b.buf[0], err
}

func (b *bodyReader) u16(what string) (uint16, error) {
	err := b.read(what, b.buf[:2])
	return binary.LittleEndian.Uint16(b.buf), err
}

func (b *bodyReader) u32(what string) (uint32, error) {
	err := b.read(what, b.buf[:4])
	return binary.LittleEndian.Uint32(b.buf), err
}

func (b *bodyReader) u64(what string) (uint64, error) {
	err := b.read(what, b.buf[:8])
	return binary.LittleEndian.Uint64(b.buf), err
}

// bytes reads n bytes, growing the result as they arrive when n is large.
func (b *bodyReader) bytes(what string, n uint64) ([]byte, error) {
	if err := b.need(what, n); err != nil {
		return nil, err
	}
	if n > math.MaxInt {
		return nil, corrupt("%s: %d bytes: too many", what, n)
	}
	out := make([]byte, min(n, eagerBytes))
	for done := uint64(0); done < n; {
		if done == uint64(len(out)) {
			out = grow(out, min(n, 2*done))
		}
		k := min(uint64(len(out))-done, chunkBytes)
		if err := b.read(what, out[done:done+k]); err != nil {
			return nil, err
		}
		done += k
	}
	return out, nil
}

// floats reads n float32 values, growing the result as they arrive when n
// is large.
func (b *bodyReader) floats(what string, n uint64) ([]float32, error) {
	if n > math.MaxInt/4 {
		return nil, corrupt("%s: %d values: too many", what, n)
	}
	if err := b.need(what, 4*n); err != nil {
		return nil, err
	}
	out := make([]float32, min(n, eagerBytes/4))
	for done := uint64(0); done < n; {
		if done == uint64(len(out)) {
			out = grow(out, min(n, 2*done))
		}
		k := min(uint64(len(out))-done, chunkBytes/4)
		p := b.buf[:4*k]
		if err := b.read(what, p); err != nil {
			return nil, err
		}
		dst := out[done : done+k]
		for i := range dst {
			dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(p[4*i:]))
		}
		done += k
	}
	return out, nil
}

// grow returns s copied into a new slice of length n.
func grow[T any](s []T, n uint64) []T {
	out := make([]T, n)
	copy(out, s)
	return out
}

// state reads the body up to its CRC.
func (b *bodyReader) state() (*State, error) {
	version, err := b.u32("state version")
	if err != nil {
		return nil, err
	}
	if uint64(version) > math.MaxInt {
		return nil, corrupt("state version %d does not fit an int", version)
	}
	s := &State{Version: int(version)}
	metaLen, err := b.u32("meta length")
	if err != nil {
		return nil, err
	}
	if metaLen > 0 {
		if s.Meta, err = b.bytes("meta", uint64(metaLen)); err != nil {
			return nil, err
		}
		if !json.Valid(s.Meta) {
			return nil, corrupt("meta is not valid JSON")
		}
	}
	count, err := b.u32("tensor count")
	if err != nil {
		return nil, err
	}
	if err := b.need(fmt.Sprintf("%d tensors", count), uint64(count)*minTensor); err != nil {
		return nil, err
	}
	s.Tensors = make([]Tensor, 0, min(count, 1024))
	seen := make(map[string]struct{}, min(count, 1024))
	var dims [maxRank]uint64
	for i := range count {
		nameLen, err := b.u16(fmt.Sprintf("tensor %d name length", i))
		if err != nil {
			return nil, err
		}
		if nameLen == 0 {
			return nil, corrupt("tensor %d: empty name", i)
		}
		name, err := b.bytes(fmt.Sprintf("tensor %d name", i), uint64(nameLen))
		if err != nil {
			return nil, err
		}
		if !utf8.Valid(name) {
			return nil, corrupt("tensor %d: name %.40q is not UTF-8", i, name)
		}
		t := Tensor{Name: string(name)}
		if _, dup := seen[t.Name]; dup {
			return nil, corrupt("tensor %q: duplicate name", t.Name)
		}
		seen[t.Name] = struct{}{}
		dtype, err := b.u8(fmt.Sprintf("tensor %q type", t.Name))
		if err != nil {
			return nil, err
		}
		if dtype != dtypeF32 {
			return nil, corrupt("tensor %q: unknown element type %d", t.Name, dtype)
		}
		rank, err := b.u8(fmt.Sprintf("tensor %q rank", t.Name))
		if err != nil {
			return nil, err
		}
		if rank > maxRank {
			return nil, corrupt("tensor %q: rank %d exceeds %d", t.Name, rank, maxRank)
		}
		if rank > 0 {
			t.Shape = make([]int, rank)
		}
		for j := range rank {
			d, err := b.u64(fmt.Sprintf("tensor %q dimension %d", t.Name, j))
			if err != nil {
				return nil, err
			}
			if d >= maxDim || d > math.MaxInt {
				return nil, corrupt("tensor %q: dimension %d is %d, not below 2^48", t.Name, j, d)
			}
			dims[j] = d
			t.Shape[j] = int(d)
		}
		n := elems(dims[:rank])
		if t.Data, err = b.floats(fmt.Sprintf("tensor %q data", t.Name), n); err != nil {
			return nil, err
		}
		s.Tensors = append(s.Tensors, t)
	}
	if b.left != 0 {
		return nil, corrupt("%d unused bytes at the end of the body", b.left)
	}
	return s, nil
}
