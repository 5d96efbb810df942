package chat_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/qtune/qtune/chat"
	"github.com/qtune/qtune/internal/hfjinja"
	"github.com/qtune/qtune/internal/shared"
)

// unsupported are the templates of ../shared/assets/chat-templates our
// engine does not render as @huggingface/jinja does, each with why. The
// test fails when one of them starts to match (remove it here) and when
// any other template differs.
var unsupported = map[string]string{}

// hfCannot are templates @huggingface/jinja itself refuses for every
// conversation while Python's Jinja (what transformers uses) renders them,
// and so does chat: there is no reference output to compare with. The
// test checks that Hugging Face still raises (else move the template back
// to the compared set) and that chat renders.
// A key is a template's name, or name@conversation for one conversation.
// Our renders of these (-chat.dump) were checked by hand against Python's
// jinja2 3.1.6 set up as transformers does (ImmutableSandboxedEnvironment,
// trim_blocks, lstrip_blocks, its tojson): identical, except the three
// marked "lenient", where Python raises too and chat renders.
var hfCannot = map[string]string{
	"ByteDance-Seed-OSS":                        "a dict literal with integer keys ({0: 0, 512: 128, ...}): HF raises \"Object keys must be strings\"",
	"tencent-Hy3":                               "str.format ('<｜hy_eos{}｜>'.format(HYTK)): HF has no format method",
	"unsloth-Apriel-1.5@tools":                  "tool|string on a dict: HF raises \"Unknown ObjectValue filter: string\"",
	"Apriel-1.6-15b-Thinker-fixed@tools":        "tool|string on a dict: HF raises \"Unknown ObjectValue filter: string\"",
	"meetkai-functionary-medium-v3.2@tools":     "for a, b in [(x, y), ...] over a list of tuples: HF raises \"Cannot unpack non-iterable type: TupleValue\"",
	"unsloth-Apriel-1.5@tool-call":              "tool|string on a dict",
	"Apriel-1.6-15b-Thinker-fixed@tool-call":    "tool|string on a dict",
	"meetkai-functionary-medium-v3.2@tool-call": "for a, b in a list of tuples; lenient: Python raises on str + dict (the template wants arguments as a JSON string), the engine concatenates",
	"Kimi-K2-Instruct@tool-call":                "list.append and list.pop (namespace(ids=[]).ids.append(...)): HF lists have no such methods",
	"Kimi-K2-Thinking@tool-call":                "list.append and list.pop, as Kimi-K2-Instruct",
	"openbmb-MiniCPM5-1B@tool-call":             "the min filter ([a, b]|min): HF has none",
}

func hfCannotRender(name, conv string) (string, bool) {
	if why, ok := hfCannot[name]; ok {
		return why, true
	}
	why, ok := hfCannot[name+"@"+conv]
	return why, ok
}

// templateVars are variables a template requires beyond the common ones
// (its model card passes them), given to both renderers.
var templateVars = map[string]map[string]any{
	// firefunction-v2 concatenates functions (a JSON string) and datetime
	// with "+": undefined, Python and Hugging Face raise, while the engine
	// concatenates undefined as "" (a known leniency, see doc.go).
	"fireworks-ai-llama-3-firefunction-v2": {
		"functions": `[{"name": "get_weather", "description": "Weather in a city. Météo 🌦", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]`,
		"datetime":  "2024-07-23 09:00",
	},
}

// conversation is one test input: messages and whether it ends expecting
// the assistant.
type conversation struct {
	name  string
	msgs  []chat.Message
	tools []any // the tools variable; nil is None
}

// weatherTool is an OpenAI-style function definition as transformers
// passes it in tools (keys in the order json.dumps keeps them).
var weatherTool = []any{orderedJSON{
	{"type", "function"},
	{"function", orderedJSON{
		{"name", "get_weather"},
		{"description", "Current weather in a city. Météo 🌦 天气"},
		{"parameters", orderedJSON{
			{"type", "object"},
			{"properties", orderedJSON{
				{"city", orderedJSON{{"type", "string"}, {"description", "City name, e.g. Zürich"}}},
				{"unit", orderedJSON{{"type", "string"}, {"description", "Unit <°C|°F>"}, {"enum", []any{"celsius", "fahrenheit"}}}},
			}},
			{"required", []any{"city"}},
		}},
	}},
}}

