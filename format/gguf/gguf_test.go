package gguf

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/qtune/qtune/quant"
)

// allValuesKV has one pair of every value type, nested arrays included.
func allValuesKV() []KV {
	return []KV{
		KVOf("general.architecture", "llama"),
		KVOf("t.u8", uint8(200)),
		KVOf("t.i8", int8(-100)),
		KVOf("t.u16", uint16(60000)),
		KVOf("t.i16", int16(-30000)),
		KVOf("t.u32", uint32(4000000000)),
		KVOf("t.i32", int32(-2000000000)),
		KVOf("t.f32", float32(1e-5)),
		KVOf("t.bool", true),
		KVOf("t.str", "héllo\x00world"),
		KVOf("t.u64", uint64(math.MaxUint64)),
		KVOf("t.i64", int64(math.MinInt64)),
		KVOf("t.f64", math.Pi),
		KVOf("a.u8", []uint8{1, 2, 255}),
		KVOf("a.i8", []int8{-1, 0, 1}),
		KVOf("a.u16", []uint16{1, 65535}),
		KVOf("a.i16", []int16{-32768, 7}),
		KVOf("a.u32", []uint32{7, 1 << 31}),
		KVOf("a.i32", []int32{-5, 3, 6}),
		KVOf("a.f32", []float32{0.5, float32(math.Inf(-1))}),
		KVOf("a.bool", []bool{true, false, true}),
		KVOf("a.str", []string{"", "a", "▁the"}),
		KVOf("a.u64", []uint64{1, math.MaxUint64}),
		KVOf("a.i64", []int64{-1, math.MaxInt64}),
		KVOf("a.f64", []float64{2.5, -0.0}),
		KVOf("a.empty", []int32{}),
		KVOf("a.nested", []Array{
			{TypeString, []string{"x", "y"}},
			{TypeArray, []Array{{TypeFloat32, []float32{1, 2}}, {TypeBool, []bool{}}}},
			{TypeUint8, []uint8{}},
		}),
	}
}

func seq(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + 3)
	}
	return b
}

func testTensors() []WriteTensor {
	return []WriteTensor{
		BytesTensor("f32.vec", quant.F32, []int64{5}, seq(20)),
		BytesTensor("q4_0.mat", quant.Q4_0, []int64{64, 3}, seq(6*18)),
		BytesTensor("q8_0.mat", quant.Q8_0, []int64{32, 2, 1}, seq(2*34)),
		BytesTensor("f16.4d", quant.F16, []int64{3, 2, 2, 1}, seq(24)),
		BytesTensor("scalar", quant.F32, nil, seq(4)),
		BytesTensor("q6_k", quant.Q6_K, []int64{256}, seq(210)),
	}
}

