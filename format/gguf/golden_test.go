package gguf

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/qtune/qtune/internal/shared"
	"github.com/qtune/qtune/quant"
)

func readShared(t *testing.T, elem ...string) []byte {
	t.Helper()
	b, err := os.ReadFile(shared.Path(t, elem...))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustParse(t *testing.T, b []byte) *File {
	t.Helper()
	f, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// rewrite writes f back with its own KV and tensor data.
func rewrite(t *testing.T, f *File, b []byte) []byte {
	t.Helper()
	ws := make([]WriteTensor, len(f.Tensors))
	for i, ti := range f.Tensors {
		ws[i] = BytesTensor(ti.Name, ti.Type, ti.Shape, f.Data(b, ti))
	}
	var buf bytes.Buffer
	if err := Write(&buf, f.Version, f.KV, ws, 0); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestStories260K(t *testing.T) {
	b := readShared(t, "assets", "models", "stories260K.gguf")
	f := mustParse(t, b)
	if f.Version != 3 || len(f.KV) != 19 || len(f.Tensors) != 48 || f.Alignment != 32 {
		t.Fatalf("version %d, %d KV, %d tensors, alignment %d; want 3, 19, 48, 32", f.Version, len(f.KV), len(f.Tensors), f.Alignment)
	}
	if s, _ := f.String("general.architecture"); s != "llama" {
		t.Errorf("architecture %q", s)
	}
	for key, want := range map[string]uint64{
		"llama.embedding_length": 64, "llama.feed_forward_length": 172, "llama.block_count": 5,
		"llama.attention.head_count": 8, "llama.attention.head_count_kv": 4,
		"tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
	} {
		if v, ok := f.Uint(key); !ok || v != want {
			t.Errorf("%s = %d, %v; want %d", key, v, ok, want)
		}
	}
	if eps, ok := f.Float("llama.attention.layer_norm_rms_epsilon"); !ok || eps <= 0 || eps > 1e-3 {
		t.Errorf("rms eps %v %v", eps, ok)
	}
	toks, ok := f.Strings("tokenizer.ggml.tokens")
	if !ok || len(toks) != 512 || toks[1] != "<s>" || toks[3] != "<0x00>" {
		t.Errorf("tokens: ok %v, len %d", ok, len(toks))
	}
	if sc, ok := f.Float32s("tokenizer.ggml.scores"); !ok || len(sc) != 512 {
		t.Errorf("scores: ok %v, len %d", ok, len(sc))
	}
	if tt, ok := f.Int32s("tokenizer.ggml.token_type"); !ok || len(tt) != 512 || tt[3] != 6 {
		t.Errorf("token types: ok %v, len %d", ok, len(tt))
	}
	for _, ti := range f.Tensors {
		if ti.Type != quant.F32 {
			t.Errorf("%s: type %s", ti.Name, ti.Type)
		}
	}
	q, ok := f.Tensor("blk.0.attn_k.weight")
	if !ok || fmt.Sprint(q.Shape) != "[64 32]" || q.Size != 64*32*4 || q.Offset%32 != 0 {
		t.Errorf("attn_k: %+v", q)
	}
	if d := f.Data(b, q); len(d) != int(q.Size) || &d[0] != &b[q.Offset] {
		t.Error("Data is not a view of the file")
	}
	if !bytes.Equal(rewrite(t, f, b), b) {
		t.Error("Parse → Write is not byte-identical")
	}
}

// tableRow is one line of a golden *.tensors.txt table.
type tableRow struct {
	name, typ string
	ne        []int64 // nil when the table has no ne column
	nbytes    int64
	offset    int64 // -1 when the table has no offset column
}

func readTable(t *testing.T, path string) (rows []tableRow, footer string) {
	t.Helper()
	fh, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	withNE := false
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		switch {
		case len(fs) == 0 || strings.HasPrefix(fs[0], "#"):
		case fs[0] == "tensor":
			withNE = fs[2] == "ne"
		case strings.HasPrefix(fs[0], "n_kv="):
			footer = sc.Text()
		default:
			r := tableRow{name: fs[0], typ: fs[1], offset: -1}
			if withNE {
				for _, d := range strings.Split(fs[2], "x") {
					v, _ := strconv.ParseInt(d, 10, 64)
					r.ne = append(r.ne, v)
				}
				r.nbytes, _ = strconv.ParseInt(fs[3], 10, 64)
			} else {
				r.nbytes, _ = strconv.ParseInt(fs[2], 10, 64)
				r.offset, _ = strconv.ParseInt(fs[3], 10, 64)
			}
			rows = append(rows, r)
		}
	}
	return rows, footer
}

func TestGoldenFiles(t *testing.T) {
	src := readShared(t, "assets", "models", "stories260K.gguf")
	srcF := mustParse(t, src)
	dir := shared.Path(t, "golden", "gguf")
	cases := []struct {
		file               string
		kv, tensors        int
		fileType           int64 // -1: absent
		quantized, f32, hf int   // counts by type: target type, F32
		target             quant.Type
	}{
		{"stories260K-f16", 20, 48, 1, 37, 11, 0, quant.F16},
		{"stories260K-q8_0", 21, 48, 7, 32, 16, 0, quant.Q8_0},
		{"stories260K-q4_0", 21, 48, 2, 32, 16, 0, quant.Q4_0},
		{"synthetic-kquants", 7, 39, -1, 0, 0, 0, 0},
	}
	for _, c := range cases {
		t.Run(c.file, func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join(dir, c.file+".gguf"))
			if err != nil {
				t.Fatal(err)
			}
			f := mustParse(t, b)
			if len(f.KV) != c.kv || len(f.Tensors) != c.tensors || f.Alignment != 32 {
				t.Fatalf("%d KV, %d tensors, alignment %d; want %d, %d, 32", len(f.KV), len(f.Tensors), f.Alignment, c.kv, c.tensors)
			}
			rows, footer := readTable(t, filepath.Join(dir, c.file+".tensors.txt"))
			if want := fmt.Sprintf("n_kv=%d n_tensors=%d data_offset=%d", c.kv, c.tensors, f.DataOffset); !strings.HasPrefix(footer, want) {
				t.Errorf("footer %q, want prefix %q", footer, want)
			}
			for _, r := range rows {
				ti, ok := f.Tensor(r.name)
				if !ok {
					t.Errorf("%s: missing", r.name)
					continue
				}
				if !strings.EqualFold(ti.Type.String(), r.typ) || ti.Size != r.nbytes {
					t.Errorf("%s: %s %d bytes, table says %s %d", r.name, ti.Type, ti.Size, r.typ, r.nbytes)
				}
				if r.ne != nil {
					shape := append([]int64(nil), ti.Shape...)
					for len(shape) < len(r.ne) {
						shape = append(shape, 1)
					}
					if fmt.Sprint(shape) != fmt.Sprint(r.ne) {
						t.Errorf("%s: shape %v, table says %v", r.name, ti.Shape, r.ne)
					}
				}
				if r.offset >= 0 && ti.Offset-f.DataOffset != r.offset {
					t.Errorf("%s: relative offset %d, table says %d", r.name, ti.Offset-f.DataOffset, r.offset)
				}
			}
			if c.fileType >= 0 {
				// The first 19 KV are the source's, in order, then file_type (+ quantization_version).
				for i, kv := range srcF.KV {
					if f.KV[i].Key != kv.Key || f.KV[i].Type != kv.Type || fmt.Sprint(f.KV[i].Value) != fmt.Sprint(kv.Value) {
						t.Errorf("KV %d: %s differs from the source", i, f.KV[i].Key)
					}
				}
				if v, _ := f.Int("general.file_type"); v != c.fileType {
					t.Errorf("file_type %d, want %d", v, c.fileType)
				}
				if c.kv == 21 {
					if v, _ := f.Uint("general.quantization_version"); v != 2 {
						t.Errorf("quantization_version %d", v)
					}
				}
				counts := map[quant.Type]int{}
				for _, ti := range f.Tensors {
					counts[ti.Type]++
					if ti.Type == quant.F32 { // F32 tensors are copied unchanged from the source
						st, _ := srcF.Tensor(ti.Name)
						if !bytes.Equal(f.Data(b, ti), srcF.Data(src, st)) {
							t.Errorf("%s: F32 data differs from the source", ti.Name)
						}
					}
				}
				if counts[c.target] != c.quantized || counts[quant.F32] != c.f32 {
					t.Errorf("type counts %v", counts)
				}
			} else {
				types, _ := f.Strings("golden.types")
				if len(types) != 13 || types[0] != "q4_0" {
					t.Errorf("golden.types %v", types)
				}
			}
			if !bytes.Equal(rewrite(t, f, b), b) {
				t.Error("Parse → Write is not byte-identical")
			}
		})
	}
}

