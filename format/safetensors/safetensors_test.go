package safetensors

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/qtune/qtune/quant"
)

func seq(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*13 + 1)
	}
	return b
}

func sampleTensors() []Tensor {
	return []Tensor{
		{Name: "z.last", DType: "F32", Shape: []int64{2, 3}, Data: seq(24)},
		{Name: "a.first", DType: "BF16", Shape: []int64{4}, Data: seq(8)},
		{Name: "m.scalar", DType: "F64", Shape: []int64{}, Data: seq(8)},
		{Name: "m.empty", DType: "F16", Shape: []int64{0, 5}, Data: nil},
		{Name: "i.bool", DType: "BOOL", Shape: []int64{3}, Data: []byte{1, 0, 1}},
		{Name: "i.u64", DType: "U64", Shape: []int64{1, 1}, Data: seq(8)},
		{Name: "f8", DType: "F8_E4M3", Shape: []int64{5}, Data: seq(5)},
	}
}

func writeFile(t testing.TB, ts []Tensor, md map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := Write(&buf, ts, md); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestRoundTrip(t *testing.T) {
	in := sampleTensors()
	md := map[string]string{"format": "pt", "note": "<&>"}
	b := writeFile(t, in, md)
	n := binary.LittleEndian.Uint64(b)
	if (8+n)%8 != 0 || b[8] != '{' || b[8+n-1] != ' ' && b[8+n-1] != '}' {
		t.Errorf("header length %d, header %q", n, b[8:8+n])
	}
	f, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(f.Metadata, md) {
		t.Errorf("metadata %v", f.Metadata)
	}
	if len(f.Tensors) != len(in) {
		t.Fatalf("%d tensors", len(f.Tensors))
	}
	for i := 1; i < len(f.Tensors); i++ {
		if f.Tensors[i-1].Name >= f.Tensors[i].Name {
			t.Error("tensors not sorted by name")
		}
	}
	for _, w := range in {
		g, ok := f.Tensor(w.Name)
		if !ok || g.DType != w.DType || !reflect.DeepEqual(g.Shape, w.Shape) || !bytes.Equal(g.Data, w.Data) {
			t.Errorf("%s: got %+v", w.Name, g)
		}
		if len(g.Data) > 0 && (cap(g.Data) != len(g.Data) || !sameMemory(g.Data, b)) {
			t.Errorf("%s: Data is not a capped view of the file", w.Name)
		}
	}
	// Data is laid out in name order, back to back, starting at 8-aligned offset.
	if first, _ := f.Tensor("a.first"); !bytes.Equal(b[8+n:8+n+8], first.Data) {
		t.Error("first tensor (by name) does not start the buffer")
	}
	// Writing the parsed file gives the same bytes.
	if !bytes.Equal(writeFile(t, f.Tensors, f.Metadata), b) {
		t.Error("second write differs")
	}
	// No metadata: no __metadata__ key; Metadata nil after parsing.
	b2 := writeFile(t, in[:1], nil)
	if bytes.Contains(b2, []byte("__metadata__")) {
		t.Error("empty metadata written")
	}
	if f2, err := Parse(b2); err != nil || f2.Metadata != nil {
		t.Errorf("parse without metadata: %v %v", f2, err)
	}
	if _, ok := f.Tensor("nope"); ok {
		t.Error("missing tensor found")
	}
}

func sameMemory(view, file []byte) bool {
	for i := range file {
		if &file[i] == &view[0] {
			return true
		}
	}
	return false
}

func TestWriteErrors(t *testing.T) {
	for name, ts := range map[string][]Tensor{
		"size":      {{Name: "a", DType: "F32", Shape: []int64{3}, Data: seq(8)}},
		"dtype":     {{Name: "a", DType: "F12", Shape: []int64{3}, Data: seq(8)}},
		"negative":  {{Name: "a", DType: "U8", Shape: []int64{-1}, Data: nil}},
		"duplicate": {{Name: "a", DType: "U8", Shape: []int64{1}, Data: seq(1)}, {Name: "a", DType: "U8", Shape: []int64{1}, Data: seq(1)}},
		"empty":     {{Name: "", DType: "U8", Shape: []int64{1}, Data: seq(1)}},
		"metadata":  {{Name: "__metadata__", DType: "U8", Shape: []int64{1}, Data: seq(1)}},
		"utf8":      {{Name: "a\xff", DType: "U8", Shape: []int64{1}, Data: seq(1)}},
	} {
		if err := Write(&bytes.Buffer{}, ts, nil); err == nil || !strings.HasPrefix(err.Error(), "safetensors: ") {
			t.Errorf("%s: %v", name, err)
		}
	}
	if err := Write(&bytes.Buffer{}, nil, map[string]string{"k": "\xff"}); err == nil {
		t.Error("invalid UTF-8 metadata accepted")
	}
}

func TestDTypes(t *testing.T) {
	for _, q := range []quant.Type{quant.F32, quant.F16, quant.BF16, quant.F64, quant.I8, quant.I16, quant.I32, quant.I64} {
		d, ok := DTypeOf(q)
		if !ok {
			t.Fatalf("%s: no dtype", q)
		}
		back, ok := TypeOf(d)
		if !ok || back != q {
			t.Errorf("%s -> %s -> %s", q, d, back)
		}
		info, _ := quant.Lookup(q)
		if s, _ := DTypeSize(d); s != int64(info.TypeSize) {
			t.Errorf("%s: size %d vs quant %d", d, s, info.TypeSize)
		}
	}
	if _, ok := DTypeOf(quant.Q4_0); ok {
		t.Error("Q4_0 has a dtype")
	}
	if _, ok := TypeOf("U8"); ok {
		t.Error("U8 has a quant type")
	}
}

// rawFile builds a file from a literal header and buffer.
func rawFile(header string, buf []byte) []byte {
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
	return append(append(b, header...), buf...)
}

func TestDamaged(t *testing.T) {
	good := writeFile(t, sampleTensors(), map[string]string{"k": "v"})
	huge := bytes.Clone(good)
	binary.LittleEndian.PutUint64(huge, 200_000_000)
	past := bytes.Clone(good)
	binary.LittleEndian.PutUint64(past, uint64(len(good)))
	ent := func(dtype, shape, offs string) string {
		return fmt.Sprintf(`{"a":{"dtype":%s,"shape":%s,"data_offsets":%s}}`, dtype, shape, offs)
	}
	cases := map[string]struct {
		data []byte
		want string
	}{
		"empty":            {nil, "no header length"},
		"huge header":      {huge, "exceeds limit"},
		"header past end":  {past, "past end of file"},
		"not JSON":         {rawFile("hello", nil), "not a JSON object"},
		"bad JSON":         {rawFile(`{"a":`, nil), "invalid JSON"},
		"trailing JSON":    {rawFile(`{}{}`, nil), "after the top-level value"},
		"array":            {rawFile(`[1]`, nil), "not a JSON object"},
		"entry not object": {rawFile(`{"a":1}`, nil), "not an object"},
		"missing dtype":    {rawFile(`{"a":{"shape":[1],"data_offsets":[0,1]}}`, seq(1)), `missing "dtype"`},
		"unknown dtype":    {rawFile(ent(`"F12"`, `[1]`, `[0,4]`), seq(4)), `unknown dtype "F12"`},
		"shape not ints":   {rawFile(ent(`"U8"`, `[1.5]`, `[0,1]`), seq(2)), "shape must be"},
		"negative dim":     {rawFile(ent(`"U8"`, `[-1]`, `[0,0]`), nil), "dimension 0 is -1"},
		"shape overflow":   {rawFile(ent(`"F32"`, `[4294967296,4294967296]`, `[0,4]`), seq(4)), "overflows"},
		"offsets count":    {rawFile(ent(`"U8"`, `[1]`, `[0]`), seq(1)), "two integers"},
		"offsets reversed": {rawFile(ent(`"U8"`, `[0]`, `[2,1]`), seq(4)), "bad data_offsets"},
		"offsets negative": {rawFile(ent(`"U8"`, `[1]`, `[-1,0]`), seq(4)), "bad data_offsets"},
		"out of range":     {rawFile(ent(`"F32"`, `[4]`, `[0,16]`), seq(8)), "data past end of file (offsets [0, 16], buffer 8)"},
		"huge offset":      {rawFile(ent(`"U8"`, `[1]`, `[9223372036854775806,9223372036854775807]`), seq(8)), "past end"},
		"wrong size":       {rawFile(ent(`"F32"`, `[3]`, `[0,8]`), seq(8)), "8 bytes for F32 [3], want 12"},
		"overlap": {rawFile(`{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}`, seq(8)),
			`tensor "b": data overlaps tensor "a"`},
		"duplicate tensor": {rawFile(`{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}`, seq(2)),
			`duplicate key "a"`},
		"duplicate field": {rawFile(`{"a":{"dtype":"U8","dtype":"F32","shape":[1],"data_offsets":[0,1]}}`, seq(2)), `duplicate key "dtype"`},
		"metadata number": {rawFile(`{"__metadata__":{"a":1}}`, nil), "__metadata__"},
		"deep":            {rawFile(`{"__metadata__":`+strings.Repeat("[", 100)+strings.Repeat("]", 100)+`}`, nil), "nested deeper"},
	}
	for name, c := range cases {
		_, err := Parse(c.data)
		if err == nil {
			t.Errorf("%s: no error", name)
			continue
		}
		msg := err.Error()
		if !errors.Is(err, ErrFormat) || !strings.HasPrefix(msg, "safetensors: ") || strings.Contains(msg, "\n") || !strings.Contains(msg, c.want) {
			t.Errorf("%s: error %q, want one line containing %q", name, msg, c.want)
		}
		if testing.Verbose() {
			t.Logf("%-18s %s", name, msg)
		}
	}
	// Truncated anywhere: an error, never a panic.
	for n := 0; n < len(good); n++ {
		if _, err := Parse(good[:n]); err == nil {
			t.Fatalf("truncated to %d bytes: no error", n)
		}
	}
	// Allowed: empty tensors sharing an offset, rank 0, gaps, trailing bytes.
	ok := rawFile(`{"e":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},"f":{"dtype":"F32","shape":[0,3],"data_offsets":[4,4]},`+
		`"s":{"dtype":"U8","shape":[],"data_offsets":[1,2]},"t":{"dtype":"U8","shape":[2],"data_offsets":[4,6]}}`, seq(9))
	if f, err := Parse(ok); err != nil || len(f.Tensors) != 4 {
		t.Errorf("valid edge cases: %v", err)
	}
	if _, err := Parse(rawFile(`  {}`, nil)); err != nil {
		t.Errorf("empty header object: %v", err)
	}
}

// FuzzParse checks that Parse never panics and that the tensors it accepts
// have Data of the size their dtype and shape give, inside the file.
func FuzzParse(f *testing.F) {
	f.Add(writeFile(f, sampleTensors(), map[string]string{"format": "pt"}))
	f.Add(writeFile(f, sampleTensors()[:1], nil))
	f.Add(rawFile(`{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}`, seq(8)))
	f.Add(rawFile(`{"a":{"dtype":"F32","shape":[],"data_offsets":[0,4]}}`, seq(4)))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		g, err := Parse(data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "safetensors: ") {
				t.Fatalf("error without prefix: %v", err)
			}
			return
		}
		for _, ts := range g.Tensors {
			size, err := byteSize(ts.DType, ts.Shape)
			if err != nil || size != int64(len(ts.Data)) {
				t.Fatalf("%s: %d bytes for %s %v (%v)", ts.Name, len(ts.Data), ts.DType, ts.Shape, err)
			}
			if len(ts.Data) > 0 && !sameMemory(ts.Data, data) {
				t.Fatalf("%s: data outside the file", ts.Name)
			}
		}
		// Round trip: written back, the file parses to the same tensors and
		// metadata.
		var buf bytes.Buffer
		if err := Write(&buf, g.Tensors, g.Metadata); err != nil {
			return // Write is stricter than Parse (overlapping views, say)
		}
		h, err := Parse(buf.Bytes())
		if err != nil {
			t.Fatalf("a written file does not parse: %v", err)
		}
		if len(g.Metadata) > 0 && !reflect.DeepEqual(g.Metadata, h.Metadata) || len(g.Tensors) != len(h.Tensors) {
			t.Fatalf("metadata or tensor count differ after a round trip")
		}
		for i := range g.Tensors {
			a, b := g.Tensors[i], h.Tensors[i]
			if a.Name != b.Name || a.DType != b.DType || !slices.Equal(a.Shape, b.Shape) || !bytes.Equal(a.Data, b.Data) {
				t.Fatalf("tensor %q differs after a round trip", a.Name)
			}
		}
	})
}