func write(t testing.TB, version uint32, kv []KV, ts []WriteTensor, align int64) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := Write(&buf, version, kv, ts, align); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestRoundTrip(t *testing.T) {
	for _, c := range []struct {
		version    uint32
		align      int64
		wantKVAdds int
	}{{3, 0, 0}, {2, 0, 0}, {3, 32, 0}, {3, 64, 1}, {3, 8, 1}} {
		kv := allValuesKV()
		ts := testTensors()
		b := write(t, c.version, kv, ts, c.align)
		f, err := Parse(b)
		if err != nil {
			t.Fatalf("align %d: %v", c.align, err)
		}
		wantAlign := c.align
		if wantAlign == 0 {
			wantAlign = 32
		}
		if f.Version != c.version || f.Alignment != wantAlign || len(f.KV) != len(kv)+c.wantKVAdds {
			t.Fatalf("version %d alignment %d, %d KV", f.Version, f.Alignment, len(f.KV))
		}
		if !reflect.DeepEqual(f.KV[:len(kv)], kv) {
			for i := range kv {
				if !reflect.DeepEqual(f.KV[i], kv[i]) {
					t.Errorf("KV %d: got %#v, want %#v", i, f.KV[i], kv[i])
				}
			}
		}
		if int64(len(b))%wantAlign != 0 || f.DataOffset%wantAlign != 0 {
			t.Errorf("file length %d / data offset %d not aligned to %d", len(b), f.DataOffset, wantAlign)
		}
		for i, w := range ts {
			ti := f.Tensors[i]
			shape := w.Shape
			if shape == nil {
				shape = []int64{}
			}
			if ti.Name != w.Name || ti.Type != w.Type || !reflect.DeepEqual(ti.Shape, shape) || ti.Size != w.Size {
				t.Errorf("tensor %d: %+v", i, ti)
			}
			if ti.Offset%wantAlign != 0 {
				t.Errorf("%s: offset %d not aligned", ti.Name, ti.Offset)
			}
			var want bytes.Buffer
			w.Write(&want)
			if !bytes.Equal(f.Data(b, ti), want.Bytes()) {
				t.Errorf("%s: data differs", ti.Name)
			}
		}
		// Accessors.
		if v, ok := f.Uint("t.u8"); !ok || v != 200 {
			t.Error("Uint u8")
		}
		if _, ok := f.Uint("t.i8"); ok {
			t.Error("Uint of a negative value")
		}
		if v, ok := f.Int("t.i64"); !ok || v != math.MinInt64 {
			t.Error("Int i64")
		}
		if _, ok := f.Int("t.u64"); ok {
			t.Error("Int of MaxUint64")
		}
		if v, ok := f.Uint("t.bool"); !ok || v != 1 {
			t.Error("Uint bool")
		}
		if v, ok := f.Float("t.i32"); !ok || v != -2000000000 {
			t.Error("Float i32")
		}
		if v, ok := f.Float("t.f32"); !ok || float32(v) != 1e-5 {
			t.Error("Float f32")
		}
		if _, ok := f.Float("t.str"); ok {
			t.Error("Float of a string")
		}
		if v, ok := f.Int32s("a.u8"); !ok || !reflect.DeepEqual(v, []int32{1, 2, 255}) {
			t.Error("Int32s u8")
		}
		if _, ok := f.Int32s("a.u32"); ok {
			t.Error("Int32s of u32 above MaxInt32")
		}
		if v, ok := f.Float32s("a.f64"); !ok || v[0] != 2.5 {
			t.Error("Float32s f64")
		}
		if _, ok := f.Strings("a.i32"); ok {
			t.Error("Strings of an i32 array")
		}
		if _, ok := f.Tensor("missing"); ok {
			t.Error("missing tensor found")
		}
		// Writing the parsed file again reproduces it.
		var ws []WriteTensor
		for _, ti := range f.Tensors {
			ws = append(ws, BytesTensor(ti.Name, ti.Type, ti.Shape, f.Data(b, ti)))
		}
		if !bytes.Equal(write(t, f.Version, f.KV, ws, 0), b) {
			t.Errorf("align %d: second write differs", c.align)
		}
	}
}

// TestWriteStreams writes a 16 MiB tensor in 64 KiB pieces, as a synthetic
// model generator would, and checks the layout without keeping the file.
func TestWriteStreams(t *testing.T) {
	const n = 4 << 20 // F32 elements
	chunk := make([]byte, 64<<10)
	big := WriteTensor{Name: "big", Type: quant.F32, Shape: []int64{1024, n / 1024}, Size: 4 * n, Write: func(w io.Writer) error {
		for k := 0; k < 4*n/len(chunk); k++ {
			if _, err := w.Write(chunk); err != nil {
				return err
			}
		}
		return nil
	}}
	small := BytesTensor("small", quant.F32, []int64{3}, seq(12))
	var head bytes.Buffer
	cw := &countWriter{w: &limitedBuffer{buf: &head, max: 4096}}
	if err := Write(cw, 3, []KV{KVOf("general.architecture", "llama")}, []WriteTensor{small, big}, 0); err != nil {
		t.Fatal(err)
	}
	// Header: 24 + KV (8+20 key, 4 type, 8+5 value) + small (8+5, 4, 8, 4, 8)
	// + big (8+3, 4, 16, 4, 8) = 149, aligned to 160; then 12 bytes padded to 32.
	const dataOff = 160
	_, err := Parse(head.Bytes()[:dataOff])
	if err == nil || !strings.Contains(err.Error(), `tensor "small": data past end of file (offset 160, size 12, file 160)`) {
		t.Errorf("header only: %v", err)
	}
	if want := int64(dataOff + 32 + 4*n); cw.n != want {
		t.Errorf("wrote %d bytes, want %d", cw.n, want)
	}
}