func TestVocabFiles(t *testing.T) {
	for _, c := range []struct {
		dir, model string
		tokens     int
		merges     int
	}{
		{"llama2", "llama", 32000, 0},
		{"gpt2", "gpt2", 50257, 50000},
	} {
		b := readShared(t, "assets", "tokenizers", c.dir, "vocab-"+c.dir+".gguf")
		f := mustParse(t, b)
		if len(f.Tensors) != 0 {
			t.Errorf("%s: %d tensors", c.dir, len(f.Tensors))
		}
		if m, _ := f.String("tokenizer.ggml.model"); m != c.model {
			t.Errorf("%s: model %q", c.dir, m)
		}
		toks, _ := f.Strings("tokenizer.ggml.tokens")
		merges, _ := f.Strings("tokenizer.ggml.merges")
		types, _ := f.Int32s("tokenizer.ggml.token_type")
		if len(toks) != c.tokens || len(merges) != c.merges || len(types) != c.tokens {
			t.Errorf("%s: %d tokens, %d merges, %d types", c.dir, len(toks), len(merges), len(types))
		}
		if c.model == "llama" {
			if sc, _ := f.Float32s("tokenizer.ggml.scores"); len(sc) != c.tokens {
				t.Errorf("%s: %d scores", c.dir, len(sc))
			}
			if v, _ := f.Uint("tokenizer.ggml.bos_token_id"); v != 1 {
				t.Errorf("bos %d", v)
			}
		}
		if !bytes.Equal(rewrite(t, f, b), b) {
			t.Errorf("%s: Parse → Write is not byte-identical", c.dir)
		}
	}
}
