package tokenizer

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/qtune/qtune/internal/fsx"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// maxFileSize bounds what FromHFDir reads from one file.
const maxFileSize = 1 << 30

func readFile(dir, name string) ([]byte, bool, error) {
	p := filepath.Join(dir, name)
	st, err := os.Stat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("tokenizer: %w", err)
	}
	if st.Size() > maxFileSize {
		return nil, false, fmt.Errorf("%w: %s: %d bytes", ErrFormat, p, st.Size())
	}
	b, err := fsx.ReadFile(p)
	if err != nil {
		return nil, false, fmt.Errorf("tokenizer: %w", err)
	}
	return fsx.TrimBOM(b), true, nil
}

// FromHFDir loads a Hugging Face tokenizer folder: tokenizer.json when
// present, else tokenizer.model (SentencePiece), else vocab.json +
// merges.txt (GPT-2 style). tokenizer_config.json, when present, supplies
// bos_token, eos_token, unk_token, pad_token, add_bos_token, add_eos_token
// and chat_template (chat_template.jinja, when present, replaces it). A
// folder with none of the three gives ErrNoTokenizer.
//
// In tokenizer.json only model type BPE is supported, in two flavours: byte
// level (ByteLevel pre-tokenizer or decoder; the pre-tokenizer regex must be
// GPT-2's, Llama 3's or Qwen2's, or Digits+ByteLevel for SmolLM) and
// SentencePiece style (Metaspace, or a normalizer replacing " " by "▁",
// usually with byte_fallback), which becomes an SPM vocabulary whose scores
// are minus the rank of the first merge producing each piece.
func FromHFDir(dir string) (*Tokenizer, error) {
	cfgData, hasCfg, err := readFile(dir, "tokenizer_config.json")
	if err != nil {
		return nil, err
	}
	var cfg *hfConfig
	if hasCfg {
		cfg = new(hfConfig)
		if err := json.Unmarshal(cfgData, cfg); err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrFormat, filepath.Join(dir, "tokenizer_config.json"), err)
		}
	}
	var v Vocab
	var o options
	if data, ok, err := readFile(dir, "tokenizer.json"); err != nil {
		return nil, err
	} else if ok {
		if v, err = parseTokenizerJSON(data); err != nil {
			return nil, fmt.Errorf("%w (%s)", err, filepath.Join(dir, "tokenizer.json"))
		}
	} else if data, ok, err := readFile(dir, "tokenizer.model"); err != nil {
		return nil, err
	} else if ok {
		t, err := FromSentencePiece(data)
		if err != nil {
			return nil, fmt.Errorf("%w (%s)", err, filepath.Join(dir, "tokenizer.model"))
		}
		v, o = t.v, options{removeExtraWhitespace: t.removeExtra}
	} else if vocab, ok, err := readFile(dir, "vocab.json"); err != nil {
		return nil, err
	} else if ok {
		merges, ok, err := readFile(dir, "merges.txt")
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, fmt.Errorf("%w: %s has vocab.json but no merges.txt", ErrFormat, dir)
		}
		if v, err = parseVocabMerges(vocab, merges); err != nil {
			return nil, fmt.Errorf("%w (%s)", err, dir)
		}
	} else {
		return nil, fmt.Errorf("%w: %s has no tokenizer.json, tokenizer.model or vocab.json", ErrNoTokenizer, dir)
	}
	if cfg != nil {
		cfg.apply(&v)
	}
	// transformers saves the chat template beside the tokenizer as
	// chat_template.jinja and prefers it to tokenizer_config.json's.
	if tmpl, ok, err := readFile(dir, "chat_template.jinja"); err != nil {
		return nil, err
	} else if ok {
		v.ChatTemplate = string(tmpl)
	}
	if v.EOG, err = generationEOS(dir); err != nil {
		return nil, err
	}
	return build(v, o)
}

// hfToken is a special token in tokenizer_config.json: a string, an
// AddedToken object, or null (no such token).
type hfToken struct {
	present bool
	content string
}