// limitedBuffer keeps the first max bytes and counts the rest.
type limitedBuffer struct {
	buf *bytes.Buffer
	max int
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := l.max - l.buf.Len(); room > 0 {
		l.buf.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}

type failWriter struct{ n int }

func (w *failWriter) Write(p []byte) (int, error) {
	if w.n -= len(p); w.n < 0 {
		return 0, errors.New("disk full")
	}
	return len(p), nil
}

func TestWriteErrors(t *testing.T) {
	ok := testTensors()
	cases := map[string]struct {
		kv    []KV
		ts    []WriteTensor
		align int64
		ver   uint32
	}{
		"version 1":          {nil, nil, 0, 1},
		"value type":         {[]KV{{"k", TypeUint32, int32(1)}}, nil, 0, 3},
		"unknown value type": {[]KV{{"k", 13, 1}}, nil, 0, 3},
		"KVOf unsupported":   {[]KV{KVOf("k", 1)}, nil, 0, 3},
		"array mismatch":     {[]KV{{"k", TypeArray, Array{TypeInt32, []float32{1}}}}, nil, 0, 3},
		"duplicate key":      {[]KV{KVOf("k", "a"), KVOf("k", "b")}, nil, 0, 3},
		"alignment conflict": {[]KV{KVOf(KeyAlignment, uint32(64))}, nil, 32, 3},
		"alignment 24":       {nil, nil, 24, 3},
		"alignment kv 0":     {[]KV{KVOf(KeyAlignment, uint32(0))}, nil, 0, 3},
		"alignment kv u64":   {[]KV{KVOf(KeyAlignment, uint64(32))}, nil, 0, 3},
		"duplicate tensor":   {nil, []WriteTensor{ok[0], ok[0]}, 0, 3},
		"size":               {nil, []WriteTensor{BytesTensor("x", quant.F32, []int64{5}, seq(16))}, 0, 3},
		"row block":          {nil, []WriteTensor{BytesTensor("x", quant.Q4_0, []int64{16, 2}, seq(18))}, 0, 3},
		"unknown type":       {nil, []WriteTensor{BytesTensor("x", 77, []int64{4}, seq(4))}, 0, 3},
		"zero dim":           {nil, []WriteTensor{BytesTensor("x", quant.F32, []int64{0}, nil)}, 0, 3},
		"5 dims":             {nil, []WriteTensor{BytesTensor("x", quant.F32, []int64{1, 1, 1, 1, 1}, seq(4))}, 0, 3},
		"short write": {nil, []WriteTensor{{Name: "x", Type: quant.F32, Shape: []int64{2}, Size: 8,
			Write: func(w io.Writer) error { _, err := w.Write(seq(4)); return err }}}, 0, 3},
		"long name": {nil, []WriteTensor{BytesTensor(strings.Repeat("n", 65), quant.F32, []int64{1}, seq(4))}, 0, 3},
	}
	for name, c := range cases {
		var buf bytes.Buffer
		err := Write(&buf, c.ver, c.kv, c.ts, c.align)
		if err == nil {
			t.Errorf("%s: no error", name)
			continue
		}
		if !errors.Is(err, ErrInvalid) || !strings.HasPrefix(err.Error(), "gguf: ") {
			t.Errorf("%s: %v", name, err)
		}
	}
	// Errors from the destination and from a tensor's Write are returned.
	if err := Write(&failWriter{n: 1000}, 3, allValuesKV(), ok, 0); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Errorf("failing writer: %v", err)
	}
	boom := errors.New("boom")
	bad := WriteTensor{Name: "x", Type: quant.F32, Shape: []int64{1}, Size: 4, Write: func(io.Writer) error { return boom }}
	if err := Write(io.Discard, 3, nil, []WriteTensor{bad}, 0); !errors.Is(err, boom) {
		t.Errorf("tensor Write error: %v", err)
	}
}

// raw builds GGUF bytes field by field, so tests can write what Write refuses.
type raw struct{ bytes.Buffer }

func (r *raw) u32(v uint32) *raw { binary.Write(r, binary.LittleEndian, v); return r }
func (r *raw) u64(v uint64) *raw { binary.Write(r, binary.LittleEndian, v); return r }
func (r *raw) str(s string) *raw { r.u64(uint64(len(s))); r.WriteString(s); return r }
func (r *raw) header(version uint32, nt, nkv uint64) *raw {
	r.WriteString("GGUF")
	return r.u32(version).u64(nt).u64(nkv)
}
func (r *raw) tensor(name string, dims []uint64, typ uint32, off uint64) *raw {
	r.str(name).u32(uint32(len(dims)))
	for _, d := range dims {
		r.u64(d)
	}
	return r.u32(typ).u64(off)
}

