package llamacpp_test

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/qtune/qtune/data"
	"github.com/qtune/qtune/internal/llamacpp"
	"github.com/qtune/qtune/train"
)

// chatConversations are the conversations both sides prompt: one turn,
// several turns with unicode, whitespace and a tab, and a system turn.
var chatConversations = [][]llamacpp.ChatMessage{
	{{Role: "user", Content: "Hello!"}},
	{{Role: "user", Content: "Wie heißt du? 名前は？"}, {Role: "assistant", Content: "Ich bin ein Modell. 🙂"},
		{Role: "user", Content: "Und  jetzt:\n\tzwei Zeilen."}},
	{{Role: "system", Content: "Answer in one word."}, {Role: "user", Content: "Sky colour?"},
		{Role: "assistant", Content: "Blue."}, {Role: "user", Content: "Grass?"}},
}

// TestChatPromptMatchesLlamaCpp: the prompt generate --chat and qtune chat
// evaluate (the model's own template rendered with the generation prompt,
// BOS as the model asks, tokenized with special tokens parsed) is the token
// sequence llama.cpp's server evaluates, for every real vocabulary that
// carries a chat template, with enable_thinking unset (Hugging Face's
// default), true (llama.cpp's server default) and false (both set through
// --chat-template-kwargs here).
func TestChatPromptMatchesLlamaCpp(t *testing.T) {
	llamacpp.Require(t)
	checked := 0
	for _, path := range vocabFiles(t) {
		tk := ggufTokenizer(t, path)
		if tk.ChatTemplate() == "" {
			continue
		}
		for _, thinking := range []*bool{nil, new(true), new(false)} {
			name := filepath.Base(path)
			if thinking != nil {
				name += fmt.Sprintf("/enable_thinking=%v", *thinking)
			}
			t.Run(name, func(t *testing.T) {
				tmpl, err := train.TokenizerChatTemplate(tk, path, "")
				if err != nil {
					t.Fatal(err)
				}
				if thinking != nil {
					tmpl.Vars = map[string]any{"enable_thinking": *thinking}
				}
				var convs [][]llamacpp.ChatMessage
				for _, c := range chatConversations {
					// The judge does not rewrite a system turn the template
					// drops (llama.cpp's server merges it into the next turn:
					// TestChatSystemMerge).
					if tmpl.NoSystemRole && c[0].Role == "system" {
						t.Logf("template drops the system turn: conversation with one left out")
						continue
					}
					convs = append(convs, c)
				}
				resp, err := llamacpp.ChatPrompt(context.Background(), llamacpp.ChatPromptRequest{Model: path, Conversations: convs, Thinking: thinking})
				if err != nil {
					t.Fatal(err)
				}
				for i, conv := range convs {
					got, err := tmpl.Prompt(tk, messages(conv))
					if err != nil {
						t.Fatal(err)
					}
					if !slices.Equal(got, resp.Tokens[i]) {
						s, _ := tmpl.Render(messages(conv), true)
						t.Errorf("conversation %d:\n ours %v\n      %q\nllama %v\n      %q", i, got, s, resp.Tokens[i], resp.Texts[i])
					}
					checked++
				}
			})
		}
	}
	if checked < 10 {
		t.Errorf("only %d prompts compared", checked)
	}
}

func messages(conv []llamacpp.ChatMessage) []data.Message {
	msgs := make([]data.Message, len(conv))
	for j, m := range conv {
		msgs[j] = data.Message{Role: m.Role, Content: m.Content}
	}
	return msgs
}

// TestChatSystemMerge: a template without a system turn (Phi-3's) gets the
// system message in front of the next message, joined by a newline, as
// llama.cpp's server does (common/chat.cpp, system_message_not_supported);
// a template with one renders it as written.
func TestChatSystemMerge(t *testing.T) {
	for _, path := range vocabFiles(t) {
		tk := ggufTokenizer(t, path)
		if tk.ChatTemplate() == "" {
			continue
		}
		tmpl, err := train.TokenizerChatTemplate(tk, path, "")
		if err != nil {
			t.Fatal(err)
		}
		sys := messages(chatConversations[2])
		got, err := tmpl.Render(sys, true)
		if err != nil {
			t.Fatal(err)
		}
		isPhi3 := strings.Contains(path, "phi-3")
		if tmpl.NoSystemRole != isPhi3 {
			t.Errorf("%s: NoSystemRole %v", filepath.Base(path), tmpl.NoSystemRole)
		}
		if !strings.Contains(got, "Answer in one word.") {
			t.Errorf("%s: the system text is lost: %q", filepath.Base(path), got)
		}
		if tmpl.NoSystemRole {
			merged := append([]data.Message{{Role: "user", Content: "Answer in one word.\nSky colour?"}}, sys[2:]...)
			want, err := tmpl.Render(merged, true)
			if err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Errorf("%s: merged system turn:\n got %q\nwant %q", filepath.Base(path), got, want)
			}
		}
	}
}
