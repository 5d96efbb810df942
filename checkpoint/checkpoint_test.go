package checkpoint

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
)

func sampleState() *State {
	nan := float32(math.NaN())
	return &State{
		Version: 3,
		Meta:    json.RawMessage(`{"step":120,"data_pos":4096,"rng":[1,2,3],"lr":0.0002}`),
		Tensors: []Tensor{
			{Name: "layers.0.attn.q.lora_a", Shape: []int{4, 2}, Data: []float32{1, -2, 3.5, 0, 1e-30, -0, 7, 8}},
			{Name: "adamw.m/layers.0.attn.q.lora_a", Shape: []int{8}, Data: []float32{nan, float32(math.Inf(1)), float32(math.Inf(-1)), math.MaxFloat32, math.SmallestNonzeroFloat32, 0, 0, 1}},
			{Name: "adamw.step/layers.0.attn.q.lora_a", Shape: []int{2}, Data: []float32{0, 120}},
			{Name: "scalar", Shape: nil, Data: []float32{42}},
			{Name: "empty", Shape: []int{0, 5}, Data: []float32{}},
			{Name: "ünïcode ✓", Shape: []int{1, 1, 1, 1, 1, 1, 1, 1}, Data: []float32{-1}},
		},
	}
}

func encodeBytes(t testing.TB, s *State) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := Encode(&buf, s); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// sameState compares bit patterns, so NaN payloads and -0 must survive.
func sameState(t *testing.T, got, want *State) {
	t.Helper()
	if got.Version != want.Version || !bytes.Equal(got.Meta, want.Meta) || len(got.Tensors) != len(want.Tensors) {
		t.Fatalf("got version %d meta %s %d tensors, want %d %s %d",
			got.Version, got.Meta, len(got.Tensors), want.Version, want.Meta, len(want.Tensors))
	}
	for i, w := range want.Tensors {
		g := got.Tensors[i]
		if g.Name != w.Name || !slices.Equal(g.Shape, w.Shape) || len(g.Data) != len(w.Data) {
			t.Fatalf("tensor %d: got %q %v (%d values), want %q %v (%d values)",
				i, g.Name, g.Shape, len(g.Data), w.Name, w.Shape, len(w.Data))
		}
		for j := range w.Data {
			if math.Float32bits(g.Data[j]) != math.Float32bits(w.Data[j]) {
				t.Fatalf("tensor %q[%d] = %v, want %v", w.Name, j, g.Data[j], w.Data[j])
			}
		}
	}
}

func TestRoundTrip(t *testing.T) {
	many := &State{Meta: json.RawMessage(`[]`)}
	for i := range 3000 {
		many.Tensors = append(many.Tensors, Tensor{
			Name:  "t" + strings.Repeat("x", i%50) + string(rune('a'+i%26)) + string(rune('0'+i%10)) + strconv.Itoa(i),
			Shape: []int{i % 7}, Data: make([]float32, i%7)})
		for j := range many.Tensors[i].Data {
			many.Tensors[i].Data[j] = float32(i*7+j) * 0.25
		}
	}
	for name, s := range map[string]*State{
		"empty":        {},
		"meta only":    {Version: 1, Meta: json.RawMessage(`{"a":"b"}`)},
		"sample":       sampleState(),
		"many tensors": many,
	} {
		t.Run(name, func(t *testing.T) {
			b := encodeBytes(t, s)
			got, err := Decode(bytes.NewReader(b), 0)
			if err != nil {
				t.Fatal(err)
			}
			sameState(t, got, s)
			// Encoding is deterministic.
			if !bytes.Equal(encodeBytes(t, got), b) {
				t.Fatal("re-encoding gives different bytes")
			}
		})
	}
}

