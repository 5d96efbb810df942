package model

import (
	"errors"
	"fmt"
	"github.com/qtune/qtune/internal/fsx"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/qtune/qtune/budget"
	"github.com/qtune/qtune/format/gguf"
	"github.com/qtune/qtune/format/llama2c"
	"github.com/qtune/qtune/format/safetensors"
	"github.com/qtune/qtune/kernels"
	"github.com/qtune/qtune/nn"
	"github.com/qtune/qtune/offload"
	"github.com/qtune/qtune/quant"
	"github.com/qtune/qtune/tensor"
	"github.com/qtune/qtune/tokenizer"
)

// Layer is one transformer block; matrices are views into the model file.
type Layer struct {
	AttnNorm []float32      // (C)
	Wq       kernels.Matrix // (H*D, C)
	Wk       kernels.Matrix // (Hkv*D, C)
	Wv       kernels.Matrix // (Hkv*D, C)
	Wo       kernels.Matrix // (C, H*D)
	FFNNorm  []float32      // (C)
	Gate     kernels.Matrix // (F, C)
	Up       kernels.Matrix // (F, C)
	Down     kernels.Matrix // (C, F)

	// Family features, nil or zero when absent.
	BQ, BK, BV   []float32 // (H*D), (Hkv*D), (Hkv*D) projection biases (Qwen2)
	QNorm, KNorm []float32 // (D) per-head RMSNorm of queries and keys before RoPE (Qwen3, Gemma 3)
	PostAttnNorm []float32 // (C) RMSNorm of the attention output before the residual (Gemma 3)
	PostFFNNorm  []float32 // (C) RMSNorm of the FFN output before the residual (Gemma 3)
	Window       int       // sliding-window attention size, 0 = full causal (Gemma 3's local layers)
	NoRope       bool      // no rotary embedding in this block (SmolLM3's every fourth)
}

// Model is a loaded Llama-family model.
type Model struct {
	Config    Config
	Format    string // "gguf", "safetensors", "llama2c"
	Path      string
	Embed     kernels.Matrix // (V, C)
	OutNorm   []float32      // (C)
	Output    kernels.Matrix // (V, C); the embedding when tied
	Layers    []Layer
	Tokenizer *tokenizer.Tokenizer
	// Tensors lists every tensor in file order (names in GGUF convention).
	Tensors []tensor.Tensor
	// GGUF is the parsed header when the model came from a GGUF file.
	GGUF *gguf.File
	// Adapters, when set, are applied by Forward (generation and
	// evaluation with a trained adapter).
	Adapters Adapters
	// Stream drops each block's weights from residency after use and reads
	// the next block's ahead (the plan's "disk" placement).
	Stream bool
	// Acct receives reservations for every large buffer (nil: none).
	Acct *budget.Accountant
	// Spill, when set, holds checkpointed block inputs in a file-backed
	// scratch that leaves memory between the forward and backward passes.
	Spill *offload.Scratch

	// What the tensors showed (Features reports them).
	ropeFromTensor, fusedQKV, fusedGateUp bool
	// fam is the model's family row.
	fam family

	rope    nn.Rope // global layers' rotary table
	ropeSWA nn.Rope // sliding-window layers' table when their base differs (Gemma 3)
	store   offload.Store
	pool    *kernels.Pool
}

// Options adjust loading.
type Options struct {
	// Tokenizer is a tokenizer file for formats that keep it apart
	// (llama2.c's tokenizer.bin). Empty: look beside the model.
	Tokenizer string
	// Pool runs the kernels; nil means kernels.Default().
	Pool *kernels.Pool
}

// ErrFormat marks a file that is not a model qtune can read.
var ErrFormat = errors.New("unrecognised model file")

// ErrUnsupported marks a model qtune cannot run: an architecture, family,
// RoPE scaling or feature it does not implement (the message names it and
// what is supported).
var ErrUnsupported = errors.New("not supported")

// unsupported marks err as ErrUnsupported, its message unchanged.
func unsupported(err error) error { return unsupportedErr{err} }

type unsupportedErr struct{ error }

func (e unsupportedErr) Unwrap() []error { return []error{e.error, ErrUnsupported} }

// Open loads a model from a GGUF file, a Hugging Face folder (config.json +
// safetensors) or a llama2.c checkpoint, keeping weights memory-mapped.
func Open(path string, opt Options) (*Model, error) {
	m := &Model{Path: path, pool: opt.Pool}
	if m.pool == nil {
		m.pool = kernels.Default()
	}
	var err error
	st, serr := os.Stat(path)
	switch {
	case serr != nil:
		return nil, fmt.Errorf("model: %w", serr)
	case st.IsDir():
		err = m.openHF(path, opt)
	default:
		err = m.openFile(path, opt)
	}
	if err != nil {
		m.store.Close()
		return nil, err
	}
	return m, nil
}

