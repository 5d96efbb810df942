package adapter

import (
	"bytes"
	"encoding/binary"
	"io/fs"
	"math"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/qtune/qtune/format/gguf"
	"github.com/qtune/qtune/quant"
)

func writeGGUF(t *testing.T, a *Adapter, dtype quant.Type) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := WriteGGUF(&buf, a, dtype, ""); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestGGUFRoundTrip(t *testing.T) {
	for _, c := range []struct {
		dtype    quant.Type
		rel, abs float64
	}{
		{quant.F32, 0, 0},
		{quant.F16, 1.0 / 2048, 1e-7},
		{quant.BF16, 1.0 / 256, 1e-38},
	} {
		t.Run(c.dtype.String(), func(t *testing.T) {
			for _, rs := range []bool{false, true} {
				a := newAdapter(11, tiny, 4, []int{0, 1, 2}, allKinds)
				a.UseRSLoRA, a.Alpha = rs, 12.5
				got, err := ReadGGUF(writeGGUF(t, a, c.dtype))
				if err != nil {
					t.Fatal(err)
				}
				sameAdapter(t, got, a, c.rel, c.abs)
				if c.dtype == quant.F32 && !reflect.DeepEqual(got, a) {
					t.Fatal("F32 round trip not identical")
				}
			}
		})
	}
}

// TestGGUFNamesShapes checks what llama.cpp's loader looks for.
func TestGGUFNamesShapes(t *testing.T) {
	a := newAdapter(12, tiny, 8, []int{0}, allKinds)
	a.UseRSLoRA = true
	data := writeGGUF(t, a, quant.F32)
	f, err := gguf.Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{"general.type": "adapter", "general.architecture": "llama", "adapter.type": "lora"} {
		if s, _ := f.String(k); s != v {
			t.Errorf("%s = %q, want %q", k, s, v)
		}
	}
	kv, ok := f.Get("adapter.lora.alpha")
	if !ok || kv.Type != gguf.TypeFloat32 {
		t.Fatalf("adapter.lora.alpha: %+v, want an f32", kv)
	}
	// rsLoRA: llama.cpp scales by alpha/R, so alpha·√R is written.
	if got, want := kv.Value.(float32), float32(16*math.Sqrt(8)); got != want {
		t.Errorf("adapter.lora.alpha = %v, want %v", got, want)
	}
	want := map[string][]int64{
		"blk.0.attn_q.weight.lora_a":      {16, 8},
		"blk.0.attn_q.weight.lora_b":      {8, 16},
		"blk.0.attn_k.weight.lora_a":      {16, 8},
		"blk.0.attn_k.weight.lora_b":      {8, 8},
		"blk.0.attn_v.weight.lora_a":      {16, 8},
		"blk.0.attn_v.weight.lora_b":      {8, 8},
		"blk.0.attn_output.weight.lora_a": {16, 8},
		"blk.0.attn_output.weight.lora_b": {8, 16},
		"blk.0.ffn_gate.weight.lora_a":    {16, 8},
		"blk.0.ffn_gate.weight.lora_b":    {8, 24},
		"blk.0.ffn_up.weight.lora_a":      {16, 8},
		"blk.0.ffn_up.weight.lora_b":      {8, 24},
		"blk.0.ffn_down.weight.lora_a":    {24, 8},
		"blk.0.ffn_down.weight.lora_b":    {8, 16},
	}
	if len(f.Tensors) != len(want) {
		t.Errorf("%d tensors, want %d", len(f.Tensors), len(want))
	}
	for name, ne := range want {
		ti, ok := f.Tensor(name)
		if !ok {
			t.Fatalf("no tensor %s", name)
		}
		if !reflect.DeepEqual(ti.Shape, ne) || ti.Type != quant.F32 {
			t.Errorf("%s: %v ne %v, want F32 %v", name, ti.Type, ti.Shape, ne)
		}
	}
	// The bytes are PEFT's A (R, in) and B (out, R) as they are, B in GGUF
	// row order: no transpose, no permutation.
	q := &a.Layers[0]
	for _, c := range []struct {
		name string
		v    []float32
	}{{"blk.0.attn_q.weight.lora_a", q.A}, {"blk.0.attn_q.weight.lora_b", q.B}} {
		ti, _ := f.Tensor(c.name)
		b := f.Data(data, ti)
		for i, x := range c.v {
			if math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:])) != x {
				t.Fatalf("%s[%d] differs", c.name, i)
			}
		}
	}
}