func (t *hfToken) UnmarshalJSON(b []byte) error {
	t.present = true
	if bytes.Equal(b, []byte("null")) {
		return nil
	}
	if len(b) > 0 && b[0] == '"' {
		return json.Unmarshal(b, &t.content)
	}
	var o struct {
		Content string `json:"content"`
	}
	if err := json.Unmarshal(b, &o); err != nil {
		return err
	}
	t.content = o.Content
	return nil
}

// hfTemplate is chat_template: a string or a list of {name, template}.
type hfTemplate struct{ s string }

func (t *hfTemplate) UnmarshalJSON(b []byte) error {
	if bytes.Equal(b, []byte("null")) {
		return nil
	}
	if len(b) > 0 && b[0] == '"' {
		return json.Unmarshal(b, &t.s)
	}
	var l []struct {
		Name     string `json:"name"`
		Template string `json:"template"`
	}
	if err := json.Unmarshal(b, &l); err != nil {
		return err
	}
	for i, e := range l {
		if i == 0 || e.Name == "default" {
			t.s = e.Template
		}
	}
	return nil
}

type hfConfig struct {
	BOS          hfToken     `json:"bos_token"`
	EOS          hfToken     `json:"eos_token"`
	UNK          hfToken     `json:"unk_token"`
	PAD          hfToken     `json:"pad_token"`
	AddBOS       *bool       `json:"add_bos_token"`
	AddEOS       *bool       `json:"add_eos_token"`
	ChatTemplate *hfTemplate `json:"chat_template"`
}

func (c *hfConfig) apply(v *Vocab) {
	find := func(tok hfToken, cur *int) {
		if !tok.present {
			return
		}
		if tok.content == "" {
			*cur = -1 // explicit null
			return
		}
		for i, s := range v.Tokens {
			if s == tok.content {
				*cur = i
				if v.Types != nil && v.Types[i] == TypeNormal && cur != &v.UNK {
					v.Types[i] = TypeControl
				}
				return
			}
		}
	}
	find(c.BOS, &v.BOS)
	find(c.EOS, &v.EOS)
	find(c.UNK, &v.UNK)
	find(c.PAD, &v.PAD)
	if c.AddBOS != nil {
		v.AddBOS = *c.AddBOS
	}
	if c.AddEOS != nil {
		v.AddEOS = *c.AddEOS
	}
	if c.ChatTemplate != nil {
		v.ChatTemplate = c.ChatTemplate.s
	}
}

// parseVocabMerges reads GPT-2's vocab.json ({token: id}) and merges.txt.
func parseVocabMerges(vocabData, mergesData []byte) (Vocab, error) {
	var vocab map[string]int
	if err := json.Unmarshal(vocabData, &vocab); err != nil {
		return Vocab{}, fmt.Errorf("%w: vocab.json: %w", ErrFormat, err)
	}
	tokens, err := denseTokens(vocab, nil)
	if err != nil {
		return Vocab{}, err
	}
	var merges []string
	sc := bufio.NewScanner(bytes.NewReader(mergesData))
	sc.Buffer(make([]byte, 0, 1<<16), 1<<20)
	for first := true; sc.Scan(); first = false {
		line := strings.TrimRight(sc.Text(), "\r")
		if line == "" || (first && strings.HasPrefix(line, "#version")) {
			continue
		}
		merges = append(merges, line)
	}
	if err := sc.Err(); err != nil {
		return Vocab{}, fmt.Errorf("%w: merges.txt: %w", ErrFormat, err)
	}
	v := Vocab{Kind: BPE, Tokens: tokens, Merges: merges, BOS: -1, EOS: -1, UNK: -1, PAD: -1, Pre: "gpt-2"}
	v.Types = make([]int32, len(tokens))
	for i, s := range tokens {
		v.Types[i] = TypeNormal
		if s == "" {
			v.Types[i] = TypeUnused
		}
	}
	if id, ok := vocab["<|endoftext|>"]; ok { // GPT-2's defaults
		v.BOS, v.EOS = id, id
		v.Types[id] = TypeControl
	}
	return v, nil
}

