package model

import (
	"context"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"

	"github.com/qtune/qtune/format/gguf"
	"github.com/qtune/qtune/format/safetensors"
	"github.com/qtune/qtune/offload"
	"github.com/qtune/qtune/quant"
	"github.com/qtune/qtune/tensor"
	"github.com/qtune/qtune/tokenizer"
)

// QuantizeTypes are the targets `qtune quantize` offers.
var QuantizeTypes = []quant.Type{quant.Q8_0, quant.Q4_0, quant.Q4_K, quant.Q6_K, quant.Q5_K, quant.Q3_K, quant.Q2_K, quant.IQ4_NL,
	quant.IQ4_XS, quant.NF4, quant.F16, quant.BF16, quant.F32}

// fileType is llama.cpp's general.file_type (llama_ftype) for a uniformly
// quantized file; a K-quant gets its _S variant, the uniform one.
var fileType = map[quant.Type]uint32{quant.F32: 0, quant.F16: 1, quant.Q4_0: 2, quant.Q4_1: 3, quant.Q8_0: 7, quant.Q5_0: 8, quant.Q5_1: 9,
	quant.Q2_K: 10, quant.Q3_K: 11, quant.Q4_K: 14, quant.Q5_K: 16, quant.Q6_K: 18, quant.IQ4_NL: 25, quant.IQ4_XS: 30, quant.BF16: 32}

// QuantizeReport summarises a quantization.
type QuantizeReport struct {
	Tensors   int     // tensors written
	Quantized int     // tensors converted to the target type
	RMSE      float64 // over all converted elements, vs the source values
	Bytes     int64   // tensor data written
}

// TargetType returns the type a tensor gets when a file is quantized to t:
// 1-D tensors and rows whose length is not a multiple of t's block stay F32
// (the policy of ggml's reference files; llama.cpp's own tool has more
// special cases).
func TargetType(src tensor.Tensor, t quant.Type) quant.Type {
	in, err := quant.Lookup(t)
	if err != nil || len(src.Shape) < 2 || src.Shape[0]%int64(in.BlockSize) != 0 {
		return quant.F32
	}
	return t
}

// Quantize writes the model as a GGUF v3 file with its matrices in type t.
// Standard types give a file llama.cpp loads; NF4 uses qtune's container
// (quant.NF4's doc). Hugging Face sources get their Q/K rows permuted to
// GGUF's order. Matrices are converted one at a time; the float32 working
// set is one tensor.
func Quantize(m *Model, w io.Writer, t quant.Type) (QuantizeReport, error) {
	return QuantizeWith(m, w, t, nil)
}

// QuantizeContext is Quantize stopping when ctx is done: it checks ctx
// before each tensor and then returns an error wrapping ctx.Err(), with
// what it wrote to w a partial file.
func QuantizeContext(ctx context.Context, m *Model, w io.Writer, t quant.Type) (QuantizeReport, error) {
	return quantize(ctx, m, w, t, nil)
}

// Delta changes a tensor's float values before they are quantized (export
// --merge adds s·B·A). f is the tensor in the model's row order, (out, in).
// It reports whether it changed anything.
type Delta func(name string, f []float32) bool

// QuantizeWith is Quantize with an optional delta applied to each tensor.
func QuantizeWith(m *Model, w io.Writer, t quant.Type, delta Delta) (QuantizeReport, error) {
	return quantize(context.Background(), m, w, t, delta)
}