func TestLargeTensor(t *testing.T) {
	const n = 50 << 20 / 4 // 50 MB of float32
	d := make([]float32, n)
	x := uint32(1)
	for i := range d {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		d[i] = float32(int32(x)) * 1e-9
	}
	s := &State{Meta: json.RawMessage(`{}`), Tensors: []Tensor{{Name: "big", Shape: []int{1024, n / 1024}, Data: d}}}
	path := filepath.Join(t.TempDir(), "big.qtck")
	start := time.Now()
	if err := Save(path, s); err != nil {
		t.Fatal(err)
	}
	saved := time.Since(start)
	start = time.Now()
	got, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	loaded := time.Since(start)
	fi, _ := os.Stat(path)
	t.Logf("50 MB: save %v, load %v, file %.1f MB", saved, loaded, float64(fi.Size())/1e6)
	sameState(t, got, s)
	// A body claimed larger than the limit is refused before decoding.
	if _, err := LoadLimit(path, 1<<20); !errors.Is(err, ErrLimit) || !errors.Is(err, ErrCorrupt) {
		t.Fatalf("LoadLimit 1 MiB: %v, want ErrLimit", err)
	}
}

func TestCorruptByteAnywhere(t *testing.T) {
	b := encodeBytes(t, sampleState())
	for off := range len(b) {
		for _, x := range []byte{0x01, 0x80, 0xff} {
			c := slices.Clone(b)
			c[off] ^= x
			s, err := Decode(bytes.NewReader(c), 1<<20)
			if err == nil {
				// zstd may ignore a few bits (e.g. reserved ones); then
				// the content must still be exactly the original.
				sameState(t, s, sampleState())
				continue
			}
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("flip %#x at %d: %v does not wrap ErrCorrupt", x, off, err)
			}
			if strings.Contains(err.Error(), "\n") || !strings.HasPrefix(err.Error(), "checkpoint: ") {
				t.Fatalf("flip at %d: error %q is not one prefixed line", off, err)
			}
		}
	}
}

func TestTruncated(t *testing.T) {
	b := encodeBytes(t, sampleState())
	for n := range len(b) {
		_, err := Decode(bytes.NewReader(b[:n]), 1<<20)
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("truncated to %d of %d bytes: %v", n, len(b), err)
		}
	}
	// Trailing garbage after the stream is refused too.
	if _, err := Decode(bytes.NewReader(append(slices.Clone(b), 1, 2, 3, 4, 5, 6, 7, 8)), 1<<20); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("trailing bytes: %v", err)
	}
}

// rawFile builds a file from a header and an uncompressed body, so tests can
// write bodies that Encode never would. The body CRC is appended.
func rawFile(version, flags uint32, body []byte, sizeDelta int64) []byte {
	body = binary.LittleEndian.AppendUint32(body, crc32.Checksum(body, castagnoli))
	hdr := []byte(Magic)
	hdr = binary.LittleEndian.AppendUint32(hdr, version)
	hdr = binary.LittleEndian.AppendUint32(hdr, flags)
	hdr = binary.LittleEndian.AppendUint64(hdr, uint64(int64(len(body))+sizeDelta))
	hdr = binary.LittleEndian.AppendUint32(hdr, crc32.Checksum(hdr, castagnoli))
	var out bytes.Buffer
	out.Write(hdr)
	zw, _ := zstd.NewWriter(&out)
	zw.Write(body)
	zw.Close()
	return out.Bytes()
}

// body helpers build an uncompressed body by hand.
type bodyBuf struct{ b []byte }

func (w *bodyBuf) u8(v uint8) *bodyBuf   { w.b = append(w.b, v); return w }
func (w *bodyBuf) u16(v uint16) *bodyBuf { w.b = binary.LittleEndian.AppendUint16(w.b, v); return w }
func (w *bodyBuf) u32(v uint32) *bodyBuf { w.b = binary.LittleEndian.AppendUint32(w.b, v); return w }
func (w *bodyBuf) u64(v uint64) *bodyBuf { w.b = binary.LittleEndian.AppendUint64(w.b, v); return w }
func (w *bodyBuf) str(s string) *bodyBuf { w.b = append(w.b, s...); return w }

// tensorBody is a body with version 0, no meta and the given tensor records.
func tensorBody(count uint32, records ...func(*bodyBuf)) []byte {
	w := (&bodyBuf{}).u32(0).u32(0).u32(count)
	for _, r := range records {
		r(w)
	}
	return w.b
}

