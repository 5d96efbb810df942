package data

import (
	"fmt"
	"strings"
)

// Encoder is what data needs of a tokenizer (tokenizer.Tokenizer satisfies
// it). BOS and EOS return -1 when the vocabulary has none.
type Encoder interface {
	Encode(text string, addBOS bool) []int
	BOS() int
	EOS() int
}

// TokenIDer is an Encoder that can also name the id of a special token by its
// exact text ("<|im_start|>"). Chat formats use it for their markers; with an
// Encoder that lacks it, or when the lookup fails, a marker is encoded as
// plain text (which is right for tokenizers that match it as a user-defined
// token, and for templates such as Zephyr's whose markers are plain text).
type TokenIDer interface {
	Encoder
	TokenID(text string) (id int, ok bool)
}

// Example is one tokenized training example.
type Example struct {
	Tokens []int32 // (n) token ids (int32: the token cache holds every example of a run)
	Loss   []bool  // (n) whether token i is a prediction target (predicted from position i-1); Loss[0] is false
}

// TokenizeOptions control how records become examples. The zero value adds
// BOS, no EOS, and renders chat with the default format.
type TokenizeOptions struct {
	// AddEOS appends EOS to every example that does not already end with it.
	// It is a target, except after a conversation whose last turn is not the
	// assistant's. Set it when packing, so that examples in a packed row are
	// separated by EOS.
	AddEOS bool
	// NoBOS leaves out the leading BOS (for models trained without one);
	// chat formats that place BOS inside a conversation (Llama-2) keep those.
	NoBOS bool
	// ChatTemplate is the source of the chat template in use, for the token
	// cache's identity. Template renders with it; chat records need one,
	// and an encoder that is a SpecialEncoder.
	ChatTemplate string
	Template     Renderer
	// MaxRecord, when positive, bounds one record's bytes (a JSONL line, a
	// plain-text file): tokenizing a record holds about a dozen bytes per
	// byte of it, so a run under a memory budget refuses, by name, a record
	// longer than the budget allows. Not part of the cache's identity.
	MaxRecord int64
}

// Tokenize turns records of one kind into examples, one per record, in order:
//
//   - Text: BOS + text (+ EOS); every token after BOS is a target.
//   - Completion: BOS + prompt + completion (+ EOS); targets are the
//     completion's tokens. prompt+completion is encoded whole and the prompt
//     alone; targets start where the two first differ, so the tokens at the
//     join are the natural ones (a token spanning the join is a target).
//   - Chat: the conversation rendered by o.Template (see templateChat);
//     targets are the assistant turns, including the end-of-turn token that
//     closes each (so the model learns to stop).
//   - Classification: like Completion with the label's choice as completion.
//
// An example may have no targets (a chat without assistant turns); it is
// kept so that examples and records stay one to one. An id outside
// 0..2^31-1 from enc is an error (examples hold int32, the token cache 31
// bits).
func Tokenize(enc Encoder, recs []Record, kind Kind, o TokenizeOptions) ([]Example, error) {
	out := make([]Example, len(recs))
	chk := &idCheck{Encoder: enc}
	for i := range recs {
		ex, err := tokenizeRecord(chk, &recs[i], kind, o)
		if err == nil {
			err = chk.err()
		}
		if err != nil {
			return nil, &Error{Line: recs[i].Line, Record: i + 1, Err: err}
		}
		out[i] = ex
	}
	return out, nil
}

// TokenizeCandidates returns one example per choice of a classification
// record, each prompt + choice with targets on the choice's tokens, for
// evaluation by candidate scoring (the choice whose targets have the highest
// total log-probability wins).
func TokenizeCandidates(enc Encoder, r Record, o TokenizeOptions) ([]Example, error) {
	if len(r.Choices) == 0 {
		return nil, fmt.Errorf("data: %w: record has no choices", ErrData)
	}
	out := make([]Example, len(r.Choices))
	for i, c := range r.Choices {
		out[i] = completion(enc, r.Prompt, c, o)
	}
	return out, nil
}