var conversations = []conversation{
	{"system+turns", []chat.Message{
		{Role: "system", Content: "You are a helpful assistant. Réponds en français si besoin."},
		{Role: "user", Content: "Hello! 👋 What is 2+2?"},
		{Role: "assistant", Content: "2 + 2 = 4. 😊"},
		{Role: "user", Content: "Translate \"cat\" to Chinese and Japanese: 猫? ねこ?"},
	}, nil},
	{"no-system", []chat.Message{
		{Role: "user", Content: "  Leading and trailing spaces  \n"},
		{Role: "assistant", Content: "Noted: ça va, naïve café, Ünïcödé."},
		{Role: "user", Content: "Line one\nLine two\n\ttabbed <tag> & \"quotes\" 'single' \\ backslash"},
		{Role: "assistant", Content: "日本語の文章です。한국어도 있어요。"},
		{Role: "user", Content: "Last question 🤔🚀"},
	}, nil},
	{"single-user", []chat.Message{
		{Role: "user", Content: "Hi"},
	}, nil},
	{"system+user", []chat.Message{
		{Role: "system", Content: "Be brief."},
		{Role: "user", Content: "Summarise: «Les élèves ont étudié.» — done"},
	}, nil},
	{"ends-assistant", []chat.Message{
		{Role: "system", Content: "You are Qwen. 你好"},
		{Role: "user", Content: "Tell me a joke."},
		{Role: "assistant", Content: "Why did the chicken cross the road? 🐔 To get to the other side."},
	}, nil},
	{"tools", []chat.Message{
		{Role: "system", Content: "You can call tools."},
		{Role: "user", Content: "What's the weather in Zürich? ☀️"},
	}, weatherTool},
	{"tool-call", []chat.Message{
		{Role: "system", Content: "You can call tools."},
		{Role: "user", Content: "What's the weather in Zürich? ☀️"},
		{Role: "assistant", Content: "", Extra: map[string]any{"tool_calls": []any{chat.Object{
			{Key: "id", Value: "call_1"},
			{Key: "type", Value: "function"},
			{Key: "function", Value: chat.Object{
				{Key: "name", Value: "get_weather"},
				{Key: "arguments", Value: chat.Object{{Key: "city", Value: "Zürich"}, {Key: "unit", Value: "celsius"}}},
			}},
		}}}},
		{Role: "tool", Content: `{"temperature": 21.5, "sky": "☀️"}`, Extra: map[string]any{"tool_call_id": "call_1", "name": "get_weather"}},
		{Role: "assistant", Content: "It is 21.5 °C and sunny in Zürich."},
		{Role: "user", Content: "Merci !"},
	}, weatherTool},
}

// jsonMessage keeps role before content in the JSON the judge reads (a
// map would sort them), as chat.Message shows them to a template.
type jsonMessage struct {
	Role    string `json:"role"`
	Content string `json:"content"`
	Extra   map[string]any
}

// MarshalJSON writes role, content, then Extra's keys sorted, the order
// chat.Message shows a template.
func (m jsonMessage) MarshalJSON() ([]byte, error) {
	o := orderedJSON{{"role", m.Role}, {"content", m.Content}}
	keys := make([]string, 0, len(m.Extra))
	for k := range m.Extra {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		o = append(o, [2]any{k, fromGo(m.Extra[k])})
	}
	return o.MarshalJSON()
}

// fromGo is toGo's inverse, for the judge.
func fromGo(v any) any {
	switch x := v.(type) {
	case chat.Object:
		o := make(orderedJSON, len(x))
		for i, f := range x {
			o[i] = [2]any{f.Key, fromGo(f.Value)}
		}
		return o
	case []any:
		l := make([]any, len(x))
		for i, e := range x {
			l[i] = fromGo(e)
		}
		return l
	}
	return v
}

func hfContext(name string, c conversation, agp bool) map[string]any {
	msgs := make([]jsonMessage, len(c.msgs))
	for i, m := range c.msgs {
		msgs[i] = jsonMessage{m.Role, m.Content, m.Extra}
	}
	var tools any
	if c.tools != nil {
		tools = c.tools
	}
	ctx := map[string]any{
		"tools":                 tools, // transformers always passes tools and documents, None when absent
		"documents":             nil,
		"messages":              msgs,
		"add_generation_prompt": agp,
		"bos_token":             "<s>",
		"eos_token":             "</s>",
	}
	for k, v := range templateVars[name] {
		ctx[k] = v
	}
	return ctx
}