func quantize(ctx context.Context, m *Model, w io.Writer, t quant.Type, delta Delta) (QuantizeReport, error) {
	if !quant.CanQuantize(t) {
		return QuantizeReport{}, fmt.Errorf("model: quantize: %w: cannot quantize to %s", quant.ErrUnknownType, t)
	}
	if err := m.checkGGUFExpressible(); err != nil {
		return QuantizeReport{}, err
	}
	kv, err := m.metadata()
	if err != nil {
		return QuantizeReport{}, err
	}
	if ft, ok := fileType[t]; ok {
		kv = append(kv, gguf.KVOf("general.file_type", ft))
	} else {
		kv = append(kv, gguf.KVOf("qtune.file_type", t.String()))
	}
	if in, _ := quant.Lookup(t); in.Quantized {
		kv = append(kv, gguf.KVOf("general.quantization_version", uint32(2)))
	}
	var rep QuantizeReport
	var sqerr float64
	var nerr int64
	var wts []gguf.WriteTensor
	c := m.Config
	// Fused tensors (Phi-3's attn_qkv and gate|up ffn_up) are written whole
	// for ggml's row-contiguous types, with any delta applied to each part
	// under the part's name; NF4 cannot be viewed by rows, so an NF4 file
	// (qtune's own) gets the parts as separate tensors, which the loader
	// reads as the same model.
	var srcs []tensor.Tensor
	var scratch rowScratch // one set of buffers for every tensor: no garbage per tensor
	parts := map[string][]fusedPart{}
	for _, src := range m.Tensors {
		ps := m.fusedParts(src)
		if ps == nil {
			srcs = append(srcs, src)
			continue
		}
		if t != quant.NF4 || TargetType(src, t) != quant.NF4 {
			srcs = append(srcs, src)
			parts[src.Name] = ps
			continue
		}
		rb := int64(len(src.Data)) / src.Shape[1]
		for _, p := range ps {
			srcs = append(srcs, tensor.Tensor{Name: p.name, Type: src.Type, Shape: []int64{src.Shape[0], int64(p.r1 - p.r0)},
				Data: src.Data[int64(p.r0)*rb : int64(p.r1)*rb]})
		}
	}
	if delta != nil && len(parts) > 0 {
		inner := delta
		delta = func(name string, f []float32) bool {
			ps, ok := parts[name]
			if !ok {
				return inner(name, f)
			}
			changed := false
			cols := len(f) / ps[len(ps)-1].r1
			for _, p := range ps {
				if inner(p.name, f[p.r0*cols:p.r1*cols]) {
					changed = true
				}
			}
			return changed
		}
	}
	for _, src := range srcs {
		src := src
		tt := TargetType(src, t)
		n := src.Elems()
		size, err := quant.Bytes(tt, n)
		if err != nil {
			return rep, fmt.Errorf("model: quantize %q: %w", src.Name, err)
		}
		heads := 0
		hf := m.Format == "safetensors"
		// llama.cpp's converter permutes q/k rows only for the families it
		// rotates by adjacent pairs, and adds Gemma's norm offset.
		if hf && !m.fam.ggufNeox {
			switch {
			case strings.HasSuffix(src.Name, ".attn_q.weight"):
				heads = c.Heads
			case strings.HasSuffix(src.Name, ".attn_k.weight"):
				heads = c.KVHeads
			}
		}
		offset := hf && m.fam.hfNormOffset && strings.HasSuffix(src.Name, "norm.weight")
		converted := tt != src.Type || offset
		wts = append(wts, gguf.WriteTensor{Name: src.Name, Type: tt, Shape: src.Shape, Size: size,
			Write: func(w io.Writer) error {
				if err := ctx.Err(); err != nil {
					return fmt.Errorf("model: quantize: stopped before %q: %w", src.Name, err)
				}
				// The source's pages leave the resident set once written:
				// converting a model holds one piece, not the model.
				defer offload.Release(src.Data)
				if !converted && heads == 0 && delta == nil {
					_, err := w.Write(src.Data)
					return err
				}
				if delta == nil && len(src.Shape) == 2 && (tt != quant.NF4 || src.Shape[0]%64 == 0) {
					sq, err := quantizeRows(w, src, tt, heads, offset, &scratch)
					if err != nil {
						return fmt.Errorf("model: quantize %q: %w", src.Name, err)
					}
					if tt == t {
						sqerr += sq
						nerr += n
						rep.Quantized++
					}
					return nil
				}
				f := make([]float32, n)
				if err := quant.Dequantize(src.Type, f, src.Data); err != nil {
					return fmt.Errorf("model: quantize %q: %w", src.Name, err)
				}
				changed := delta != nil && delta(src.Name, f)
				if !converted && heads == 0 && !changed {
					_, err := w.Write(src.Data)
					return err
				}
				if offset {
					for i := range f {
						f[i]++
					}
				}
				if heads > 0 {
					safetensors.PermuteRowsInPlace(f, len(f)/int(src.Shape[0]), int(src.Shape[0]), heads, false)
				}
				out := make([]byte, size)
				if err := quant.Quantize(tt, out, f); err != nil {
					return fmt.Errorf("model: quantize %q: %w", src.Name, err)
				}
				if tt == t {
					sq, err := squaredError(tt, out, f)
					if err != nil {
						return err
					}
					sqerr += sq
					nerr += n
					rep.Quantized++
				}
				_, err := w.Write(out)
				return err
			}})
		rep.Bytes += size
	}
	for _, rf := range m.ropeFactorTensors() {
		wts = append(wts, rf)
		rep.Bytes += rf.Size
	}
	rep.Tensors = len(wts)
	// The RMSE is only known after the data is written, so it cannot go in
	// the header; it is reported to the caller (and by `qtune inspect --errors`).
	if err := gguf.Write(w, 3, kv, wts, 0); err != nil {
		return rep, err
	}
	if nerr > 0 {
		rep.RMSE = math.Sqrt(sqerr / float64(nerr))
	}
	return rep, nil
}