// Close unmaps the model files. The model must not be used afterwards.
//
// The accountant's cached slabs are unmapped too: an app that opens and
// closes models keeps no memory of earlier runs.
func (m *Model) Close() error {
	m.Acct.Trim()
	return m.store.Close()
}

func (m *Model) openFile(path string, opt Options) error {
	f, err := m.store.Map(path)
	if err != nil {
		return err
	}
	data := f.Bytes()
	if len(data) >= 4 && string(data[:4]) == "GGUF" {
		return m.openGGUF(path, data, opt)
	}
	if len(data) >= 4 && (string(data[:4]) == "FUGG") {
		return unsupported(fmt.Errorf("model: %s: big-endian GGUF is not supported", path))
	}
	if strings.EqualFold(filepath.Ext(path), ".gguf") {
		return fmt.Errorf("model: %s: %w: bad GGUF magic %q", path, ErrFormat, data[:min(4, len(data))])
	}
	if len(data) >= 9 && looksLikeSafetensors(data) {
		return m.openSafetensorsFile(path, opt)
	}
	if _, err := llama2c.ParseConfig(data); err != nil {
		return fmt.Errorf("model: %s: %w: not GGUF, safetensors or a llama2.c checkpoint (%v)", path, ErrFormat, err)
	}
	return m.openLlama2C(path, data, opt)
}

func looksLikeSafetensors(data []byte) bool {
	n := uint64(data[0]) | uint64(data[1])<<8 | uint64(data[2])<<16 | uint64(data[3])<<24 |
		uint64(data[4])<<32 | uint64(data[5])<<40 | uint64(data[6])<<48 | uint64(data[7])<<56
	return n > 1 && n < uint64(len(data)) && data[8] == '{'
}

func (m *Model) openGGUF(path string, data []byte, opt Options) error {
	f, err := gguf.Parse(data)
	if err != nil {
		return fmt.Errorf("model: %s: %w", path, err)
	}
	m.Format, m.GGUF = "gguf", f
	arch, _ := f.String("general.architecture")
	if arch == "" {
		return fmt.Errorf("model: %s: missing general.architecture", path)
	}
	fam, ok := familyOf(arch)
	if !ok {
		return unsupported(fmt.Errorf("model: %s: architecture %q is not supported (supported: %s)", path, arch, SupportedArchs()))
	}
	m.fam = fam
	tensors := make(map[string]tensor.Tensor, len(f.Tensors))
	for _, ti := range f.Tensors {
		t := tensor.Tensor{Name: ti.Name, Type: ti.Type, Shape: ti.Shape, Data: f.Data(data, ti)}
		tensors[ti.Name] = t
		m.Tensors = append(m.Tensors, t)
	}
	geti := func(k string) int {
		v, ok := f.Uint(arch + "." + k)
		if !ok || v > math.MaxInt32 {
			return 0
		}
		return int(v)
	}
	c := Config{Arch: arch,
		Dim: geti("embedding_length"), Hidden: geti("feed_forward_length"), Layers: geti("block_count"),
		Heads: geti("attention.head_count"), Context: geti("context_length"), RopeDims: geti("rope.dimension_count"),
	}
	c.KVHeads = geti("attention.head_count_kv")
	if c.KVHeads == 0 {
		c.KVHeads = c.Heads
	}
	if c.Heads > 0 {
		c.HeadDim = c.Dim / c.Heads
	}
	if kd := geti("attention.key_length"); kd > 0 {
		c.HeadDim = kd
	}
	if c.RopeDims == 0 {
		c.RopeDims = c.HeadDim
	}
	if eps, ok := f.Float(arch + ".attention.layer_norm_rms_epsilon"); ok {
		c.Eps = float32(eps)
	} else {
		c.Eps = 1e-5
	}
	c.RopeTheta = 10000
	if th, ok := f.Float(arch + ".rope.freq_base"); ok {
		c.RopeTheta = th
	}
	switch st, _ := f.String(arch + ".rope.scaling.type"); st {
	case "", "none", "linear":
		// llama.cpp reads an absent type as linear, with factor 1 unless given.
		if fac, ok := f.Float(arch + ".rope.scaling.factor"); ok && fac > 0 && fac != 1 && st != "none" {
			c.RopeLinear = fac
		}
	default:
		return unsupported(fmt.Errorf("model: %s: RoPE scaling %q is not supported (linear is)", path, st))
	}
	if err := ggufFamilyConfig(f, &c, fam); err != nil {
		return fmt.Errorf("model: %s: %w", path, err)
	}
	if emb, ok := tensors["token_embd.weight"]; ok && len(emb.Shape) == 2 {
		c.Vocab = int(emb.Shape[1])
	}
	if c.Context == 0 {
		c.Context = 2048
	}
	m.Config = c
	if err := m.build(tensors); err != nil {
		return fmt.Errorf("model: %s: %w", path, err)
	}
	if opt.Tokenizer != "" {
		return m.loadTokenizer(opt.Tokenizer)
	}
	tok, err := tokenizer.FromGGUF(f)
	if err != nil {
		return fmt.Errorf("model: %s: %w", path, err)
	}
	return m.setTokenizer(tok)
}

