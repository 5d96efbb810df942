package tokenizer

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
)

// End of generation: the ids a sampler stops on. llama.cpp decides them
// from the token texts rather than from metadata alone (llama-vocab.cpp,
// llama_vocab::impl::load, "maintain a list of tokens that cause
// end-of-generation"); qtune follows the same rules so that a model stops
// where llama.cpp would stop it:
//
//   - every token whose text is in eogTexts;
//   - the FIM pad, repo and file-separator tokens (by eogFIMTexts);
//   - EOS, and the ids the file declares (Vocab.EOG: GGUF eot/eom/fim ids,
//     an HF folder's generation_config.json eos_token_id);
//   - less "<|end|>" when "<|return|>" and "<|call|>" (or "<|calls|>" and
//     "<|flush|>") are present, and less "</s>" when "<|tool_response>" is.

var eogTexts = []string{
	"<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
	"<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
	"<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
	"<｜end▁of▁sentence｜>", "[e~[",
}

var eogFIMTexts = []string{
	"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]", // pad
	"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>", // repo
	"<|file_sep|>", // file separator
}

// fimControlTexts are the FIM prefix, suffix and middle tokens llama.cpp
// finds by text; with the EOG texts they are control tokens whatever the
// file's types say.
var fimControlTexts = []string{
	"<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>", "<|code_prefix|>", "<|prefix|>",
	"<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>", "<|code_suffix|>", "<|suffix|>",
	"<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>", "<|code_middle|>", "<|middle|>",
}

// EOGText reports whether a token with text s ends generation by its text
// alone (llama.cpp's lists of end-of-turn and FIM tokens).
func EOGText(s string) bool { return slices.Contains(eogTexts, s) || slices.Contains(eogFIMTexts, s) }

// eogIDs computes the end-of-generation set of v, ascending, and drops
// out-of-range ids from v.EOG.
func eogIDs(v *Vocab) []int {
	set := map[int]bool{}
	add := func(id int) {
		if id >= 0 && id < len(v.Tokens) {
			set[id] = true
		}
	}
	// Every id with the text, not only the first: a vocabulary may repeat one.
	for i, s := range v.Tokens {
		if EOGText(s) {
			add(i)
		}
	}
	add(v.EOS)
	// Declared ids out of range are dropped, here and from v.
	v.EOG = slices.DeleteFunc(slices.Clone(v.EOG), func(id int) bool { return id < 0 || id >= len(v.Tokens) })
	for _, id := range v.EOG {
		add(id)
	}
	has := func(s string) (int, bool) {
		for id := range set {
			if v.Tokens[id] == s {
				return id, true
			}
		}
		return -1, false
	}
	_, ret := has("<|return|>")
	_, call := has("<|call|>")
	_, calls := has("<|calls|>")
	_, flush := has("<|flush|>")
	if end, ok := has("<|end|>"); ok && ((ret && (call || calls)) || ((call || calls) && flush)) {
		delete(set, end)
	}
	if _, ok := has("<|tool_response>"); ok {
		if s, ok := has("</s>"); ok {
			delete(set, s)
		}
	}
	ids := make([]int, 0, len(set))
	for id := range set {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// EOG returns the end-of-generation ids, ascending: EOS, the end-of-turn
// and end-of-message tokens and the others llama.cpp stops on (see
// eogTexts). Empty when the vocabulary has none.
func (t *Tokenizer) EOG() []int { return slices.Clone(t.eog) }

// IsEOG reports whether id ends generation.
func (t *Tokenizer) IsEOG(id int) bool {
	_, ok := slices.BinarySearch(t.eog, id)
	return ok
}

// generationEOS reads generation_config.json's eos_token_id (an integer or
// a list of them) from an HF folder; nil when the file or key is absent.
func generationEOS(dir string) ([]int, error) {
	data, ok, err := readFile(dir, "generation_config.json")
	if err != nil || !ok {
		return nil, err
	}
	var g struct {
		EOS json.RawMessage `json:"eos_token_id"`
	}
	if err := json.Unmarshal(data, &g); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrFormat, filepath.Join(dir, "generation_config.json"), err)
	}
	if len(g.EOS) == 0 || string(g.EOS) == "null" {
		return nil, nil
	}
	var one int
	if json.Unmarshal(g.EOS, &one) == nil {
		return []int{one}, nil
	}
	var many []int
	if err := json.Unmarshal(g.EOS, &many); err != nil {
		return nil, fmt.Errorf("%w: %s: eos_token_id is neither an integer nor a list of them", ErrFormat, filepath.Join(dir, "generation_config.json"))
	}
	return many, nil
}