// quantizeRows writes src (a 2-D tensor) converted to tt a piece of rows at
// a time, so that no more than about a MiB of it is ever float32: rows
// permuted per head from HF's RoPE layout when heads > 0, 1 added to every
// value when offset (Gemma's norms). Row-wise types are written as they are
// made; NF4, whose scales span the tensor, is built in two passes over the
// pieces (quant.NF4Stream) and written whole (its size is the output's).
// It returns the summed squared error against the float values.
func quantizeRows(w io.Writer, src tensor.Tensor, tt quant.Type, heads int, offset bool, sc *rowScratch) (float64, error) {
	cols, rows := int(src.Shape[0]), int(src.Shape[1])
	n := int64(rows) * int64(cols)
	var rowBytes int64 // a source row's bytes (NF4's side tables span the tensor: 0)
	if src.Type != quant.NF4 {
		if b, err := quant.Bytes(src.Type, int64(cols)); err == nil && b*int64(rows) == int64(len(src.Data)) {
			rowBytes = b
		}
	}
	dstRow, err := quant.Bytes(tt, int64(cols))
	if err != nil {
		return 0, err
	}
	chunk := max(1, (1<<18)/cols) // rows per piece: about 1 MiB of float32
	f, back := sc.floats(chunk * cols)
	read := func(r0, r1 int) ([]float32, error) {
		buf := f[:(r1-r0)*cols]
		lo, hi := int64(len(src.Data)), int64(0) // the source bytes read
		for r := r0; r < r1; r++ {
			sr := r
			if heads > 0 {
				if sr = safetensors.HFRowForGGUF(r, heads, rows); sr < 0 {
					return nil, fmt.Errorf("%d rows do not split into %d heads", rows, heads)
				}
			}
			if err := quant.DequantizeRange(src.Type, buf[(r-r0)*cols:(r-r0+1)*cols], src.Data, n, int64(sr)*int64(cols)); err != nil {
				return nil, err
			}
			lo, hi = min(lo, int64(sr)*rowBytes), max(hi, int64(sr+1)*rowBytes)
		}
		// What was read leaves the resident set again, with a margin: the
		// kernel maps pages around each fault (behind it too), which a
		// release of the rows alone would leave mapped.
		if rowBytes > 0 {
			const margin = 1 << 20
			offload.Release(src.Data[max(0, lo-margin):min(int64(len(src.Data)), hi+margin)])
		}
		for i, x := range buf { // a NaN would vanish into the new type's blocks
			if f := float64(x); math.IsNaN(f) || math.IsInf(f, 0) {
				return nil, fmt.Errorf("element %d of row %d is %v", (r0*cols+i)%cols, r0+i/cols, x)
			}
		}
		if offset {
			for i := range buf {
				buf[i]++
			}
		}
		return buf, nil
	}
	var sq float64
	if tt != quant.NF4 {
		out := sc.bytes(int64(chunk) * dstRow)
		for r0 := 0; r0 < rows; r0 += chunk {
			r1 := min(rows, r0+chunk)
			x, err := read(r0, r1)
			if err != nil {
				return 0, err
			}
			o := out[:int64(r1-r0)*dstRow]
			if err := quant.Quantize(tt, o, x); err != nil {
				return 0, err
			}
			if err := quant.Dequantize(tt, back[:len(x)], o); err != nil {
				return 0, err
			}
			r := quant.RMSE(back[:len(x)], x)
			sq += r * r * float64(len(x))
			if _, err := w.Write(o); err != nil {
				return 0, err
			}
		}
		return sq, nil
	}
	size, err := quant.Bytes(quant.NF4, n)
	if err != nil {
		return 0, err
	}
	out := sc.bytes(size)
	s, err := quant.NewNF4Stream(out, n)
	if err != nil {
		return 0, err
	}
	for pass := 0; pass < 2; pass++ {
		for r0 := 0; r0 < rows; r0 += chunk {
			r1 := min(rows, r0+chunk)
			x, err := read(r0, r1)
			if err != nil {
				return 0, err
			}
			if pass == 0 {
				err = s.Scan(x)
			} else if err = s.Encode(x); err == nil {
				err = quant.DequantizeRange(quant.NF4, back[:len(x)], out, n, int64(r0)*int64(cols))
				r := quant.RMSE(back[:len(x)], x)
				sq += r * r * float64(len(x))
			}
			if err != nil {
				return 0, err
			}
		}
	}
	_, err = w.Write(out)
	return sq, err
}