// TestTemplatesMatchHuggingFace renders every template of the shared
// collection on every conversation, with and without the generation
// prompt, through chat and through @huggingface/jinja (one batch), and
// asserts byte equality, or that both raise.
func TestTemplatesMatchHuggingFace(t *testing.T) {
	hfjinja.Require(t)
	files, err := filepath.Glob(shared.Path(t, "assets", "chat-templates", "*.jinja"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no chat templates in the shared folder (%v)", err)
	}
	req := hfjinja.Request{Templates: map[string]string{}}
	srcs := map[string]string{}
	var names []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		name := strings.TrimSuffix(filepath.Base(f), ".jinja")
		names = append(names, name)
		srcs[name] = string(b)
		req.Templates[name] = string(b)
		for _, c := range conversations {
			for _, agp := range []bool{false, true} {
				req.Renders = append(req.Renders, hfjinja.Rendering{Template: name, Context: hfContext(name, c, agp)})
			}
		}
	}
	for name := range unsupported {
		if _, ok := srcs[name]; !ok {
			t.Errorf("unsupported lists %s, which is not in the collection", name)
		}
	}
	res, err := hfjinja.Render(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(names)
	same, bothRaise, cannot := 0, 0, 0
	var dumped []dumpEntry
	i := 0
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".jinja")
		var problems []string
		tmpl, perr := chat.Parse(name+".jinja", srcs[name])
		for _, c := range conversations {
			for _, agp := range []bool{false, true} {
				want := res[i]
				i++
				var got string
				err := perr
				if err == nil {
					got, err = tmpl.Render(c.msgs, opts(name, c, agp))
				}
				at := fmt.Sprintf("%s add_generation_prompt=%v", c.name, agp)
				if why, ok := hfCannotRender(name, c.name); ok {
					cannot++
					if want.Error == "" {
						problems = append(problems, fmt.Sprintf("%s: Hugging Face now renders: compare it (remove it from hfCannot)", at))
					}
					if err != nil {
						problems = append(problems, fmt.Sprintf("%s: we fail: %v", at, err))
					}
					if *dump != "" {
						dumped = append(dumped, dumpEntry{name, c.name, agp, got, why, hfContext(name, c, agp)})
					}
					continue
				}
				switch {
				case err != nil && !errors.Is(err, chat.ErrTemplate):
					problems = append(problems, fmt.Sprintf("%s: error does not wrap ErrTemplate: %v", at, err))
				case err != nil && !strings.Contains(err.Error(), name):
					problems = append(problems, fmt.Sprintf("%s: error does not name the template: %v", at, err))
				case want.Error != "" && err != nil:
					bothRaise++
					if _, msg, ok := strings.Cut(err.Error(), "raise_exception: "); ok && msg != want.Error {
						problems = append(problems, fmt.Sprintf("%s: raise_exception(%q), Hugging Face raises %q", at, msg, want.Error))
					}
					if *verbose {
						t.Logf("%s %s: both raise\n hf: %s\n us: %v", name, at, want.Error, err)
					}
				case want.Error != "":
					problems = append(problems, fmt.Sprintf("%s: Hugging Face raises %q, we render %q", at, want.Error, got))
				case err != nil:
					problems = append(problems, fmt.Sprintf("%s: we fail: %v\nHugging Face renders %q", at, err, want.Output))
				case got != want.Output:
					problems = append(problems, fmt.Sprintf("%s: differs at byte %d\n got  %q\n want %q", at, diffAt(got, want.Output), got, want.Output))
				}
			}
		}
		if why, ok := hfCannot[name]; ok {
			if len(problems) > 0 {
				t.Errorf("%s (%s):\n%s", name, why, strings.Join(problems, "\n"))
			}
			continue
		}
		why, listed := unsupported[name]
		switch {
		case len(problems) == 0 && listed:
			t.Errorf("%s now matches Hugging Face: remove it from unsupported (%s)", name, why)
		case len(problems) == 0:
			same++
		case !listed:
			t.Errorf("%s: %d of %d renders differ:\n%s", name, len(problems), len(problems)+0*len(conversations), strings.Join(problems, "\n"))
		default:
			t.Logf("%s: expected unsupported (%s): %s", name, why, problems[0])
		}
	}
	t.Logf("%d of %d templates byte-identical to @huggingface/jinja %s; %d of %d renders raise in both, %d Hugging Face cannot render (hfCannot), %d templates unsupported by chat",
		same, len(files), hfjinja.Version, bothRaise, len(req.Renders), cannot, len(unsupported))
	if *dump != "" {
		b, _ := json.MarshalIndent(dumped, "", " ")
		if err := os.WriteFile(*dump, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

var (
	verbose = flag.Bool("chat.v", false, "log the renders where both engines raise")
	dump    = flag.String("chat.dump", "", "write our renders of the hfCannot cases to this JSON file (to check by hand)")
)

type dumpEntry struct {
	Template, Conversation string
	AddGenerationPrompt    bool
	Output, Why            string
	Context                map[string]any
}

func opts(name string, c conversation, agp bool) chat.Options {
	o := chat.Options{AddGenerationPrompt: agp, BOS: "<s>", EOS: "</s>",
		Extra: map[string]any{"tools": nil, "documents": nil}}
	if c.tools != nil {
		o.Extra["tools"] = toGo(c.tools)
	}
	for k, v := range templateVars[name] {
		o.Extra[k] = v
	}
	return o
}

func diffAt(a, b string) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// orderedJSON is a JSON object that keeps its keys' order, for the judge
// (encoding/json sorts map keys) and, through toGo, for chat.
type orderedJSON [][2]any

func (o orderedJSON) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, kv := range o {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(kv[0])
		v, err := json.Marshal(kv[1])
		if err != nil {
			return nil, err
		}
		b.Write(k)
		b.WriteByte(':')
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// toGo is v as chat.Options.Extra takes it: objects as chat.Object, which
// keeps key order.
func toGo(v any) any {
	switch x := v.(type) {
	case orderedJSON:
		o := make(chat.Object, len(x))
		for i, kv := range x {
			o[i] = chat.Field{Key: kv[0].(string), Value: toGo(kv[1])}
		}
		return o
	case []any:
		l := make([]any, len(x))
		for i, e := range x {
			l[i] = toGo(e)
		}
		return l
	}
	return v
}