func TestRefusals(t *testing.T) {
	good := encodeBytes(t, sampleState())
	okBody := tensorBody(1, func(w *bodyBuf) { w.u16(1).str("a").u8(1).u8(1).u64(2).u32(0).u32(0) })
	if _, err := Decode(bytes.NewReader(rawFile(1, 1, okBody, 0)), 0); err != nil {
		t.Fatalf("hand-built body: %v", err)
	}
	newer := slices.Clone(good)
	binary.LittleEndian.PutUint32(newer[4:], 2)
	binary.LittleEndian.PutUint32(newer[20:], crc32.Checksum(newer[:20], castagnoli))

	for _, c := range []struct {
		name, file string
		data       []byte
		want       error
		msg        string
	}{
		{name: "empty file", data: nil, msg: "truncated header"},
		{name: "bad magic", data: append([]byte("GGUF"), good[4:]...), msg: "bad magic"},
		{name: "newer version", data: newer, want: ErrVersion, msg: "format version 2 is newer"},
		{name: "version 0", data: rawFile(0, 1, okBody, 0), msg: "version 0"},
		{name: "unknown flags", data: rawFile(1, 3, okBody, 0), msg: "unknown flags"},
		{name: "uncompressed flag", data: rawFile(1, 0, okBody, 0), msg: "unknown flags"},
		{name: "body too short", data: rawFile(1, 1, []byte{1, 2, 3}, 0), msg: "below the minimum"},
		{name: "body length too big", data: rawFile(1, 1, okBody, 1), msg: "1 unused bytes"},
		{name: "body length too small", data: rawFile(1, 1, okBody, -1), msg: "data needs 8 bytes, 7 left"},
		{name: "absurd body length", data: rawFile(1, 1, okBody, 1<<60), want: ErrLimit, msg: "exceeds the limit"},
		{name: "body checksum", data: func() []byte {
			b := slices.Clone(okBody)
			b = binary.LittleEndian.AppendUint32(b, 12345)
			f := rawFile(1, 1, b, -4)
			return f
		}(), msg: "body checksum mismatch"},
		{name: "huge meta", data: rawFile(1, 1, (&bodyBuf{}).u32(0).u32(1<<31).u32(0).b, 0), msg: "meta needs 2147483648 bytes"},
		{name: "meta not json", data: rawFile(1, 1, (&bodyBuf{}).u32(0).u32(3).str("{{{").u32(0).b, 0), msg: "not valid JSON"},
		{name: "huge count", data: rawFile(1, 1, tensorBody(1<<30), 0), msg: "1073741824 tensors needs"},
		{name: "empty name", data: rawFile(1, 1, tensorBody(1, func(w *bodyBuf) { w.u16(0).u8(1).u8(1).u8(0).u8(0) }), 0), msg: "empty name"},
		{name: "long name", data: rawFile(1, 1, tensorBody(1, func(w *bodyBuf) { w.u16(60000).u8(1).u8(0).u8(0) }), 0), msg: "name needs 60000 bytes"},
		{name: "bad utf8", data: rawFile(1, 1, tensorBody(1, func(w *bodyBuf) { w.u16(2).str("\xff\xfe").u8(1).u8(0).u32(0) }), 0), msg: "not UTF-8"},
		{name: "duplicate", data: rawFile(1, 1, tensorBody(2,
			func(w *bodyBuf) { w.u16(1).str("a").u8(1).u8(0).u32(0) },
			func(w *bodyBuf) { w.u16(1).str("a").u8(1).u8(0).u32(0) }), 0), msg: `tensor "a": duplicate name`},
		{name: "dtype", data: rawFile(1, 1, tensorBody(1, func(w *bodyBuf) { w.u16(1).str("a").u8(2).u8(0).u32(0) }), 0), msg: "unknown element type 2"},
		{name: "rank", data: rawFile(1, 1, tensorBody(1, func(w *bodyBuf) { w.u16(1).str("a").u8(1).u8(9) }), 0), msg: "rank 9"},
		{name: "huge dim", data: rawFile(1, 1, tensorBody(1, func(w *bodyBuf) { w.u16(1).str("a").u8(1).u8(1).u64(1 << 50) }), 0), msg: "not below 2^48"},
		{name: "huge tensor", data: rawFile(1, 1, tensorBody(1, func(w *bodyBuf) {
			w.u16(1).str("a").u8(1).u8(2).u64(1 << 40).u64(1 << 40).u32(0)
		}), 0), msg: "too many"},
		{name: "tensor past body", data: rawFile(1, 1, tensorBody(1, func(w *bodyBuf) {
			w.u16(1).str("a").u8(1).u8(1).u64(1000).u32(0)
		}), 0), msg: "data needs 4000 bytes"},
		{name: "unused bytes", data: rawFile(1, 1, append(slices.Clone(okBody), 0, 0, 0, 0, 0, 0), 0), msg: "unused bytes"},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state.qtck")
			if err := os.WriteFile(path, c.data, 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := Load(path)
			if err == nil {
				t.Fatal("loaded")
			}
			if !errors.Is(err, ErrCorrupt) || (c.want != nil && !errors.Is(err, c.want)) {
				t.Fatalf("%v: want ErrCorrupt and %v", err, c.want)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "checkpoint: "+path+": ") || !strings.Contains(msg, c.msg) || strings.Contains(msg, "\n") {
				t.Fatalf("error %q: want one line naming %s and containing %q", msg, path, c.msg)
			}
		})
	}
}