// rowScratch holds quantizeRows' buffers across tensors.
type rowScratch struct {
	f, back []float32
	out     []byte
}

func (s *rowScratch) floats(n int) (f, back []float32) {
	if len(s.f) < n {
		s.f, s.back = make([]float32, n), make([]float32, n)
	}
	return s.f[:n], s.back[:n]
}

func (s *rowScratch) bytes(n int64) []byte {
	if int64(len(s.out)) < n {
		s.out = nil // the old buffer is garbage before the new one is made
		s.out = make([]byte, n)
	}
	return s.out[:n]
}

// metadata returns the GGUF key-value pairs describing the model: the source
// file's own when it was GGUF (less the keys a conversion changes), else
// keys built from the config and tokenizer.
func (m *Model) metadata() ([]gguf.KV, error) {
	var kv []gguf.KV
	if m.GGUF != nil {
		for _, p := range m.GGUF.KV {
			switch p.Key {
			case "general.file_type", "general.quantization_version", "general.alignment":
				continue
			}
			kv = append(kv, p)
		}
	} else {
		c := m.Config
		a := c.Arch
		kv = append(kv,
			gguf.KVOf("general.architecture", a),
			gguf.KVOf("general.name", "qtune-converted"),
			gguf.KVOf(a+".context_length", uint32(c.Context)),
			gguf.KVOf(a+".embedding_length", uint32(c.Dim)),
			gguf.KVOf(a+".block_count", uint32(c.Layers)),
			gguf.KVOf(a+".feed_forward_length", uint32(c.Hidden)),
			gguf.KVOf(a+".attention.head_count", uint32(c.Heads)),
			gguf.KVOf(a+".attention.head_count_kv", uint32(c.KVHeads)),
			gguf.KVOf(a+".attention.layer_norm_rms_epsilon", c.Eps),
			gguf.KVOf(a+".rope.dimension_count", uint32(c.RopeDims)),
			gguf.KVOf(a+".rope.freq_base", float32(c.RopeTheta)),
			gguf.KVOf(a+".vocab_size", uint32(c.Vocab)),
		)
		if c.HeadDim != c.Dim/c.Heads {
			kv = append(kv, gguf.KVOf(a+".attention.key_length", uint32(c.HeadDim)), gguf.KVOf(a+".attention.value_length", uint32(c.HeadDim)))
		}
		if c.RopeLinear > 0 {
			kv = append(kv, gguf.KVOf(a+".rope.scaling.type", "linear"), gguf.KVOf(a+".rope.scaling.factor", float32(c.RopeLinear)))
		}
		kv = append(kv, m.familyKV()...)
		if m.Tokenizer != nil {
			kv = append(kv, tokenizerKV(m.Tokenizer.Vocab())...)
		}
	}
	return kv, nil
}

