package data

import (
	"fmt"
	"strings"
)

// Renderer renders a conversation with a model's chat template (a Jinja
// template run by package chat; data only needs this). With
// addGenerationPrompt the rendering ends with the header that opens the
// assistant's next turn.
type Renderer interface {
	Render(msgs []Message, addGenerationPrompt bool) (string, error)
}

// SpecialEncoder is an Encoder that parses special-token text in its input
// into ids ("<|im_end|>" becomes one token, as llama.cpp's parse_special
// does) and names the ids that end a turn.
type SpecialEncoder interface {
	Encoder
	EncodeSpecial(text string, addBOS bool) []int
	// EOG lists the end-of-generation ids; Token gives a token's text.
	EOG() []int
	Token(id int) string
}

// templateChat tokenizes a conversation rendered by o.Template.
//
// Targets are the assistant turns as the template writes them: for the
// assistant message i, the text after the rendering of messages[:i] with the
// generation prompt (so never the header), up to and including the first
// end-of-generation token that follows (the turn end the model must learn
// to emit: "<|im_end|>", "<|eot_id|>", "<end_of_turn>", Llama 2's "</s>"),
// or up to the end of the rendering of messages[:i+1] when the template
// writes none. Text after the turn end (ChatML's "\n") is not a target.
//
// A template may rewrite earlier turns once later ones exist (Qwen3 drops
// old reasoning): when a partial rendering is not a prefix of the whole, the
// turn is found by its content after the previous turn, and failing that the
// conversation is an error naming the message.
//
// BOS follows llama.cpp's chat path: a leading BOS written by the template
// is kept once, and BOS is added when the model wants one and the template
// wrote none (o.NoBOS: never added).
func templateChat(enc SpecialEncoder, msgs []Message, o TokenizeOptions) (Example, error) {
	full, err := o.Template.Render(msgs, false)
	if err != nil {
		return Example{}, err
	}
	var eogText []string
	for _, id := range enc.EOG() {
		if s := enc.Token(id); s != "" {
			eogText = append(eogText, s)
		}
	}
	var parts []part
	at := 0 // end of the last part
	for i, m := range msgs {
		if m.Role != "assistant" {
			continue
		}
		start, end := -1, len(full)
		head, err := o.Template.Render(msgs[:i], true)
		if err == nil && strings.HasPrefix(full, head) && len(head) >= at {
			start = len(head)
			if upto, err := o.Template.Render(msgs[:i+1], false); err == nil && strings.HasPrefix(full, upto) && len(upto) > start {
				end = len(upto)
			}
		} else if c := strings.TrimSpace(m.Content); c != "" {
			if k := strings.Index(full[at:], c); k >= 0 {
				start = at + k
			}
		}
		if start < 0 {
			return Example{}, fmt.Errorf("%w: chat template: cannot find assistant message %d in the rendered conversation (the template rewrites earlier turns)", ErrData, i+1)
		}
		// The turn ends with the first end-of-generation token after it.
		best := -1
		for _, s := range eogText {
			if k := strings.Index(full[start:], s); k >= 0 && (best < 0 || start+k+len(s) < best) {
				best = start + k + len(s)
			}
		}
		if best >= 0 && best < end {
			end = best
		}
		parts = append(parts, part{text: full[at:start], tok: -1}, part{text: full[start:end], tok: -1, loss: true})
		at = end
	}
	parts = append(parts, part{text: full[at:], tok: -1})
	ex := encodeParts(specialEncoding{enc}, parts)
	if bos := enc.BOS(); !o.NoBOS && bos >= 0 && (len(ex.Tokens) == 0 || int(ex.Tokens[0]) != bos) {
		ex.Tokens = append([]int32{int32(bos)}, ex.Tokens...)
		ex.Loss = append([]bool{false}, ex.Loss...)
	}
	// A trailing EOS the template did not write is never a target.
	return finish(enc, ex, false, o), nil
}

// specialEncoding makes encodeParts parse special-token text.
type specialEncoding struct{ SpecialEncoder }

func (s specialEncoding) Encode(text string, _ bool) []int { return s.EncodeSpecial(text, false) }