func TestEncodeRefusesInvalid(t *testing.T) {
	for name, s := range map[string]*State{
		"nil":            nil,
		"negative ver":   {Version: -1},
		"huge ver":       {Version: 1 << 40},
		"meta not json":  {Meta: json.RawMessage(`{`)},
		"empty name":     {Tensors: []Tensor{{Data: []float32{}, Shape: []int{0}}}},
		"duplicate":      {Tensors: []Tensor{{Name: "a", Data: []float32{1}}, {Name: "a", Data: []float32{1}}}},
		"shape mismatch": {Tensors: []Tensor{{Name: "a", Shape: []int{2, 3}, Data: make([]float32, 5)}}},
		"no shape":       {Tensors: []Tensor{{Name: "a", Data: make([]float32, 5)}}},
		"negative dim":   {Tensors: []Tensor{{Name: "a", Shape: []int{-1, -1}, Data: make([]float32, 1)}}},
		"rank 9":         {Tensors: []Tensor{{Name: "a", Shape: []int{1, 1, 1, 1, 1, 1, 1, 1, 1}, Data: make([]float32, 1)}}},
		"bad utf8":       {Tensors: []Tensor{{Name: "\xff", Data: make([]float32, 1)}}},
		"overflow":       {Tensors: []Tensor{{Name: "a", Shape: []int{1 << 40, 1 << 40}, Data: make([]float32, 0)}}},
	} {
		var buf bytes.Buffer
		if err := Encode(&buf, s); !errors.Is(err, ErrInvalid) || !strings.HasPrefix(err.Error(), "checkpoint: ") {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
		if buf.Len() != 0 {
			t.Errorf("%s: wrote %d bytes", name, buf.Len())
		}
		path := filepath.Join(t.TempDir(), "x.qtck")
		if err := Save(path, s); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Save: %v", name, err)
		}
		if _, err := os.Stat(path + ".tmp"); !os.IsNotExist(err) {
			t.Errorf("%s: Save left a tmp file", name)
		}
	}
}

func TestSaveAtomicAfterCrash(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.qtck")
	old := sampleState()
	if err := Save(path, old); err != nil {
		t.Fatal(err)
	}
	next := sampleState()
	next.Meta = json.RawMessage(`{"step":240}`)
	next.Tensors[0].Data[0] = 99
	whole := encodeBytes(t, next)
	// A crash mid-save leaves a partial tmp file at every possible length;
	// the previous checkpoint must still load unchanged.
	for _, n := range []int{0, 1, headerSize, len(whole) / 2, len(whole) - 1, len(whole)} {
		if err := os.WriteFile(path+".tmp", whole[:n], 0o644); err != nil {
			t.Fatal(err)
		}
		got, err := Load(path)
		if err != nil {
			t.Fatalf("after a crash leaving %d tmp bytes: %v", n, err)
		}
		sameState(t, got, old)
	}
	// The next save replaces the stale tmp file and lands whole.
	if err := Save(path, next); err != nil {
		t.Fatal(err)
	}
	got, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	sameState(t, got, next)
	if _, err := os.Stat(path + ".tmp"); !os.IsNotExist(err) {
		t.Fatal("tmp file left after a successful save")
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("folder holds %d entries, want 1", len(entries))
	}
}