// denseTokens turns {token: id} plus added tokens into a slice by id. Ids
// must be in [0, number of entries); gaps become "" unused tokens.
func denseTokens(vocab map[string]int, added []hfAdded) ([]string, error) {
	n := len(vocab) + len(added)
	max := -1
	for s, id := range vocab {
		if id < 0 || id >= n {
			return nil, fmt.Errorf("%w: token %q: id %d outside [0, %d)", ErrFormat, s, id, n)
		}
		if id > max {
			max = id
		}
	}
	for _, a := range added {
		if a.ID < 0 || a.ID >= n {
			return nil, fmt.Errorf("%w: added token %q: id %d outside [0, %d)", ErrFormat, a.Content, a.ID, n)
		}
		if a.ID > max {
			max = a.ID
		}
	}
	tokens := make([]string, max+1)
	for s, id := range vocab {
		tokens[id] = s
	}
	for _, a := range added {
		tokens[a.ID] = a.Content
	}
	return tokens, nil
}

type hfAdded struct {
	ID      int    `json:"id"`
	Content string `json:"content"`
	Special bool   `json:"special"`
}

type hfComponent struct {
	Type             string          `json:"type"`
	Pattern          json.RawMessage `json:"pattern"`
	Content          string          `json:"content"`
	Prepend          string          `json:"prepend"`
	AddPrefixSpace   *bool           `json:"add_prefix_space"`
	PrependScheme    string          `json:"prepend_scheme"`
	UseRegex         *bool           `json:"use_regex"`
	IndividualDigits bool            `json:"individual_digits"`
	Normalizers      []hfComponent   `json:"normalizers"`
	Pretokenizers    []hfComponent   `json:"pretokenizers"`
	Decoders         []hfComponent   `json:"decoders"`
}

// flat lists c and its Sequence members.
func (c *hfComponent) flat() []hfComponent {
	if c == nil {
		return nil
	}
	out := []hfComponent{*c}
	for _, l := range [][]hfComponent{c.Normalizers, c.Pretokenizers, c.Decoders} {
		for i := range l {
			out = append(out, l[i].flat()...)
		}
	}
	return out
}

// hfPost is a post_processor: TemplateProcessing (possibly inside a
// Sequence) tells which special tokens surround a single sequence.
type hfPost struct {
	Type       string   `json:"type"`
	Processors []hfPost `json:"processors"`
	Single     []struct {
		SpecialToken *struct {
			ID string `json:"id"`
		} `json:"SpecialToken"`
		Sequence json.RawMessage `json:"Sequence"`
	} `json:"single"`
}

// template applies the first TemplateProcessing found to v.
func (p *hfPost) template(v *Vocab, ids map[string]int) bool {
	if p == nil {
		return false
	}
	if p.Type == "TemplateProcessing" {
		v.AddBOS, v.AddEOS = false, false
		seen := false
		for _, it := range p.Single {
			switch {
			case it.Sequence != nil:
				seen = true
			case it.SpecialToken != nil:
				id, ok := ids[it.SpecialToken.ID]
				if !ok {
					continue
				}
				if seen {
					v.EOS, v.AddEOS = id, true
				} else {
					v.BOS, v.AddBOS = id, true
				}
			}
		}
		return true
	}
	for i := range p.Processors {
		if p.Processors[i].template(v, ids) {
			return true
		}
	}
	return false
}

type hfTokenizerJSON struct {
	AddedTokens  []hfAdded    `json:"added_tokens"`
	Normalizer   *hfComponent `json:"normalizer"`
	PreTokenizer *hfComponent `json:"pre_tokenizer"`
	Decoder      *hfComponent `json:"decoder"`
	Post         *hfPost      `json:"post_processor"`
	Model        struct {
		Type         string          `json:"type"`
		Vocab        json.RawMessage `json:"vocab"`
		Merges       json.RawMessage `json:"merges"`
		UnkToken     *string         `json:"unk_token"`
		ByteFallback bool            `json:"byte_fallback"`
		IgnoreMerges bool            `json:"ignore_merges"`
	} `json:"model"`
}