// fusedPart is one module's rows [r0, r1) of a fused tensor, named as the
// module's own tensor would be.
type fusedPart struct {
	name   string
	r0, r1 int
}

// fusedParts returns the parts of a fused tensor of m (attn_qkv: q|k|v;
// Phi-3's ffn_up: gate|up), nil for any other tensor.
func (m *Model) fusedParts(t tensor.Tensor) []fusedPart {
	if len(t.Shape) != 2 {
		return nil
	}
	var l int
	var rest string
	if _, err := fmt.Sscanf(t.Name, "blk.%d.%s", &l, &rest); err != nil || l < 0 || l >= len(m.Layers) {
		return nil
	}
	c := m.Config
	p := fmt.Sprintf("blk.%d.", l)
	qd, kvd, F := c.Heads*c.HeadDim, c.KVHeads*c.HeadDim, c.Hidden
	switch {
	case rest == "attn_qkv.weight" && t.Shape[1] == int64(qd+2*kvd):
		return []fusedPart{{p + "attn_q.weight", 0, qd}, {p + "attn_k.weight", qd, qd + kvd}, {p + "attn_v.weight", qd + kvd, qd + 2*kvd}}
	case rest == "ffn_up.weight" && t.Shape[1] == int64(2*F):
		return []fusedPart{{p + "ffn_gate.weight", 0, F}, {p + "ffn_up.weight", F, 2 * F}}
	}
	return nil
}

// familyKV is the family's own metadata for a GGUF written from a
// Hugging Face source, as llama.cpp's converter writes it.
func (m *Model) familyKV() []gguf.KV {
	c := m.Config
	a := c.Arch
	var kv []gguf.KV
	if c.RopeMscale != 0 && c.RopeMscale != 1 {
		kv = append(kv, gguf.KVOf(a+".rope.scaling.attn_factor", float32(c.RopeMscale)))
	}
	if c.RopeOrigContext > 0 {
		kv = append(kv, gguf.KVOf(a+".rope.scaling.original_context_length", uint32(c.RopeOrigContext)))
	}
	if c.Window > 0 {
		swa := make([]bool, len(m.Layers))
		for i := range m.Layers {
			swa[i] = m.Layers[i].Window > 0
		}
		kv = append(kv, gguf.KVOf(a+".attention.sliding_window", uint32(c.Window)),
			gguf.KVOf(a+".attention.sliding_window_pattern", swa))
		if c.RopeThetaSWA != 0 {
			kv = append(kv, gguf.KVOf(a+".rope.freq_base_swa", float32(c.RopeThetaSWA)))
		}
	}
	return kv
}

// ropeFactorTensors returns the RoPE frequency factor tensors for a
// source whose factors came from its config (a Llama 3.1+ HF folder:
// rope_freqs; a Phi-3 one: rope_factors_short and _long), so that the
// written GGUF keeps them; none when the source has the tensors already.
func (m *Model) ropeFactorTensors() []gguf.WriteTensor {
	c := m.Config
	if len(c.RopeFactors) == 0 {
		return nil
	}
	for _, t := range m.Tensors {
		if strings.HasPrefix(t.Name, "rope_f") {
			return nil
		}
	}
	one := func(name string, f []float32) gguf.WriteTensor {
		b := make([]byte, 4*len(f))
		_ = quant.Quantize(quant.F32, b, f) // F32 cannot fail
		return gguf.BytesTensor(name, quant.F32, []int64{int64(len(f))}, b)
	}
	if c.Arch == "phi3" {
		out := []gguf.WriteTensor{one("rope_factors_short.weight", c.RopeFactors)}
		if len(c.RopeFactorsLong) > 0 {
			out = append(out, one("rope_factors_long.weight", c.RopeFactorsLong))
		}
		return out
	}
	return []gguf.WriteTensor{one("rope_freqs.weight", c.RopeFactors)}
}