func tokenizeRecord(enc Encoder, r *Record, kind Kind, o TokenizeOptions) (Example, error) {
	switch kind {
	case Text:
		toks := enc.Encode(r.Text, !o.NoBOS)
		loss := make([]bool, len(toks))
		for i := 1; i < len(loss); i++ {
			loss[i] = true
		}
		return finish(enc, Example{ids32(toks), loss}, true, o), nil
	case Completion:
		return completion(enc, r.Prompt, r.Completion, o), nil
	case Classification:
		if r.Label < 0 || r.Label >= len(r.Choices) {
			return Example{}, fmt.Errorf("%w: label %d out of range for %d choices", ErrData, r.Label, len(r.Choices))
		}
		return completion(enc, r.Prompt, r.Choices[r.Label], o), nil
	case Chat:
		if len(r.Messages) == 0 {
			return Example{}, fmt.Errorf("%w: chat record without messages", ErrData)
		}
		if o.Template == nil {
			return Example{}, fmt.Errorf("%w: chat records need a chat template (TokenizeOptions.Template)", ErrData)
		}
		se, ok := specialOf(enc)
		if !ok {
			return Example{}, fmt.Errorf("%w: chat template: the encoder cannot parse special tokens", ErrData)
		}
		return templateChat(se, r.Messages, o)
	}
	return Example{}, fmt.Errorf("%w: unknown kind %d", ErrData, int(kind))
}

func completion(enc Encoder, prompt, compl string, o TokenizeOptions) Example {
	full := enc.Encode(prompt+compl, !o.NoBOS)
	k := commonPrefix(enc.Encode(prompt, !o.NoBOS), full)
	loss := make([]bool, len(full))
	for i := max(k, 1); i < len(full); i++ {
		loss[i] = true
	}
	return finish(enc, Example{ids32(full), loss}, true, o)
}

// ids32 narrows token ids (vocabularies are far below 2³¹) to the
// examples' int32.
func ids32(ids []int) []int32 {
	out := make([]int32, len(ids))
	for i, t := range ids {
		out[i] = int32(t)
	}
	return out
}

// finish appends EOS when asked (a target when eosLoss) and keeps Loss[0]
// false.
func finish(enc Encoder, ex Example, eosLoss bool, o TokenizeOptions) Example {
	if eos := enc.EOS(); o.AddEOS && eos >= 0 && (len(ex.Tokens) == 0 || int(ex.Tokens[len(ex.Tokens)-1]) != eos) {
		ex.Tokens = append(ex.Tokens, int32(eos))
		ex.Loss = append(ex.Loss, eosLoss && len(ex.Tokens) > 1)
	}
	if len(ex.Loss) > 0 {
		ex.Loss[0] = false
	}
	return ex
}

func commonPrefix(a, b []int) int {
	n := min(len(a), len(b))
	for i := 0; i < n; i++ {
		if a[i] != b[i] {
			return i
		}
	}
	return n
}

// part is a piece of a rendered conversation: a fixed token (tok >= 0) or
// text (tok < 0), with the loss flag of the tokens it becomes.
type part struct {
	text string
	tok  int
	loss bool
}

// encodeParts encodes a rendered conversation. Fixed tokens are emitted as
// they are; each run of text between them is encoded whole (so tokens at the
// joins of its parts are the natural ones), and the boundary of each part is
// found as for Completion: the common prefix of the run's encoding and the
// encoding of the text before the part.
func encodeParts(enc Encoder, parts []part) Example {
	var ex Example
	for i := 0; i < len(parts); {
		if parts[i].tok >= 0 {
			ex.Tokens = append(ex.Tokens, int32(parts[i].tok))
			ex.Loss = append(ex.Loss, parts[i].loss)
			i++
			continue
		}
		// Gather the run, merging neighbours with the same loss flag.
		var sb strings.Builder
		var ends []int // byte end of each merged part
		var flags []bool
		for ; i < len(parts) && parts[i].tok < 0; i++ {
			sb.WriteString(parts[i].text)
			if n := len(flags); n > 0 && flags[n-1] == parts[i].loss {
				ends[n-1] = sb.Len()
			} else {
				ends = append(ends, sb.Len())
				flags = append(flags, parts[i].loss)
			}
		}
		s := sb.String()
		full := enc.Encode(s, false)
		from := 0
		for k := range flags {
			to := len(full)
			if k < len(flags)-1 {
				to = max(from, commonPrefix(enc.Encode(s[:ends[k]], false), full))
			}
			for j := from; j < to; j++ {
				ex.Tokens = append(ex.Tokens, int32(full[j]))
				ex.Loss = append(ex.Loss, flags[k])
			}
			from = to
		}
	}
	return ex
}