// The pre-tokenizer regexes of tokenizer.json files we recognise.
const (
	reLlama3 = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
	reQwen2  = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
	reQwen35 = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
	reGPT2   = `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
)

func parseTokenizerJSON(data []byte) (Vocab, error) {
	var j hfTokenizerJSON
	if err := json.Unmarshal(data, &j); err != nil {
		return Vocab{}, fmt.Errorf("%w: tokenizer.json: %w", ErrFormat, err)
	}
	if j.Model.Type != "BPE" && !(j.Model.Type == "" && len(j.Model.Merges) > 0) {
		return Vocab{}, fmt.Errorf("%w: tokenizer.json model type %q, only BPE", ErrUnsupported, j.Model.Type)
	}
	var vocab map[string]int
	if err := json.Unmarshal(j.Model.Vocab, &vocab); err != nil {
		return Vocab{}, fmt.Errorf("%w: tokenizer.json model.vocab: %w", ErrFormat, err)
	}
	var merges []string
	if len(j.Model.Merges) > 0 && !bytes.Equal(j.Model.Merges, []byte("null")) {
		if err := json.Unmarshal(j.Model.Merges, &merges); err != nil {
			var pairs [][]string
			if err2 := json.Unmarshal(j.Model.Merges, &pairs); err2 != nil {
				return Vocab{}, fmt.Errorf("%w: tokenizer.json model.merges: %w", ErrFormat, err)
			}
			merges = make([]string, len(pairs))
			for i, p := range pairs {
				if len(p) != 2 {
					return Vocab{}, fmt.Errorf("%w: tokenizer.json merge %d has %d parts", ErrFormat, i, len(p))
				}
				merges[i] = p[0] + " " + p[1]
			}
		}
	}
	tokens, err := denseTokens(vocab, j.AddedTokens)
	if err != nil {
		return Vocab{}, err
	}
	v := Vocab{Tokens: tokens, BOS: -1, EOS: -1, UNK: -1, PAD: -1}
	v.Types = make([]int32, len(tokens))
	for i, s := range tokens {
		v.Types[i] = TypeNormal
		if s == "" {
			v.Types[i] = TypeUnused
		}
	}
	for _, a := range j.AddedTokens {
		if a.Special {
			v.Types[a.ID] = TypeControl
		} else if _, inModel := vocab[a.Content]; !inModel {
			v.Types[a.ID] = TypeUserDefined
		}
	}
	if j.Model.UnkToken != nil {
		if id, ok := vocab[*j.Model.UnkToken]; ok {
			v.UNK = id
			v.Types[id] = TypeUnknown
		}
	}

	encoding := len(j.Normalizer.flat()) + len(j.PreTokenizer.flat()) // comps before this index encode
	comps := append(append(j.Normalizer.flat(), j.PreTokenizer.flat()...), j.Decoder.flat()...)
	byteLevel, metaspace, digits := false, false, false
	var splits []string // the Split patterns, in order
	useRegex, prepended := false, false
	for ci, c := range comps {
		switch c.Type {
		case "ByteLevel":
			byteLevel = true
			if c.UseRegex == nil || *c.UseRegex {
				useRegex = true
			}
			// The decoder's add_prefix_space only strips on decoding (Llama 3
			// and Qwen ship it true); the pre-tokenizer's adds a space.
			if c.AddPrefixSpace != nil && *c.AddPrefixSpace && ci < encoding {
				v.AddSpacePrefix = true
			}
		case "Metaspace":
			metaspace, prepended = true, true
			if c.PrependScheme == "first" || c.PrependScheme == "always" ||
				(c.PrependScheme == "" && (c.AddPrefixSpace == nil || *c.AddPrefixSpace)) {
				v.AddSpacePrefix = true
			}
		case "Prepend":
			if c.Prepend == "▁" {
				v.AddSpacePrefix, prepended = true, true
			}
		case "Replace":
			if c.Content == "▁" && strings.Contains(string(c.Pattern), `" "`) {
				metaspace = true
			}
		case "ByteFallback":
			metaspace = true
		case "Split":
			var p struct {
				Regex  string `json:"Regex"`
				String string `json:"String"`
			}
			_ = json.Unmarshal(c.Pattern, &p)
			if ci < encoding {
				splits = append(splits, p.Regex+p.String)
			}
		case "Digits":
			digits = c.IndividualDigits
		}
	}
	split := strings.Join(splits, "\x00")
	switch {
	case byteLevel:
		v.Kind = BPE
		v.Merges = merges
		byteLevelPre := j.PreTokenizer != nil && len(j.PreTokenizer.flat()) > 0
		switch {
		case split == reLlama3 && j.Model.IgnoreMerges:
			v.Pre = "llama3"
		case split == reLlama3:
			v.Pre = "dbrx" // Llama 3's regex without ignore_merges
		case split == reQwen2:
			v.Pre = "qwen2"
		case split == reQwen35:
			v.Pre = "qwen35"
		case isDeepSeekLLM(splits):
			v.Pre = "deepseek-llm"
		case split == reGPT2, split == "" && useRegex && digits:
			v.Pre = "gpt-2"
			if digits {
				v.Pre = "smollm"
			}
		case split == "" && (useRegex || !byteLevelPre):
			v.Pre = "gpt-2"
		default:
			return Vocab{}, fmt.Errorf("%w: tokenizer.json pre-tokenizer (split %q, digits %v)", ErrUnsupported, split, digits)
		}
	case metaspace && !prepended && j.Model.ByteFallback && len(merges) > 0:
		// Gemma's form (transformers' GemmaTokenizer): spaces become "▁",
		// nothing is prepended, and the merges run over the whole text in
		// raw UTF-8 with <0xXX> byte fallback: llama.cpp's gemma4 model.
		v.Kind, v.Pre, v.Merges = BPE, "gemma4", merges
		for i, s := range tokens {
			if v.Types[i] == TypeNormal {
				if _, ok := parseByteToken(s); ok {
					v.Types[i] = TypeByte
				}
			}
		}
	case metaspace:
		v.Kind = SPM
		v.AddBOS = true
		rank := map[string]int{}
		for r, m := range merges {
			sp := -1
			if len(m) > 1 {
				sp = strings.IndexByte(m[1:], ' ')
			}
			if sp < 0 {
				return Vocab{}, fmt.Errorf("%w: tokenizer.json merge %d %q: no space", ErrFormat, r, m)
			}
			s := m[:sp+1] + m[sp+2:]
			if _, ok := rank[s]; !ok {
				rank[s] = r
			}
		}
		v.Scores = make([]float32, len(tokens))
		for i, s := range tokens {
			v.Scores[i] = -float32(len(merges))
			if r, ok := rank[s]; ok {
				v.Scores[i] = -float32(r)
			}
			if j.Model.ByteFallback && v.Types[i] == TypeNormal {
				if _, ok := parseByteToken(s); ok {
					v.Types[i] = TypeByte
				}
			}
		}
	default:
		return Vocab{}, fmt.Errorf("%w: tokenizer.json BPE that is neither byte-level nor SentencePiece-style", ErrUnsupported)
	}
	// Specials by their usual names, until tokenizer_config.json says otherwise.
	for i, s := range tokens {
		if v.Types[i] != TypeControl {
			continue
		}
		switch s {
		case "<s>", "<|begin_of_text|>":
			v.BOS = i
		case "</s>", "<|end_of_text|>":
			v.EOS = i
		case "<|endoftext|>":
			if v.BOS < 0 {
				v.BOS = i
			}
			if v.EOS < 0 {
				v.EOS = i
			}
		}
	}
	if j.Post != nil {
		ids := map[string]int{}
		for i, s := range tokens {
			if _, dup := ids[s]; !dup {
				ids[s] = i
			}
		}
		j.Post.template(&v, ids)
	}
	return v, nil
}