func (m *Model) openLlama2C(path string, data []byte, opt Options) error {
	lm, err := llama2c.Parse(data)
	if err != nil {
		return fmt.Errorf("model: %s: %w", path, err)
	}
	m.Format = "llama2c"
	m.fam = families[0]
	cfg := lm.Config
	c := Config{Arch: "llama", Dim: cfg.Dim, Hidden: cfg.HiddenDim, Layers: cfg.NLayers, Heads: cfg.NHeads,
		KVHeads: cfg.NKVHeads, Vocab: cfg.VocabSize, Context: cfg.SeqLen, Eps: 1e-5, RopeTheta: 10000}
	if c.Heads > 0 {
		c.HeadDim = c.Dim / c.Heads
	}
	c.RopeDims = c.HeadDim
	m.Config = c
	tensors := make(map[string]tensor.Tensor, len(lm.Tensors))
	for _, lt := range lm.Tensors {
		t := tensor.Tensor{Name: lt.Name, Type: quant.F32, Shape: lt.Shape, Data: lt.Data}
		tensors[lt.Name] = t
		m.Tensors = append(m.Tensors, t)
	}
	if err := m.build(tensors); err != nil {
		return fmt.Errorf("model: %s: %w", path, err)
	}
	tp := opt.Tokenizer
	if tp == "" {
		tp = findBeside(path, "tokenizer.bin", "tok*.bin")
	}
	if tp == "" {
		return fmt.Errorf("model: %s: %w: llama2.c models keep it in tokenizer.bin; pass --tokenizer", path, tokenizer.ErrNoTokenizer)
	}
	return m.loadTokenizer(tp)
}

// loadTokenizer reads a tokenizer kept apart from the weights: a GGUF file
// (a vocabulary-only GGUF or another model's), a SentencePiece
// tokenizer.model, a Hugging Face tokenizer folder or tokenizer.json, or a
// llama2.c tokenizer.bin.
func (m *Model) loadTokenizer(path string) error {
	var tok *tokenizer.Tokenizer
	st, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("model: tokenizer: %w", err)
	}
	switch {
	case st.IsDir():
		tok, err = tokenizer.FromHFDir(path)
	case filepath.Base(path) == "tokenizer.json":
		tok, err = tokenizer.FromHFDir(filepath.Dir(path))
	default:
		var b []byte
		b, err = fsx.ReadFile(path)
		if err != nil {
			break
		}
		switch {
		case len(b) >= 4 && string(b[:4]) == "GGUF":
			var f *gguf.File
			if f, err = gguf.Parse(b); err == nil {
				tok, err = tokenizer.FromGGUF(f)
			}
		case strings.HasSuffix(path, ".model"):
			tok, err = tokenizer.FromSentencePiece(b)
		default:
			tok, err = tokenizer.FromLlama2C(b, m.Config.Vocab)
		}
	}
	if err != nil {
		return fmt.Errorf("model: tokenizer %s: %w", path, err)
	}
	return m.setTokenizer(tok)
}

// setTokenizer checks that every token id fits the embedding.
func (m *Model) setTokenizer(tok *tokenizer.Tokenizer) error {
	if tok.VocabSize() > m.Config.Vocab {
		return fmt.Errorf("model: tokenizer has %d tokens but the model's embedding only %d", tok.VocabSize(), m.Config.Vocab)
	}
	m.Tokenizer = tok
	return nil
}

// findBeside returns the first file matching one of the patterns in the
// model's folder.
func findBeside(path string, patterns ...string) string {
	dir := filepath.Dir(path)
	for _, p := range patterns {
		ms, _ := filepath.Glob(filepath.Join(dir, p))
		sort.Strings(ms)
		for _, f := range ms {
			if f != path {
				return f
			}
		}
	}
	return ""
}