// padTo pads to a multiple of a, then adds n data bytes.
func (r *raw) padData(a, n int) []byte {
	for r.Len()%a != 0 {
		r.WriteByte(0)
	}
	r.Write(make([]byte, n))
	return r.Bytes()
}

func TestDamaged(t *testing.T) {
	good := write(t, 3, allValuesKV(), testTensors(), 0)
	f := mustParse(t, good)

	cases := map[string]struct {
		data []byte
		want string
	}{}
	add := func(name string, b []byte, want string) {
		cases[name] = struct {
			data []byte
			want string
		}{b, want}
	}
	mut := func(off int, patch ...byte) []byte {
		b := bytes.Clone(good)
		copy(b[off:], patch)
		return b
	}
	add("empty", nil, "unexpected EOF")
	add("magic", mut(0, 'G', 'G', 'U', 'X'), "bad magic")
	add("version 1", mut(4, 1, 0, 0, 0), "unsupported version 1")
	add("version 99", mut(4, 99, 0, 0, 0), "unsupported version 99")
	add("big-endian", mut(4, 0, 0, 0, 3), "big-endian")
	add("huge tensor count", mut(8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f), "tensor count")
	add("huge kv count", mut(16, 0, 0, 0, 0, 0, 0, 0, 1), "metadata count")
	add("huge key length", mut(24, 0, 0, 0, 0, 0, 0, 0, 1), "string length")
	add("key past end", mut(24, 0, 0, 0, 1, 0, 0, 0, 0), "unexpected EOF")

	t1 := (&raw{}).header(3, 1, 0).tensor("w", []uint64{4}, 0, 0).padData(32, 16)
	if _, err := Parse(t1); err != nil {
		t.Fatalf("minimal file: %v", err)
	}
	add("tensor past end", (&raw{}).header(3, 1, 0).tensor("w", []uint64{8}, 0, 0).padData(32, 16), `tensor "w": data past end of file (offset 64, size 32, file 80)`)
	add("tensor offset past end", (&raw{}).header(3, 1, 0).tensor("w", []uint64{1}, 0, 1<<40).padData(32, 16), `tensor "w": data past end of file`)
	add("tensor offset huge", (&raw{}).header(3, 1, 0).tensor("w", []uint64{1}, 0, math.MaxUint64-31).padData(32, 16), `tensor "w": data past end of file`)
	add("misaligned", (&raw{}).header(3, 1, 0).tensor("w", []uint64{1}, 0, 4).padData(32, 16), "not a multiple of the alignment 32")
	add("overlap", (&raw{}).header(3, 2, 0).tensor("a", []uint64{16}, 0, 0).tensor("b", []uint64{4}, 0, 32).padData(32, 128), `tensor "b": data overlaps tensor "a"`)
	add("unknown type", (&raw{}).header(3, 1, 0).tensor("w", []uint64{4}, 77, 0).padData(32, 16), `tensor "w": unknown tensor type 77`)
	add("IQ2_XS", (&raw{}).header(3, 1, 0).tensor("w", []uint64{256}, 17, 0).padData(32, 74), `tensor "w": quant: tensor type IQ2_XS is not supported (supported: F32, `)
	add("IQ1_M", (&raw{}).header(3, 1, 0).tensor("w", []uint64{256}, 29, 0).padData(32, 56), `tensor "w": quant: tensor type IQ1_M is not supported`)
	add("IQ3_S", (&raw{}).header(3, 1, 0).tensor("w", []uint64{256}, 21, 0).padData(32, 110), `tensor "w": quant: tensor type IQ3_S is not supported`)
	add("n_dims 5", (&raw{}).header(3, 1, 0).tensor("w", []uint64{1, 1, 1, 1, 1}, 0, 0).padData(32, 16), "n_dims 5")
	add("zero dim", (&raw{}).header(3, 1, 0).tensor("w", []uint64{4, 0}, 0, 0).padData(32, 16), "dimension 1 is 0")
	add("negative dim", (&raw{}).header(3, 1, 0).tensor("w", []uint64{math.MaxUint64}, 0, 0).padData(32, 16), "dimension 0 is -1")
	add("shape overflow", (&raw{}).header(3, 1, 0).tensor("w", []uint64{1 << 32, 1 << 32}, 0, 0).padData(32, 16), "overflows")
	add("size overflow", (&raw{}).header(3, 1, 0).tensor("w", []uint64{1 << 62}, 0, 0).padData(32, 16), "overflow")
	add("row not whole blocks", (&raw{}).header(3, 1, 0).tensor("w", []uint64{16, 2}, 2, 0).padData(32, 64), "block size")
	add("duplicate tensor", (&raw{}).header(3, 2, 0).tensor("w", []uint64{4}, 0, 0).tensor("w", []uint64{4}, 0, 32).padData(32, 64), `duplicate tensor name "w"`)
	add("empty name", (&raw{}).header(3, 1, 0).tensor("", []uint64{4}, 0, 0).padData(32, 16), "empty name")
	add("long name", (&raw{}).header(3, 1, 0).tensor(strings.Repeat("x", 65), []uint64{4}, 0, 0).padData(32, 16), "exceeds limit")
	add("duplicate key", (&raw{}).header(3, 0, 2).str("k").u32(4).u32(1).str("k").u32(4).u32(2).padData(32, 0), `duplicate metadata key "k"`)
	add("unknown value type", (&raw{}).header(3, 0, 1).str("k").u32(13).u32(1).padData(32, 0), `key "k": unknown value type 13`)
	b := (&raw{}).header(3, 0, 1).str("k").u32(7)
	b.WriteByte(2)
	add("bool 2", b.padData(32, 0), "not 0 or 1")
	add("huge array", (&raw{}).header(3, 0, 1).str("k").u32(9).u32(8).u64(1<<40).padData(32, 0), "array length 1099511627776 exceeds limit")
	add("array past end", (&raw{}).header(3, 0, 1).str("k").u32(9).u32(4).u64(1<<20).padData(32, 0), "unexpected EOF")
	add("string array past end", (&raw{}).header(3, 0, 1).str("k").u32(9).u32(8).u64(1<<10).padData(32, 0), "unexpected EOF")
	add("huge string in array", (&raw{}).header(3, 0, 1).str("k").u32(9).u32(8).u64(1).u64(1<<30).padData(32, 0), "string length 1073741824 exceeds limit")
	add("array of unknown type", (&raw{}).header(3, 0, 1).str("k").u32(9).u32(42).u64(1).padData(32, 0), "unknown value type 42")
	deep := (&raw{}).header(3, 0, 1).str("k").u32(9)
	for i := 0; i < 20; i++ {
		deep.u32(9).u64(1)
	}
	add("deep nesting", deep.padData(32, 0), "nested deeper")
	add("alignment 3", (&raw{}).header(3, 0, 1).str(KeyAlignment).u32(4).u32(3).padData(32, 0), "power of two")
	add("alignment string", (&raw{}).header(3, 0, 1).str(KeyAlignment).u32(8).str("32").padData(32, 0), "power of two")

	for name, c := range cases {
		_, err := Parse(c.data)
		if err == nil {
			t.Errorf("%s: no error", name)
			continue
		}
		msg := err.Error()
		if !errors.Is(err, ErrFormat) || !strings.HasPrefix(msg, "gguf: ") || strings.Contains(msg, "\n") || !strings.Contains(msg, c.want) {
			t.Errorf("%s: error %q, want one line starting \"gguf: \" containing %q", name, msg, c.want)
		}
		if testing.Verbose() {
			t.Logf("%-22s %s", name, msg)
		}
	}
	if _, err := Parse(cases["unknown type"].data); !errors.Is(err, quant.ErrUnknownType) {
		t.Errorf("unknown type error does not match quant.ErrUnknownType: %v", err)
	}
	if _, err := Parse(cases["IQ2_XS"].data); !errors.Is(err, quant.ErrUnsupported) {
		t.Errorf("IQ2_XS error does not match quant.ErrUnsupported: %v", err)
	}
	// IQ4_XS (id 23), once refused as an unknown type, loads.
	if _, err := Parse((&raw{}).header(3, 1, 0).tensor("w", []uint64{256}, 23, 0).padData(32, 136)); err != nil {
		t.Errorf("IQ4_XS tensor: %v", err)
	}
	if _, err := Parse(cases["empty"].data); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("truncation does not match io.ErrUnexpectedEOF: %v", err)
	}

	// Truncated at every byte before the last tensor's end: always an error.
	last := f.Tensors[len(f.Tensors)-1]
	for n := 0; n < int(last.Offset+last.Size); n++ {
		if _, err := Parse(good[:n]); err == nil {
			t.Fatalf("truncated to %d bytes: no error", n)
		} else if !errors.Is(err, ErrFormat) {
			t.Fatalf("truncated to %d bytes: %v", n, err)
		}
	}
	// Past it (only padding removed) the file is still whole.
	if _, err := Parse(good[:last.Offset+last.Size]); err != nil {
		t.Errorf("file without its final padding: %v", err)
	}
}