// foreign builds a GGUF adapter as another tool would, without qtune's keys.
func foreign(t *testing.T, kv []gguf.KV, ts []gguf.WriteTensor) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := gguf.Write(&buf, 3, kv, ts, 0); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func f32Bytes(n int, x float32) []byte {
	b := make([]byte, 4*n)
	for i := 0; i < n; i++ {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x+float32(i)))
	}
	return b
}

func baseKV(alpha float32) []gguf.KV {
	return []gguf.KV{
		gguf.KVOf("general.architecture", "llama"),
		gguf.KVOf("general.type", "adapter"),
		gguf.KVOf("adapter.type", "lora"),
		gguf.KVOf("adapter.lora.alpha", alpha),
	}
}

func TestReadGGUFForeign(t *testing.T) {
	// Rank 1 with lora_a written as ne [in] (ggml drops trailing 1s), a norm
	// tensor llama.cpp skips, alpha 0 meaning scale 1.
	data := foreign(t, baseKV(0), []gguf.WriteTensor{
		gguf.BytesTensor("blk.2.attn_v.weight.lora_b", quant.F32, []int64{1, 8}, f32Bytes(8, 10)),
		gguf.BytesTensor("blk.2.attn_v.weight.lora_a", quant.F32, []int64{16}, f32Bytes(16, 0)),
		gguf.BytesTensor("blk.2.attn_norm.weight", quant.F32, []int64{16}, f32Bytes(16, 0)),
	})
	a, err := ReadGGUF(data)
	if err != nil {
		t.Fatal(err)
	}
	if a.Rank != 1 || a.Alpha != 1 || a.Scale() != 1 || a.UseRSLoRA || a.Dropout != 0 || a.BaseModel != "" {
		t.Errorf("hyper-parameters %+v", hyper(a))
	}
	if !reflect.DeepEqual(a.Targets, []string{"v"}) || len(a.Layers) != 1 {
		t.Fatalf("targets %v, %d layers", a.Targets, len(a.Layers))
	}
	l := a.Layers[0]
	if l.Target != "blk.2.attn_v.weight" || l.In != 16 || l.Out != 8 || l.Rank != 1 || l.A[15] != 15 || l.B[7] != 17 {
		t.Errorf("layer %+v", l)
	}

	// qtune keys that disagree with adapter.lora.alpha are ignored: llama.cpp's view wins.
	kv := append(baseKV(6), gguf.KVOf("qtune.lora.alpha", 2.0), gguf.KVOf("qtune.lora.use_rslora", true))
	data = foreign(t, kv, []gguf.WriteTensor{
		gguf.BytesTensor("blk.0.attn_q.weight.lora_a", quant.F32, []int64{16, 4}, f32Bytes(64, 0)),
		gguf.BytesTensor("blk.0.attn_q.weight.lora_b", quant.F32, []int64{4, 16}, f32Bytes(64, 0)),
	})
	a, err = ReadGGUF(data)
	if err != nil {
		t.Fatal(err)
	}
	if a.Alpha != 6 || a.UseRSLoRA {
		t.Errorf("alpha %v rs %v, want 6 false", a.Alpha, a.UseRSLoRA)
	}
	// ... and agreeing ones are used (3·√4 = 6).
	kv = append(baseKV(6), gguf.KVOf("qtune.lora.alpha", 3.0), gguf.KVOf("qtune.lora.use_rslora", true))
	data = foreign(t, kv, []gguf.WriteTensor{
		gguf.BytesTensor("blk.0.attn_q.weight.lora_a", quant.F32, []int64{16, 4}, f32Bytes(64, 0)),
		gguf.BytesTensor("blk.0.attn_q.weight.lora_b", quant.F32, []int64{4, 16}, f32Bytes(64, 0)),
	})
	if a, err = ReadGGUF(data); err != nil || a.Alpha != 3 || !a.UseRSLoRA {
		t.Errorf("alpha %v rs %v err %v, want 3 true", a.Alpha, a.UseRSLoRA, err)
	}
}

