package quant

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"math"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/qtune/qtune/internal/shared"
)

// manifestRow is one line of golden/quant/manifest.tsv.
type manifestRow struct {
	file, kind, set, typ string
	id                   Type
	n, blck, tsize       int64
	nbytes               int64
}

func readManifest(tb testing.TB) []manifestRow {
	tb.Helper()
	raw, err := os.ReadFile(shared.Path(tb, "golden", "quant", "manifest.tsv"))
	if err != nil {
		tb.Fatal(err)
	}
	var rows []manifestRow
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for line := 0; sc.Scan(); line++ {
		f := strings.Split(sc.Text(), "\t")
		if line == 0 || len(f) == 0 || f[0] == "" {
			continue
		}
		if len(f) != 9 {
			tb.Fatalf("manifest line %d: %d fields", line+1, len(f))
		}
		num := func(s string) int64 {
			v, err := strconv.ParseInt(s, 10, 64)
			if err != nil {
				tb.Fatalf("manifest line %d: %v", line+1, err)
			}
			return v
		}
		rows = append(rows, manifestRow{f[0], f[1], f[2], f[3], Type(num(f[4])), num(f[5]), num(f[6]), num(f[7]), num(f[8])})
	}
	return rows
}

// quantRows returns the manifest's "quant" rows (one per set and type).
func quantRows(tb testing.TB) []manifestRow {
	var out []manifestRow
	for _, r := range readManifest(tb) {
		if r.kind == "quant" {
			out = append(out, r)
		}
	}
	if len(out) == 0 {
		tb.Fatal("manifest lists no quant files")
	}
	return out
}

func readGolden(tb testing.TB, name string) []byte {
	tb.Helper()
	b, err := os.ReadFile(shared.Path(tb, "golden", "quant", name))
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

func bytesToF32(b []byte) []float32 {
	out := make([]float32, len(b)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return out
}

// firstBitDiff returns the first index whose f32 bit patterns differ, or -1.
func firstBitDiff(a, b []float32) int {
	if len(a) != len(b) {
		return 0
	}
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return i
		}
	}
	return -1
}

func TestBytesMatchesManifest(t *testing.T) {
	for _, r := range readManifest(t) {
		if r.kind == "dequant" {
			continue
		}
		in, err := Lookup(r.id)
		if err != nil {
			t.Errorf("%s: %v", r.file, err)
			continue
		}
		if int64(in.BlockSize) != r.blck || int64(in.TypeSize) != r.tsize {
			t.Errorf("%s: table says %d/%d, manifest %d/%d", r.file, in.BlockSize, in.TypeSize, r.blck, r.tsize)
		}
		if !strings.EqualFold(in.Name, r.typ) {
			t.Errorf("%s: type %d is named %s here, %s in the manifest", r.file, r.id, in.Name, r.typ)
		}
		got, err := Bytes(r.id, r.n)
		if err != nil || got != r.nbytes {
			t.Errorf("%s: Bytes(%s, %d) = %d, %v; manifest says %d", r.file, in.Name, r.n, got, err, r.nbytes)
		}
		if fi, err := os.Stat(shared.Path(t, "golden", "quant", r.file)); err != nil || fi.Size() != r.nbytes {
			t.Errorf("%s: file size differs from the manifest (%v)", r.file, err)
		}
	}
}

// TestGoldenDequantize decodes every golden block file (sets A and B, every
// type) and compares f32 bit patterns with ggml's to_float output, whole and
// block range by block range.
func TestGoldenDequantize(t *testing.T) {
	for _, r := range quantRows(t) {
		t.Run(r.set+"."+r.typ, func(t *testing.T) {
			bin := readGolden(t, r.file)
			want := bytesToF32(readGolden(t, strings.TrimSuffix(r.file, ".bin")+".deq.f32"))
			checkDequant(t, r.id, bin, want)
		})
	}
}

// TestGoldenDequantizeIQ4XS is TestGoldenDequantize for IQ4_XS, whose ggml
// blocks are in testdata/iq4_xs (README there: made by ggml, not by qtune).
func TestGoldenDequantizeIQ4XS(t *testing.T) {
	for _, set := range []string{"A", "B"} {
		t.Run(set, func(t *testing.T) {
			bin := readFile(t, "testdata/iq4_xs/"+set+".iq4_xs.bin")
			want := bytesToF32(readFile(t, "testdata/iq4_xs/"+set+".iq4_xs.deq.f32"))
			if len(bin) != 16*136 || len(want) != 4096 {
				t.Fatalf("testdata sizes %d, %d", len(bin), len(want))
			}
			checkDequant(t, IQ4_XS, bin, want)
		})
	}
}