func tokenizerKV(v tokenizer.Vocab) []gguf.KV {
	var kv []gguf.KV
	if v.Kind == tokenizer.SPM {
		kv = append(kv, gguf.KVOf("tokenizer.ggml.model", "llama"))
	} else {
		kv = append(kv, gguf.KVOf("tokenizer.ggml.model", "gpt2"))
		if v.Pre != "" {
			kv = append(kv, gguf.KVOf("tokenizer.ggml.pre", v.Pre))
		}
	}
	kv = append(kv, gguf.KVOf("tokenizer.ggml.tokens", v.Tokens))
	if len(v.Scores) == len(v.Tokens) {
		kv = append(kv, gguf.KVOf("tokenizer.ggml.scores", v.Scores))
	}
	if len(v.Types) == len(v.Tokens) {
		kv = append(kv, gguf.KVOf("tokenizer.ggml.token_type", v.Types))
	}
	if len(v.Merges) > 0 {
		kv = append(kv, gguf.KVOf("tokenizer.ggml.merges", v.Merges))
	}
	for _, p := range []struct {
		k  string
		id int
	}{{"bos", v.BOS}, {"eos", v.EOS}, {"unknown", v.UNK}, {"padding", v.PAD}} {
		if p.id >= 0 {
			kv = append(kv, gguf.KVOf("tokenizer.ggml."+p.k+"_token_id", uint32(p.id)))
		}
	}
	// Declared end-of-generation ids that the token texts do not already
	// make EOG (tokenizer.EOG's rules) travel as eot and eom ids.
	var extra []int
	for _, id := range v.EOG {
		if id != v.EOS && !tokenizer.EOGText(v.Tokens[id]) && !slices.Contains(extra, id) {
			extra = append(extra, id)
		}
	}
	for i, k := range []string{"eot", "eom"} {
		if i < len(extra) {
			kv = append(kv, gguf.KVOf("tokenizer.ggml."+k+"_token_id", uint32(extra[i])))
		}
	}
	kv = append(kv, gguf.KVOf("tokenizer.ggml.add_bos_token", v.AddBOS), gguf.KVOf("tokenizer.ggml.add_space_prefix", v.AddSpacePrefix))
	if v.ChatTemplate != "" {
		kv = append(kv, gguf.KVOf("tokenizer.chat_template", v.ChatTemplate))
	}
	return kv
}

// QuantError returns the RMSE that quantizing the tensors to t would cause,
// over the elements that would be converted, against their current values
// (the F32 original for a float file). One tensor is decoded at a time.
func QuantError(ts []tensor.Tensor, t quant.Type) (rmse float64, elems int64, err error) {
	var sq float64
	for _, src := range ts {
		if TargetType(src, t) != t || src.Type == t {
			continue
		}
		n := src.Elems()
		f := make([]float32, n)
		if err := quant.Dequantize(src.Type, f, src.Data); err != nil {
			return 0, 0, fmt.Errorf("model: %q: %w", src.Name, err)
		}
		size, err := quant.Bytes(t, n)
		if err != nil {
			return 0, 0, err
		}
		q := make([]byte, size)
		if err := quant.Quantize(t, q, f); err != nil {
			return 0, 0, fmt.Errorf("model: %q: %w", src.Name, err)
		}
		e, err := squaredError(t, q, f)
		if err != nil {
			return 0, 0, err
		}
		sq += e
		elems += n
	}
	if elems == 0 {
		return 0, 0, nil
	}
	return math.Sqrt(sq / float64(elems)), elems, nil
}

// squaredError decodes q (type t) and returns Σ (decoded − f)².
func squaredError(t quant.Type, q []byte, f []float32) (float64, error) {
	back := make([]float32, len(f))
	if err := quant.Dequantize(t, back, q); err != nil {
		return 0, err
	}
	r := quant.RMSE(back, f)
	return r * r * float64(len(f)), nil
}