func TestSaveFailureKeepsOld(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.qtck")
	if err := Save(path, sampleState()); err != nil {
		t.Fatal(err)
	}
	// The tmp path is a folder: the save fails before touching path.
	if err := os.Mkdir(path+".tmp", 0o755); err != nil {
		t.Fatal(err)
	}
	next := sampleState()
	next.Version = 9
	if err := Save(path, next); err == nil || !strings.HasPrefix(err.Error(), "checkpoint: save "+path) {
		t.Fatalf("save over a blocked tmp path: %v", err)
	}
	got, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	sameState(t, got, sampleState())
	if _, err := Load(filepath.Join(dir, "missing")); err == nil || errors.Is(err, ErrCorrupt) || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v, want os.ErrNotExist and not ErrCorrupt", err)
	}
}

// errWriter fails after n bytes.
type errWriter struct{ n int }

func (w *errWriter) Write(p []byte) (int, error) {
	if len(p) > w.n {
		k := w.n
		w.n = 0
		return k, io.ErrShortWrite
	}
	w.n -= len(p)
	return len(p), nil
}

func TestEncodeWriteError(t *testing.T) {
	for _, n := range []int{0, 10, headerSize, headerSize + 20} {
		if err := Encode(&errWriter{n: n}, sampleState()); !errors.Is(err, io.ErrShortWrite) {
			t.Errorf("writer failing after %d bytes: %v", n, err)
		}
	}
}

func FuzzDecode(f *testing.F) {
	for _, s := range []*State{{}, sampleState(), {Version: 7, Meta: json.RawMessage(`"x"`),
		Tensors: []Tensor{{Name: "w", Shape: []int{3}, Data: []float32{1, 2, 3}}}}} {
		b := encodeBytes(f, s)
		f.Add(b)
		f.Add(b[:len(b)/2])
	}
	f.Add(rawFile(1, 1, tensorBody(1, func(w *bodyBuf) { w.u16(1).str("a").u8(1).u8(1).u64(2).u32(0).u32(0) }), 0))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Decode(bytes.NewReader(data), 1<<20)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		// Whatever decodes re-encodes and decodes to the same state.
		var buf bytes.Buffer
		if err := Encode(&buf, s); err != nil {
			t.Fatalf("decoded state does not encode: %v", err)
		}
		s2, err := Decode(&buf, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		sameState(t, s2, s)
	})
}

// FuzzDecodeBody fuzzes the body parser directly: random bytes rarely get
// through zstd and the header, so the body layout gets its own target.
func FuzzDecodeBody(f *testing.F) {
	f.Add(tensorBody(0))
	f.Add(tensorBody(1, func(w *bodyBuf) { w.u16(1).str("a").u8(1).u8(2).u64(2).u64(1).u32(0).u32(0) }))
	f.Add((&bodyBuf{}).u32(5).u32(2).str("{}").u32(2).u16(1).str("a").u8(1).u8(0).u32(7).u16(1).str("b").u8(1).u8(0).u32(7).b)
	f.Fuzz(func(t *testing.T, body []byte) {
		body = binary.LittleEndian.AppendUint32(body, crc32.Checksum(body, castagnoli))
		for _, delta := range []int{0, 3} {
			if len(body) < minBody+delta {
				continue
			}
			s, err := readBody(bytes.NewReader(body), uint64(len(body)-delta), fixedLimit(1<<30))
			if err != nil {
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("error %v does not wrap ErrCorrupt", err)
				}
				continue
			}
			if delta != 0 {
				t.Fatal("a body longer than its size was accepted")
			}
			var buf bytes.Buffer
			if err := Encode(&buf, s); err != nil {
				t.Fatalf("decoded state does not encode: %v", err)
			}
		}
	})
}

