package data

import "strings"

// ChatFormat is a family of chat templates that data renders natively. Full
// Jinja is out of scope: the family is recognised by markers in the model's
// template string (DetectChatFormat) and rendered by hand, without the
// default system prompts or dates some templates add.
//
// In the layouts below {c} is a message's content, [X] a special token (its
// id from TokenIDer, else its text), and «…» marks the targets of an
// assistant turn. Every conversation starts with BOS unless
// TokenizeOptions.NoBOS.
type ChatFormat int

const (
	// ChatDefault is for models without a (recognised) template, such as
	// stories260K: plain text, one line per turn,
	//
	//	System: {c}\n
	//	User: {c}\n
	//	Assistant: «{c}\n»
	ChatDefault ChatFormat = iota
	// ChatML (Qwen, SmolLM, ...), template contains "<|im_start|>":
	//
	//	[<|im_start|>]{role}\n«{c}[<|im_end|>]»\n
	ChatML
	// ChatLlama3, template contains "<|start_header_id|>" (content trimmed):
	//
	//	[<|start_header_id|>]{role}[<|end_header_id|>]\n\n«{c}[<|eot_id|>]»
	ChatLlama3
	// ChatLlama2, template contains "[INST]" (content trimmed; a system
	// message goes into the next user turn; [EOS] the encoder's EOS):
	//
	//	[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST]« {c} [EOS]»[BOS][INST] {user} [/INST]...
	ChatLlama2
	// ChatZephyr (Zephyr, TinyLlama-chat; Phi-3 with "<|end|>"), template
	// contains "<|user|>"; [END] is "<|end|>" when the template has it, else
	// EOS:
	//
	//	[<|{role}|>]\n«{c}[END]»\n
	ChatZephyr
)

func (f ChatFormat) String() string {
	switch f {
	case ChatDefault:
		return "default"
	case ChatML:
		return "chatml"
	case ChatLlama3:
		return "llama3"
	case ChatLlama2:
		return "llama2"
	case ChatZephyr:
		return "zephyr"
	}
	return "unknown"
}

// DetectChatFormat names the family of a chat template by its markers,
// checked in this order: "<|im_start|>", "<|start_header_id|>", "[INST]",
// "<|user|>". Anything else, the empty template included, is ChatDefault.
func DetectChatFormat(template string) ChatFormat {
	switch {
	case template == "":
		return ChatDefault
	case strings.Contains(template, "<|im_start|>"):
		return ChatML
	case strings.Contains(template, "<|start_header_id|>"):
		return ChatLlama3
	case strings.Contains(template, "[INST]"):
		return ChatLlama2
	case strings.Contains(template, "<|user|>"):
		return ChatZephyr
	}
	return ChatDefault
}

// chatRenderer builds the parts of a conversation.
type chatRenderer struct {
	enc   Encoder
	ids   TokenIDer // nil when enc has no lookup
	parts []part
}

func (r *chatRenderer) text(s string, loss bool) {
	if s != "" {
		r.parts = append(r.parts, part{text: s, tok: -1, loss: loss})
	}
}

// tok emits a fixed id; a negative id (the vocabulary has no such token)
// emits nothing.
func (r *chatRenderer) tok(id int, loss bool) {
	if id >= 0 {
		r.parts = append(r.parts, part{tok: id, loss: loss})
	}
}

// special emits a marker: its id when the encoder knows it, else its text.
func (r *chatRenderer) special(marker string, loss bool) {
	if r.ids != nil {
		if id, ok := r.ids.TokenID(marker); ok && id >= 0 {
			r.tok(id, loss)
			return
		}
	}
	r.text(marker, loss)
}

func renderChat(enc Encoder, template string, msgs []Message, bos bool) []part {
	f := DetectChatFormat(template)
	r := &chatRenderer{enc: enc}
	r.ids, _ = enc.(TokenIDer)
	if bos {
		r.tok(enc.BOS(), false)
	}
	switch f {
	case ChatML:
		for _, m := range msgs {
			a := m.Role == "assistant"
			r.special("<|im_start|>", false)
			r.text(m.Role+"\n", false)
			r.text(m.Content, a)
			r.special("<|im_end|>", a)
			r.text("\n", false)
		}
	case ChatLlama3:
		for _, m := range msgs {
			a := m.Role == "assistant"
			r.special("<|start_header_id|>", false)
			r.text(m.Role, false)
			r.special("<|end_header_id|>", false)
			r.text("\n\n", false)
			r.text(strings.TrimSpace(m.Content), a)
			r.special("<|eot_id|>", a)
		}
	case ChatLlama2:
		sys := ""
		started := false // a turn has been written: later user turns open with BOS
		user := func(c string) {
			if started {
				r.tok(enc.BOS(), false)
			}
			s := "[INST] "
			if sys != "" {
				s += "<<SYS>>\n" + sys + "\n<</SYS>>\n\n"
				sys = ""
			}
			r.text(s+strings.TrimSpace(c)+" [/INST]", false)
			started = true
		}
		for _, m := range msgs {
			switch m.Role {
			case "system":
				sys = strings.TrimSpace(m.Content)
			case "user":
				user(m.Content)
			default:
				if sys != "" {
					user("")
				}
				r.text(" "+strings.TrimSpace(m.Content)+" ", true)
				r.tok(enc.EOS(), true)
				started = true
			}
		}
		if sys != "" {
			user("")
		}
	case ChatZephyr:
		end := func(loss bool) { r.tok(enc.EOS(), loss) }
		if strings.Contains(template, "<|end|>") {
			end = func(loss bool) { r.special("<|end|>", loss) }
		}
		for _, m := range msgs {
			a := m.Role == "assistant"
			r.special("<|"+m.Role+"|>", false)
			r.text("\n", false)
			r.text(m.Content, a)
			end(a)
			r.text("\n", false)
		}
	default:
		for _, m := range msgs {
			switch m.Role {
			case "system":
				r.text("System: "+m.Content+"\n", false)
			case "user":
				r.text("User: "+m.Content+"\n", false)
			default:
				r.text("Assistant: ", false)
				r.text(m.Content+"\n", true)
			}
		}
	}
	return r.parts
}