func TestReadGGUFDamaged(t *testing.T) {
	qa := gguf.BytesTensor("blk.0.attn_q.weight.lora_a", quant.F32, []int64{16, 4}, f32Bytes(64, 0))
	qb := gguf.BytesTensor("blk.0.attn_q.weight.lora_b", quant.F32, []int64{4, 16}, f32Bytes(64, 0))
	kv := func(edit func([]gguf.KV) []gguf.KV) []gguf.KV { return edit(baseKV(8)) }
	same := func(k []gguf.KV) []gguf.KV { return k }
	for _, c := range []struct {
		name string
		kv   []gguf.KV
		ts   []gguf.WriteTensor
		kind error
		subs []string
	}{
		{"missing b", kv(same), []gguf.WriteTensor{qa}, ErrFormat, []string{"blk.0.attn_q.weight.lora_b", "missing"}},
		{"missing a", kv(same), []gguf.WriteTensor{qb}, ErrFormat, []string{"blk.0.attn_q.weight.lora_a", "missing"}},
		{"not transposed", kv(same), []gguf.WriteTensor{
			gguf.BytesTensor("blk.0.attn_q.weight.lora_a", quant.F32, []int64{4, 16}, f32Bytes(64, 0)), qb}, ErrFormat, []string{"not transposed"}},
		{"3-d", kv(same), []gguf.WriteTensor{
			gguf.BytesTensor("blk.0.attn_q.weight.lora_a", quant.F32, []int64{16, 2, 2}, f32Bytes(64, 0)), qb}, ErrFormat, []string{"want [in, R]"}},
		{"unknown suffix", kv(same), []gguf.WriteTensor{qa, qb,
			gguf.BytesTensor("blk.0.attn_q.weight.lora_c", quant.F32, []int64{4}, f32Bytes(4, 0))}, ErrFormat, []string{"unexpected suffix"}},
		{"token_embd", kv(same), []gguf.WriteTensor{
			gguf.BytesTensor("token_embd.weight.lora_a", quant.F32, []int64{16, 4}, f32Bytes(64, 0)),
			gguf.BytesTensor("token_embd.weight.lora_b", quant.F32, []int64{4, 16}, f32Bytes(64, 0))}, ErrUnsupported, []string{"token_embd"}},
		{"mixed rank", kv(same), []gguf.WriteTensor{qa, qb,
			gguf.BytesTensor("blk.0.attn_v.weight.lora_a", quant.F32, []int64{16, 2}, f32Bytes(32, 0)),
			gguf.BytesTensor("blk.0.attn_v.weight.lora_b", quant.F32, []int64{2, 16}, f32Bytes(32, 0))}, ErrUnsupported, []string{"rank 2", "other layers 4"}},
		{"q8_0", kv(same), []gguf.WriteTensor{qa,
			gguf.BytesTensor("blk.0.attn_q.weight.lora_b", quant.Q8_0, []int64{32, 16}, make([]byte, 16*34))}, ErrFormat, []string{"do not share the rank"}},
		{"model", kv(func(k []gguf.KV) []gguf.KV { k[1] = gguf.KVOf("general.type", "model"); return k }), []gguf.WriteTensor{qa, qb}, ErrFormat, []string{"general.type"}},
		{"other adapter", kv(func(k []gguf.KV) []gguf.KV { k[2] = gguf.KVOf("adapter.type", "control_vector"); return k }), []gguf.WriteTensor{qa, qb}, ErrUnsupported, []string{"control_vector"}},
		{"negative alpha", kv(func(k []gguf.KV) []gguf.KV { k[3] = gguf.KVOf("adapter.lora.alpha", float32(-1)); return k }), []gguf.WriteTensor{qa, qb}, ErrFormat, []string{"adapter.lora.alpha"}},
		{"no arch", kv(func(k []gguf.KV) []gguf.KV { return k[1:] }), []gguf.WriteTensor{qa, qb}, ErrFormat, []string{"general.architecture"}},
		{"no tensors", kv(same), nil, ErrFormat, []string{"no LoRA tensors"}},
		{"bad targets key", kv(func(k []gguf.KV) []gguf.KV { return append(k, gguf.KVOf("qtune.lora.targets", []string{"v"})) }), []gguf.WriteTensor{qa, qb}, ErrFormat, []string{"qtune.lora.targets"}},
		{"bad dropout key", kv(func(k []gguf.KV) []gguf.KV { return append(k, gguf.KVOf("qtune.lora.dropout", 1.5)) }), []gguf.WriteTensor{qa, qb}, ErrFormat, []string{"qtune.lora.dropout"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := ReadGGUF(foreign(t, c.kv, c.ts))
			wantErr(t, err, c.kind, c.subs...)
		})
	}
	// Truncation: the gguf error stays reachable.
	data := writeGGUF(t, newAdapter(13, tiny, 2, []int{0}, []string{"q"}), quant.F16)
	_, err := ReadGGUF(data[:len(data)-40])
	wantErr(t, err, gguf.ErrFormat)
}