// fullDisk accepts limit bytes, then fails as a full disk does.
type fullDisk struct{ limit int }

func (d *fullDisk) Write(p []byte) (int, error) {
	if len(p) > d.limit {
		n := d.limit
		d.limit = 0
		return n, syscall.ENOSPC
	}
	d.limit -= len(p)
	return len(p), nil
}

// A save that runs out of disk says so ("no space left on device"), at
// whatever point the disk fills, not "internal error: wrote N body bytes".
func TestEncodeFullDisk(t *testing.T) {
	data := make([]float32, 1<<18)
	x := uint32(1)
	for i := range data { // incompressible: the encoder writes as it goes
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		data[i] = math.Float32frombits(x&0x807fffff | 0x3f000000)
	}
	s := &State{Version: 1, Meta: []byte(`{"step":3}`), Tensors: []Tensor{{Name: "a", Shape: []int{len(data)}, Data: data}}}
	var whole bytes.Buffer
	if err := Encode(&whole, s); err != nil {
		t.Fatal(err)
	}
	for _, limit := range []int{0, 10, 100, whole.Len() / 4, whole.Len() / 2, whole.Len() - 1} {
		err := Encode(&fullDisk{limit}, s)
		if !errors.Is(err, syscall.ENOSPC) || strings.Contains(err.Error(), "internal error") {
			t.Errorf("disk full after %d bytes: %v", limit, err)
		}
	}
}

// A small file cannot make the default limit inflate gigabytes: one that
// declares a body far beyond what its bytes can hold is refused from its
// header (it used to pass a fixed 16 GiB default and be inflated until its
// data ran out), one that truly inflates that far (a zstd run of zeros, about
// 9000:1) is refused too, by Load before inflating it and by Decode of a
// stream as it inflates; a caller who expects such a state passes a limit.
func TestDefaultLimitFollowsFileSize(t *testing.T) {
	dir := t.TempDir()
	// 300 bytes declaring a tensor of 1 GiB in an 8 GiB body.
	body := tensorBody(1, func(w *bodyBuf) { w.u16(1).str("a").u8(1).u8(1).u64(1 << 28).str(strings.Repeat("x", 256)) })
	lie := rawFile(1, 1, body, 8<<30)
	p := filepath.Join(dir, "lie.qtck")
	if err := os.WriteFile(p, lie, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Load(p)
	if !errors.Is(err, ErrLimit) || !strings.Contains(err.Error(), fmt.Sprintf("declared by a file of %d bytes", len(lie))) {
		t.Fatalf("a %d-byte file declaring 8 GiB: %v", len(lie), err)
	}

	// 8 MiB of zeros compress to about a KB: past 64× that plus 1 MiB.
	zeros := &State{Version: 1, Tensors: []Tensor{{Name: "z", Shape: []int{2 << 20}, Data: make([]float32, 2<<20)}}}
	zp := filepath.Join(dir, "zeros.qtck")
	if err := Save(zp, zeros); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(zp)
	if FileLimit(st.Size()) >= 8<<20 {
		t.Fatalf("%d bytes of compressed zeros: default limit %d, the test needs it below 8 MiB", st.Size(), FileLimit(st.Size()))
	}
	if _, err := Load(zp); !errors.Is(err, ErrLimit) {
		t.Fatalf("Load of 8 MiB inflated from %d bytes: %v", st.Size(), err)
	}
	b, _ := os.ReadFile(zp)
	if _, err := Decode(bytes.NewReader(b), 0); !errors.Is(err, ErrLimit) || !strings.Contains(err.Error(), "inflates") {
		t.Fatalf("Decode of 8 MiB inflated from %d bytes: %v", len(b), err)
	}
	for _, load := range []func() (*State, error){
		func() (*State, error) { return LoadLimit(zp, 16<<20) },
		func() (*State, error) { return Decode(bytes.NewReader(b), 16<<20) },
	} {
		got, err := load()
		if err != nil {
			t.Fatalf("with a limit of 16 MiB: %v", err)
		}
		sameState(t, got, zeros)
	}
}