func (m *Model) openSafetensorsFile(path string, opt Options) error {
	if _, err := os.Stat(filepath.Join(filepath.Dir(path), "config.json")); err != nil {
		return fmt.Errorf("model: %s: a safetensors file needs its config.json beside it", path)
	}
	return m.openHF(filepath.Dir(path), opt)
}

func (m *Model) openHF(dir string, opt Options) error {
	cb, err := fsx.ReadFile(filepath.Join(dir, "config.json"))
	cb = fsx.TrimBOM(cb)
	if err != nil {
		return fmt.Errorf("model: %s: not a model folder: %w", dir, err)
	}
	mt, archs := hfModelType(cb)
	fam, ok := hfFamily(mt, archs)
	if !ok {
		if mt == "" {
			mt = strings.Join(archs, ",")
		}
		return unsupported(fmt.Errorf("model: %s/config.json: model_type %q is not supported (supported: %s)", dir, mt, hfTypes()))
	}
	m.fam = fam
	hc, err := safetensors.ParseConfig(cb)
	if err != nil {
		return fmt.Errorf("model: %s/config.json: %w", dir, err)
	}
	m.Format = "safetensors"
	c := Config{Arch: fam.arch, Dim: hc.HiddenSize, Hidden: hc.IntermediateSize, Layers: hc.NumHiddenLayers,
		Heads: hc.NumAttentionHeads, KVHeads: hc.NumKeyValueHeads, HeadDim: hc.HeadDim, Vocab: hc.VocabSize,
		Context: hc.MaxPositionEmbeddings, Eps: float32(hc.RMSNormEps), RopeTheta: hc.RopeTheta,
		RopeNeox: true, Tied: hc.TieWordEmbeddings}
	if c.KVHeads == 0 {
		c.KVHeads = c.Heads
	}
	if c.HeadDim == 0 && c.Heads > 0 {
		c.HeadDim = c.Dim / c.Heads
	}
	c.RopeDims = c.HeadDim
	if p := hc.PartialRotaryFactor; p > 0 && p < 1 {
		c.RopeDims = int(float64(c.HeadDim)*p) &^ 1
	}
	if c.RopeTheta == 0 {
		c.RopeTheta = 10000
	}
	if err := hfFamilyConfig(hc, &c, fam); err != nil {
		return fmt.Errorf("model: %s/config.json: %w", dir, err)
	}
	if c.Eps == 0 {
		c.Eps = 1e-6
	}
	if c.Context == 0 {
		c.Context = 2048
	}
	if rs := hc.RopeScaling; rs != nil {
		t, _ := rs["type"].(string)
		if t == "" {
			t, _ = rs["rope_type"].(string)
		}
		switch t {
		case "", "default":
		case "linear":
			if f, ok := rs["factor"].(float64); ok && f > 0 {
				c.RopeLinear = f
			}
		case "llama3":
			c.RopeFactors = llama3Factors(c, rs)
		case "longrope", "su":
			if fam.arch != "phi3" {
				return fmt.Errorf("model: %s/config.json: RoPE scaling %q is only supported for phi3", dir, t)
			}
		default:
			return unsupported(fmt.Errorf("model: %s/config.json: RoPE scaling %q is not supported (linear and llama3 are)", dir, t))
		}
	}
	m.Config = c
	files := []string{"model.safetensors"}
	ib, err := fsx.ReadFile(filepath.Join(dir, "model.safetensors.index.json"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		// Unreadable is not absent: loading model.safetensors instead
		// would hide it (or blame a file that is not there).
		return fmt.Errorf("model: %w", err)
	}
	if err == nil {
		ib = fsx.TrimBOM(ib)
		idx, err := safetensors.ParseIndex(ib)
		if err != nil {
			return fmt.Errorf("model: %s/model.safetensors.index.json: %w", dir, err)
		}
		seen := map[string]bool{}
		files = files[:0]
		for _, f := range idx.WeightMap {
			if strings.Contains(f, "/") || strings.Contains(f, `\`) || f == ".." {
				return fmt.Errorf("model: %s: shard name %q escapes the folder", dir, f)
			}
			if !seen[f] {
				seen[f] = true
				files = append(files, f)
			}
		}
		sort.Strings(files)
	}
	tensors := map[string]tensor.Tensor{}
	hfNames := map[string]string{} // GGUF name -> the file's name, for errors
	for _, fn := range files {
		p := filepath.Join(dir, fn)
		mf, err := m.store.Map(p)
		if err != nil {
			return fmt.Errorf("model: %w", err)
		}
		sf, err := safetensors.Parse(mf.Bytes())
		if err != nil {
			return fmt.Errorf("model: %s: %w", p, err)
		}
		for _, st := range sf.Tensors {
			name, ok := safetensors.GGUFNameFor(fam.arch, st.Name)
			if !ok {
				if strings.HasSuffix(st.Name, ".weight") || strings.HasSuffix(st.Name, ".bias") {
					// A weight qtune cannot place (an expert, a layer
					// number it cannot read) would be ignored: the model
					// would compute something other than the file.
					return fmt.Errorf("model: %s: tensor %q is not a weight qtune knows for %s models", p, st.Name, fam.arch)
				}
				continue // rotary caches (inv_freq) and other buffers
			}
			typ, ok := safetensors.TypeOf(st.DType)
			if !ok || !(typ == quant.F32 || typ == quant.F16 || typ == quant.BF16) {
				return fmt.Errorf("model: %s: tensor %q: dtype %s is not supported for weights", p, st.Name, st.DType)
			}
			shape := make([]int64, len(st.Shape))
			for i, d := range st.Shape {
				shape[len(shape)-1-i] = d
			}
			if _, dup := tensors[name]; dup {
				return fmt.Errorf("model: %s: tensor %q appears in two shards", dir, st.Name)
			}
			// Weights the config does not explain mean the config is wrong
			// (num_hidden_layers 3 beside tensors for 5 layers loaded 3).
			if rest, ok := strings.CutPrefix(name, "blk."); ok {
				if i := strings.IndexByte(rest, '.'); i > 0 {
					if l, err := strconv.Atoi(rest[:i]); err == nil && (l < 0 || l >= c.Layers) {
						return fmt.Errorf("model: %s: tensor %q is for layer %d, but config.json's num_hidden_layers is %d", p, st.Name, l, c.Layers)
					}
				}
			}
			t := tensor.Tensor{Name: name, Type: typ, Shape: shape, Data: st.Data}
			tensors[name] = t
			hfNames[name] = st.Name
			m.Tensors = append(m.Tensors, t)
		}
	}
	if _, ok := tensors["output.weight"]; !ok {
		m.Config.Tied = true
	}
	if err := m.build(tensors); err != nil {
		var ue *unexplainedError
		if errors.As(err, &ue) && hfNames[ue.name] != "" {
			ue.name = hfNames[ue.name]
			ue.count = "config.json's num_hidden_layers"
		}
		return fmt.Errorf("model: %s: %w", dir, err)
	}
	if opt.Tokenizer != "" {
		return m.loadTokenizer(opt.Tokenizer)
	}
	tok, err := tokenizer.FromHFDir(dir)
	if err != nil {
		return fmt.Errorf("model: %s: %w", dir, err)
	}
	return m.setTokenizer(tok)
}

// build checks every tensor's type and shape against the config and wires
// the views into layers.
func (m *Model) build(ts map[string]tensor.Tensor) error {
	c := &m.Config
	if err := c.Validate(); err != nil {
		return err
	}
	C, F, V := c.Dim, c.Hidden, c.Vocab
	qd, kvd := c.Heads*c.HeadDim, c.KVHeads*c.HeadDim
	used := make(map[string]bool, len(ts)) // what the config explains
	mat := func(name string, rows, cols int) (kernels.Matrix, error) {
		used[name] = true
		t, ok := ts[name]
		if !ok {
			return kernels.Matrix{}, fmt.Errorf("missing tensor %q", name)
		}
		if len(t.Shape) != 2 || t.Shape[0] != int64(cols) || t.Shape[1] != int64(rows) {
			return kernels.Matrix{}, fmt.Errorf("tensor %q has shape %v, want [%d %d]", name, t.Shape, cols, rows)
		}
		if err := t.Check(); err != nil {
			return kernels.Matrix{}, err
		}
		row := make([]float32, cols)
		if err := quant.DequantizeRange(t.Type, row, t.Data, t.Elems(), 0); err != nil {
			return kernels.Matrix{}, fmt.Errorf("tensor %q: %w", name, err)
		}
		if err := quant.CheckScales(t.Type, t.Data, t.Elems()); err != nil {
			return kernels.Matrix{}, fmt.Errorf("tensor %q: %w", name, err)
		}
		// The scan paged the tensor in; let it go until it is used, so a
		// model larger than the budget can still be loaded and streamed.
		offload.Release(t.Data)
		return kernels.Matrix{Type: t.Type, Rows: rows, Cols: cols, Data: t.Data}, nil
	}
	vec := func(name string, n int) ([]float32, error) {
		used[name] = true
		t, ok := ts[name]
		if !ok {
			return nil, fmt.Errorf("missing tensor %q", name)
		}
		if t.Elems() != int64(n) {
			return nil, fmt.Errorf("tensor %q has shape %v, want [%d]", name, t.Shape, n)
		}
		if err := t.Check(); err != nil {
			return nil, err
		}
		out := make([]float32, n)
		if err := quant.Dequantize(t.Type, out, t.Data); err != nil {
			return nil, fmt.Errorf("tensor %q: %w", name, err)
		}
		for _, v := range out {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				return nil, fmt.Errorf("tensor %q holds NaN or Inf", name)
			}
		}
		return out, nil
	}
	var err error
	if m.Embed, err = mat("token_embd.weight", V, C); err != nil {
		return err
	}
	if m.OutNorm, err = vec("output_norm.weight", C); err != nil {
		return err
	}
	if _, ok := ts["output.weight"]; ok && !c.Tied {
		if m.Output, err = mat("output.weight", V, C); err != nil {
			return err
		}
	} else {
		c.Tied = true
		m.Output = m.Embed
		used["output.weight"] = true // tied by the config: a copy is ignored, as transformers does
	}
	// opt is vec for a tensor that may be absent (nil then).
	opt := func(name string, n int) ([]float32, error) {
		if _, ok := ts[name]; !ok {
			return nil, nil
		}
		return vec(name, n)
	}
	// rowsOf splits a fused matrix's rows: the views share its bytes.
	rowsOf := func(w kernels.Matrix, r0, r1 int) kernels.Matrix {
		rb := len(w.Data) / w.Rows
		return kernels.Matrix{Type: w.Type, Rows: r1 - r0, Cols: w.Cols, Data: w.Data[r0*rb : r1*rb]}
	}
	// Gemma's Hugging Face norms hold w for x·(1+w): fold the 1 in here,
	// as llama.cpp's converter does in the file.
	offset := m.fam.hfNormOffset && m.Format == "safetensors"
	normv := func(name string, n int, optional bool) ([]float32, error) {
		var v []float32
		var err error
		if optional {
			v, err = opt(name, n)
		} else {
			v, err = vec(name, n)
		}
		if offset {
			for i := range v {
				v[i]++
			}
		}
		return v, err
	}
	if offset {
		for i := range m.OutNorm {
			m.OutNorm[i]++
		}
	}
	D := c.HeadDim
	m.Layers = make([]Layer, c.Layers)
	for i := range m.Layers {
		l := &m.Layers[i]
		p := fmt.Sprintf("blk.%d.", i)
		if l.AttnNorm, err = normv(p+"attn_norm.weight", C, false); err != nil {
			return err
		}
		if l.FFNNorm, err = normv(p+"ffn_norm.weight", C, false); err != nil {
			return err
		}
		if l.QNorm, err = normv(p+"attn_q_norm.weight", D, true); err != nil {
			return err
		}
		if l.KNorm, err = normv(p+"attn_k_norm.weight", D, true); err != nil {
			return err
		}
		if (l.QNorm == nil) != (l.KNorm == nil) {
			return fmt.Errorf("block %d has only one of attn_q_norm and attn_k_norm", i)
		}
		if l.PostAttnNorm, err = normv(p+"post_attention_norm.weight", C, true); err != nil {
			return err
		}
		if l.PostFFNNorm, err = normv(p+"post_ffw_norm.weight", C, true); err != nil {
			return err
		}
		if (l.PostAttnNorm == nil) != (l.PostFFNNorm == nil) {
			return fmt.Errorf("block %d has only one of post_attention_norm and post_ffw_norm", i)
		}
		for _, b := range []struct {
			dst  *[]float32
			name string
			n    int
		}{{&l.BQ, "attn_q.bias", qd}, {&l.BK, "attn_k.bias", kvd}, {&l.BV, "attn_v.bias", kvd}} {
			if *b.dst, err = opt(p+b.name, b.n); err != nil {
				return err
			}
		}
		if _, ok := ts[p+"attn_output.bias"]; ok {
			return fmt.Errorf("tensor %q: an output projection bias is not supported", p+"attn_output.bias")
		}
		if _, ok := ts[p+"attn_qkv.weight"]; ok {
			// Fused q|k|v rows (Phi-3; llama.cpp accepts it for any family).
			w, err := mat(p+"attn_qkv.weight", qd+2*kvd, C)
			if err != nil {
				return err
			}
			l.Wq, l.Wk, l.Wv = rowsOf(w, 0, qd), rowsOf(w, qd, qd+kvd), rowsOf(w, qd+kvd, qd+2*kvd)
			m.fusedQKV = true
			if _, ok := ts[p+"attn_qkv.bias"]; ok {
				return fmt.Errorf("tensor %q: a fused qkv bias is not supported", p+"attn_qkv.bias")
			}
		} else {
			for _, w := range []struct {
				dst        *kernels.Matrix
				name       string
				rows, cols int
			}{{&l.Wq, "attn_q", qd, C}, {&l.Wk, "attn_k", kvd, C}, {&l.Wv, "attn_v", kvd, C}} {
				if *w.dst, err = mat(p+w.name+".weight", w.rows, w.cols); err != nil {
					return err
				}
			}
		}
		if l.Wo, err = mat(p+"attn_output.weight", C, qd); err != nil {
			return err
		}
		if _, ok := ts[p+"ffn_gate.weight"]; !ok {
			// Fused gate|up rows in ffn_up (Phi-3): the first F rows are the
			// gate (llama.cpp's ggml_swiglu, Hugging Face's chunk(2)).
			w, err := mat(p+"ffn_up.weight", 2*F, C)
			if err != nil {
				return err
			}
			l.Gate, l.Up = rowsOf(w, 0, F), rowsOf(w, F, 2*F)
			m.fusedGateUp = true
		} else {
			if l.Gate, err = mat(p+"ffn_gate.weight", F, C); err != nil {
				return err
			}
			if l.Up, err = mat(p+"ffn_up.weight", F, C); err != nil {
				return err
			}
		}
		if l.Down, err = mat(p+"ffn_down.weight", C, F); err != nil {
			return err
		}
		for _, bn := range []string{"attn_output.bias", "ffn_up.bias", "ffn_down.bias", "ffn_gate.bias"} {
			if _, ok := ts[p+bn]; ok {
				return fmt.Errorf("tensor %q: feed-forward and output biases are not supported", p+bn)
			}
		}
		if c.swa != nil && c.swa[i] {
			l.Window = c.Window
		}
		if c.noRope != nil && c.noRope[i] {
			l.NoRope = true
		}
		c.qkNorm = c.qkNorm || l.QNorm != nil
		c.postNorms = c.postNorms || l.PostAttnNorm != nil
	}
	if _, ok := ts["output.bias"]; ok {
		return fmt.Errorf("tensor %q: an output bias is not supported", "output.bias")
	}
	if m.fam.arch == "phi3" {
		// Phi-3's projections are fused in its HF and llama.cpp files alike,
		// so adapters name them fused even over qtune's NF4 copy, which
		// stores the parts apart.
		m.fusedQKV, m.fusedGateUp = true, true
	}
	factors := c.RopeFactors
	for _, name := range []string{"rope_freqs.weight", "rope_factors_short.weight", "rope_factors_long.weight"} {
		rf, ok := ts[name]
		if !ok {
			continue
		}
		used[name] = true
		if rf.Type != quant.F32 || rf.Elems() != int64(c.RopeDims/2) {
			return fmt.Errorf("tensor %q: want %d F32 values (rope dimensions / 2), have %d of %s", name, c.RopeDims/2, rf.Elems(), rf.Type)
		}
		v := make([]float32, rf.Elems())
		if err := quant.Dequantize(quant.F32, v, rf.Data); err != nil {
			return err
		}
		for _, x := range v {
			if !(x > 0) || math.IsInf(float64(x), 0) {
				return fmt.Errorf("tensor %q holds %g; frequency factors must be positive", name, x)
			}
		}
		switch name {
		case "rope_factors_long.weight":
			c.RopeFactorsLong = v
		default:
			factors = v
			m.ropeFromTensor = true
		}
	}
	if err := checkExplained(ts, used, c.Layers); err != nil {
		return err
	}
	m.rope = nn.NewRopeScaled(c.RopeDims, c.RopeTheta, c.RopeNeox, factors, c.RopeLinear, c.RopeMscale)
	if c.Window > 0 && c.RopeThetaSWA != 0 {
		m.ropeSWA = nn.NewRopeScaled(c.RopeDims, c.RopeThetaSWA, c.RopeNeox, nil, 0, 1)
	}
	return nil
}

// Pool returns the worker pool the model's kernels run on.
func (m *Model) Pool() *kernels.Pool { return m.pool }

// WeightBytes is the total size of the weight tensors as stored.
func (m *Model) WeightBytes() int64 {
	var n int64
	for _, t := range m.Tensors {
		n += int64(len(t.Data))
	}
	return n
}

// llama3Factors computes Llama 3.1's per-frequency RoPE divisors from the
// HF rope_scaling block (what llama.cpp's converter stores as rope_freqs):
// long wavelengths are divided by factor, short ones kept, and the band
// between blended smoothly.
func llama3Factors(c Config, rs map[string]any) []float32 {
	num := func(k string, d float64) float64 {
		if v, ok := rs[k].(float64); ok && v > 0 {
			return v
		}
		return d
	}
	factor, low, high := num("factor", 8), num("low_freq_factor", 1), num("high_freq_factor", 4)
	old := num("original_max_position_embeddings", 8192)
	lowWave, highWave := old/low, old/high
	out := make([]float32, c.RopeDims/2)
	for j := range out {
		freq := math.Pow(c.RopeTheta, -float64(2*j)/float64(c.RopeDims))
		wave := 2 * math.Pi / freq
		switch {
		case wave < highWave:
			out[j] = 1
		case wave > lowWave:
			out[j] = float32(factor)
		default:
			smooth := (old/wave - low) / (high - low)
			out[j] = float32(1 / ((1-smooth)/factor + smooth))
		}
	}
	return out
}

// LayerBytes returns the stored weight bytes of each block.
func (m *Model) LayerBytes() []int64 {
	out := make([]int64, len(m.Layers))
	for i := range m.Layers {
		for k := Module(0); k < NumModules; k++ {
			out[i] += int64(len(m.Layers[i].Matrix(k).Data))
		}
	}
	return out
}

// OutputBytes is the output matrix's stored size (0 when tied to the
// embedding, which is then counted as the embedding).
func (m *Model) OutputBytes() int64 {
	if m.Config.Tied {
		return 0
	}
	return int64(len(m.Output.Data))
}

// EmbedBytes is the token embedding's stored size.
func (m *Model) EmbedBytes() int64 { return int64(len(m.Embed.Data)) }

// layerDone ends the use of block l's weights: when streaming, its pages
// leave the resident set and the next block is read ahead.
func (m *Model) layerDone(l, next int) {
	if !m.Stream {
		return
	}
	for k := Module(0); k < NumModules; k++ {
		offload.Release(m.Layers[l].Matrix(k).Data)
	}
	m.prefetch(next)
}

// prefetch reads block l's weights ahead of use (streaming only).
func (m *Model) prefetch(l int) {
	if m.Stream && l >= 0 && l < len(m.Layers) {
		for k := Module(0); k < NumModules; k++ {
			offload.Prefetch(m.Layers[l].Matrix(k).Data)
		}
	}
}

// embedDone drops the embedding rows just looked up (streaming only).
func (m *Model) embedDone() {
	if m.Stream && !m.Config.Tied {
		offload.Release(m.Embed.Data)
	}
}

// unexplainedError is a tensor in the file that the model built from its
// config does not use: a layer past the count, an expert, a name of another
// architecture. Ignoring it would run a model other than the file's.
type unexplainedError struct {
	name   string // as the file spells it
	layer  int    // -1 when not a block tensor
	layers int
	count  string // where the layer count comes from
}

func (e *unexplainedError) Error() string {
	if e.layer >= e.layers {
		return fmt.Sprintf("tensor %q is for layer %d, but %s is %d", e.name, e.layer, e.count, e.layers)
	}
	return fmt.Sprintf("tensor %q is not used by this model as its config describes it (%d layers)", e.name, e.layers)
}

// checkExplained returns an error naming the first tensor (by name) of ts
// that build did not use.
func checkExplained(ts map[string]tensor.Tensor, used map[string]bool, layers int) error {
	var names []string
	for n := range ts {
		if !used[n] {
			names = append(names, n)
		}
	}
	if len(names) == 0 {
		return nil
	}
	sort.Strings(names)
	e := &unexplainedError{name: names[0], layer: -1, layers: layers, count: "the file's block_count"}
	for _, n := range names { // a layer past the count is the likelier story: say so
		if rest, ok := strings.CutPrefix(n, "blk."); ok {
			if i := strings.IndexByte(rest, '.'); i > 0 {
				if l, err := strconv.Atoi(rest[:i]); err == nil && l >= layers {
					e.name, e.layer = n, l
					break
				}
			}
		}
	}
	return e
}