func readFile(tb testing.TB, name string) []byte {
	tb.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// checkDequant decodes bin as typ and compares f32 bit patterns with want,
// whole and in aligned ranges of a few blocks.
func checkDequant(t *testing.T, typ Type, bin []byte, want []float32) {
	t.Helper()
	in, err := Lookup(typ)
	if err != nil {
		t.Fatal(err)
	}
	n, blck := int64(len(want)), int64(in.BlockSize)
	got := make([]float32, n)
	if err := Dequantize(typ, got, bin); err != nil {
		t.Fatal(err)
	}
	if i := firstBitDiff(got, want); i >= 0 {
		t.Fatalf("element %d: got %g (%#08x), ggml %g (%#08x)", i, got[i], math.Float32bits(got[i]), want[i], math.Float32bits(want[i]))
	}
	for off := int64(0); off < n; off += 3 * blck {
		m := min(5*blck, n-off)
		part := make([]float32, m)
		if err := DequantizeRange(typ, part, bin, n, off); err != nil {
			t.Fatal(err)
		}
		if i := firstBitDiff(part, want[off:off+m]); i >= 0 {
			t.Fatalf("range at %d, element %d differs", off, i)
		}
	}
}

// TestGoldenCoversIssueTypes: every type of llama.cpp's common downloads
// has ggml-made golden blocks, in ../shared/golden/quant or testdata.
func TestGoldenCoversIssueTypes(t *testing.T) {
	have := map[Type]int{IQ4_XS: 2} // testdata/iq4_xs: sets A and B
	for _, r := range quantRows(t) {
		have[r.id]++
	}
	for _, typ := range []Type{Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, IQ4_XS, BF16, F16} {
		if have[typ] != 2 {
			t.Errorf("%s: %d golden sets, want 2", typ, have[typ])
		}
	}
}

// exactQuant lists the types whose quantizer must match ggml byte for byte.
// The golden README allows an iterative-search quantizer (K-quants) to differ
// if its dequantized RMSE is no worse than ggml's; ours matches ggml's bytes
// exactly on every golden input, so the K-quants are held to that too. A type
// left out of this table gets the RMSE acceptance.
var exactQuant = map[Type]bool{
	F16: true, BF16: true, Q4_0: true, Q4_1: true, Q5_0: true, Q5_1: true, Q8_0: true, Q8_1: true,
	IQ4_NL: true, IQ4_XS: true, MXFP4: true, Q2_K: true, Q3_K: true, Q4_K: true, Q5_K: true, Q6_K: true,
}

// checkQuantize quantizes x as t and compares with ggml's bytes want (whose
// dequantization is wantDeq).
func checkQuantize(t *testing.T, typ Type, x []float32, want []byte, wantDeq []float32) {
	t.Helper()
	got := make([]byte, len(want))
	if err := Quantize(typ, got, x); err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(got, want) {
		return
	}
	i := 0
	for got[i] == want[i] {
		i++
	}
	if exactQuant[typ] {
		t.Fatalf("byte %d differs from ggml: %#02x, want %#02x", i, got[i], want[i])
	}
	deq := make([]float32, len(x))
	if err := Dequantize(typ, deq, got); err != nil {
		t.Fatal(err)
	}
	ours, ggml := RMSE(deq, x), RMSE(wantDeq, x)
	t.Logf("not byte-equal to ggml (first byte %d); RMSE %.9g vs ggml %.9g", i, ours, ggml)
	if ours > ggml {
		t.Fatalf("RMSE %.9g worse than ggml's %.9g", ours, ggml)
	}
}

func TestGoldenQuantize(t *testing.T) {
	inputs := map[string][]float32{}
	for _, r := range quantRows(t) {
		if !CanQuantize(r.id) {
			continue
		}
		t.Run(r.set+"."+r.typ, func(t *testing.T) {
			x, ok := inputs[r.set]
			if !ok {
				x = bytesToF32(readGolden(t, r.set+".input.f32"))
				inputs[r.set] = x
			}
			want := readGolden(t, r.file)
			wantDeq := bytesToF32(readGolden(t, strings.TrimSuffix(r.file, ".bin")+".deq.f32"))
			checkQuantize(t, r.id, x, want, wantDeq)
		})
	}
}

// TestGoldenQuantizeIQ4XS is TestGoldenQuantize for IQ4_XS (testdata/iq4_xs).
func TestGoldenQuantizeIQ4XS(t *testing.T) {
	for _, set := range []string{"A", "B"} {
		t.Run(set, func(t *testing.T) {
			x := bytesToF32(readGolden(t, set+".input.f32"))
			want := readFile(t, "testdata/iq4_xs/"+set+".iq4_xs.bin")
			wantDeq := bytesToF32(readFile(t, "testdata/iq4_xs/"+set+".iq4_xs.deq.f32"))
			checkQuantize(t, IQ4_XS, x, want, wantDeq)
		})
	}
}