// FuzzParse checks that Parse never panics and that every tensor it accepts
// lies inside the data, aligned and without overlap.
func FuzzParse(f *testing.F) {
	f.Add(write(f, 3, allValuesKV(), testTensors(), 0))
	f.Add(write(f, 2, allValuesKV()[:3], testTensors()[:2], 64))
	f.Add(write(f, 3, nil, nil, 0))
	f.Add((&raw{}).header(3, 2, 0).tensor("a", []uint64{16}, 0, 0).tensor("b", []uint64{4}, 0, 64).padData(32, 128))
	f.Add([]byte("GGUF\x03\x00\x00\x00"))
	if d, ok := sharedDir(); ok {
		if b, err := readFileHead(d+"/assets/models/stories260K.gguf", 16384); err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		g, err := Parse(data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "gguf: ") {
				t.Fatalf("error without prefix: %v", err)
			}
			return
		}
		for i, ti := range g.Tensors {
			if ti.Offset < g.DataOffset || ti.Offset%g.Alignment != 0 || ti.Size <= 0 || ti.Offset+ti.Size > int64(len(data)) {
				t.Fatalf("tensor %d %+v outside data of %d bytes (data offset %d)", i, ti, len(data), g.DataOffset)
			}
			if v := g.Data(data, ti); int64(len(v)) != ti.Size {
				t.Fatalf("tensor %d: view of %d bytes", i, len(v))
			}
		}
		if err := checkOverlap(g.Tensors); err != nil {
			t.Fatal(err)
		}
		// Round trip: what Parse accepts, Write writes back to a file that
		// parses to the same keys, tensors and bytes.
		wts := make([]WriteTensor, len(g.Tensors))
		for i, ti := range g.Tensors {
			v := g.Data(data, ti)
			wts[i] = WriteTensor{Name: ti.Name, Type: ti.Type, Shape: ti.Shape, Size: ti.Size,
				Write: func(w io.Writer) error { _, err := w.Write(v); return err }}
		}
		var buf bytes.Buffer
		if err := Write(&buf, g.Version, g.KV, wts, 0); err != nil {
			return // Write is stricter than Parse (ggml's own rules); that is allowed
		}
		h, err := Parse(buf.Bytes())
		if err != nil {
			t.Fatalf("a written file does not parse: %v", err)
		}
		if !reflect.DeepEqual(kvBits(g.KV), kvBits(h.KV)) || len(g.Tensors) != len(h.Tensors) {
			t.Fatalf("keys or tensor count differ after a round trip")
		}
		for i := range g.Tensors {
			a, b := g.Tensors[i], h.Tensors[i]
			if a.Name != b.Name || a.Type != b.Type || !slices.Equal(a.Shape, b.Shape) || !bytes.Equal(g.Data(data, a), h.Data(buf.Bytes(), b)) {
				t.Fatalf("tensor %d differs after a round trip", i)
			}
		}
	})
}

// kvBits maps every float in the pairs' values to its bits, so that a NaN
// read back compares equal to itself (DeepEqual says NaN ≠ NaN).
func kvBits(kv []KV) []KV {
	var bits func(v any) any
	bits = func(v any) any {
		switch x := v.(type) {
		case float32:
			return math.Float32bits(x)
		case float64:
			return math.Float64bits(x)
		case []float32:
			out := make([]uint32, len(x))
			for i, f := range x {
				out[i] = math.Float32bits(f)
			}
			return out
		case []float64:
			out := make([]uint64, len(x))
			for i, f := range x {
				out[i] = math.Float64bits(f)
			}
			return out
		case Array:
			x.Data = bits(x.Data)
			return x
		case []Array:
			out := make([]any, len(x))
			for i, a := range x {
				out[i] = bits(a)
			}
			return out
		}
		return v
	}
	out := make([]KV, len(kv))
	for i, p := range kv {
		out[i] = p
		out[i].Value = bits(p.Value)
	}
	return out
}