func TestWriteGGUFRejects(t *testing.T) {
	a := newAdapter(14, tiny, 2, []int{0}, []string{"q"})
	var buf bytes.Buffer
	wantErr(t, WriteGGUF(&buf, a, quant.Q4_0, "llama"), ErrInvalid, "Q4_0")
	a.Layers[0].Target = "output.weight"
	wantErr(t, WriteGGUF(&buf, a, quant.F32, "llama"), ErrInvalid, "output.weight")
	if buf.Len() != 0 {
		t.Errorf("%d bytes written before failing", buf.Len())
	}
}

// TestPEFTAndGGUFAgree: the PEFT lora_B of q, permuted back by the formula,
// equals the GGUF lora_b, on a GQA model for k too.
func TestPEFTAndGGUFAgree(t *testing.T) {
	a := newAdapter(15, tiny, 2, []int{0}, []string{"q", "k"})
	dir := t.TempDir()
	if err := WritePEFT(dir, a, tiny.H, tiny.KV, quant.F32); err != nil {
		t.Fatal(err)
	}
	fromPEFT, err := ReadPEFT(dir, tiny.H, tiny.KV)
	if err != nil {
		t.Fatal(err)
	}
	fromGGUF, err := ReadGGUF(writeGGUF(t, a, quant.F32))
	if err != nil {
		t.Fatal(err)
	}
	sameAdapter(t, fromPEFT, fromGGUF, 0, 0)
}

// TestGGUFFile: the file helpers, and a failed write leaves the previous
// file in place and no temporary file behind.
func TestGGUFFile(t *testing.T) {
	a := newAdapter(16, tiny, 2, []int{0}, []string{"q", "v"})
	dir := t.TempDir()
	path := dir + "/qtune-LoRA.gguf"
	if err := WriteGGUFFile(path, a, quant.F32, "llama"); err != nil {
		t.Fatal(err)
	}
	bad := newAdapter(16, tiny, 2, []int{0}, []string{"q"})
	bad.Rank = 5
	err := WriteGGUFFile(path, bad, quant.F32, "llama")
	wantErr(t, err, ErrInvalid, "rank")
	if strings.Count(err.Error(), "adapter: ") != 1 {
		t.Errorf("prefix repeated: %v", err)
	}
	got, err := ReadGGUFFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, a) {
		t.Error("previous file damaged by a failed write")
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("%d entries, want only the adapter", len(entries))
	}
	_, err = ReadGGUFFile(dir + "/missing.gguf")
	wantErr(t, err, fs.ErrNotExist)
}

// TestReadGGUFForeignTypesAndNoAlpha: llama.cpp's converter can write the
// LoRA tensors as Q8_0 (--outtype q8_0) and other tools may leave out
// adapter.lora.alpha, which llama.cpp then reads as scale 1; both load,
// the values decoded exactly as ggml decodes them.
func TestReadGGUFForeignTypesAndNoAlpha(t *testing.T) {
	A := make([]float32, 4*32)
	for i := range A {
		A[i] = float32(math.Sin(float64(i))) * 0.1
	}
	qA := make([]byte, 4*34)
	if err := quant.Quantize(quant.Q8_0, qA, A); err != nil {
		t.Fatal(err)
	}
	want := make([]float32, len(A))
	if err := quant.Dequantize(quant.Q8_0, want, qA); err != nil {
		t.Fatal(err)
	}
	ts := []gguf.WriteTensor{
		gguf.BytesTensor("blk.0.attn_q.weight.lora_a", quant.Q8_0, []int64{32, 4}, qA),
		gguf.BytesTensor("blk.0.attn_q.weight.lora_b", quant.F32, []int64{4, 16}, f32Bytes(64, 0)),
	}
	a, err := ReadGGUF(foreign(t, baseKV(8), ts))
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range a.Layers[0].A {
		if v != want[i] {
			t.Fatalf("A[%d] = %g, Q8_0 decodes to %g", i, v, want[i])
		}
	}
	if a.Scale() != 2 { // alpha 8 / R 4
		t.Fatalf("scale %g, want 8/4", a.Scale())
	}
	noAlpha := baseKV(8)[:3]
	a, err = ReadGGUF(foreign(t, noAlpha, ts))
	if err != nil {
		t.Fatal(err)
	}
	if a.Scale() != 1 {
		t.Fatalf("without adapter.lora.alpha: scale %g, want llama.cpp's 1", a.Scale())
	}
}
