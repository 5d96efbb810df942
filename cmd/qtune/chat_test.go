package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/qtune/qtune/internal/shared"
	"github.com/qtune/qtune/internal/synth"
	"github.com/qtune/qtune/kernels/cuda"
	"github.com/qtune/qtune/model"
	"github.com/qtune/qtune/quant"
)

func lastLine(s string) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	return l[len(l)-1]
}

func parseIDs(t *testing.T, s string) []int {
	t.Helper()
	var ids []int
	for _, f := range strings.Fields(s) {
		n, err := strconv.Atoi(f)
		if err != nil {
			t.Fatalf("not ids: %q", s)
		}
		ids = append(ids, n)
	}
	return ids
}

// tokenize reads a vocabulary-only GGUF (no tensors); --special turns
// special-token text into its ids, without it the text stays text.
func TestTokenizeVocabOnlySpecial(t *testing.T) {
	v := shared.Path(t, "assets", "tokenizers", "llamacpp-vocab", "ggml-vocab-qwen2.gguf")
	text := "<|im_start|>user\nhi<|im_end|>"
	code, plain, errs := runCLI(t, "tokenize", "--model", v, "--text", text)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	code, special, errs := runCLI(t, "tokenize", "--model", v, "--text", text, "--special")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	_, inner, _ := runCLI(t, "tokenize", "--model", v, "--text", "user\nhi")
	// Qwen2's <|im_start|> and <|im_end|> are 151644 and 151645 (its
	// tokenizer_config.json); llama.cpp's judgement is in internal/llamacpp.
	want := append(append([]int{151644}, parseIDs(t, inner)...), 151645)
	if got := parseIDs(t, special); !slices.Equal(got, want) {
		t.Errorf("--special: %v, want %v", got, want)
	}
	p := parseIDs(t, plain)
	if slices.Contains(p, 151644) || slices.Contains(p, 151645) || len(p) < 10 {
		t.Errorf("without --special the markers must stay text: %v", p)
	}
	bad := filepath.Join(t.TempDir(), "bad.gguf")
	os.WriteFile(bad, []byte("GGUF\x03\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\x7f"), 0o644)
	if code, _, errs := runCLI(t, "tokenize", "--model", bad, "--text", "x"); code != 1 || !strings.Contains(errs, "bad.gguf") || strings.Count(strings.TrimSpace(errs), "\n") > 0 {
		t.Errorf("damaged GGUF: exit %d, %q", code, errs)
	}
}

type genResult struct {
	PromptTokens []int  `json:"prompt_tokens"`
	Tokens       []int  `json:"tokens"`
	Text         string `json:"text"`
}

func generateJSON(t *testing.T, args ...string) genResult {
	t.Helper()
	code, out, errs := runCLI(t, append([]string{"generate", "--model", stories(t), "--temp", "0", "--json"}, args...)...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	var r genResult
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	return r
}

// generate --chat renders the conversation with the default template
// (stories260K declares none): BOS, the turns, and "Assistant:" to prompt
// the reply; generation stops on EOS.
func TestGenerateChat(t *testing.T) {
	m, err := model.Open(stories(t), model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	tok := m.Tokenizer
	r := generateJSON(t, "--chat", "--system", "Be kind.", "--prompt", "Tell me a story", "-n", "300")
	want := tok.Encode("System: Be kind.\nUser: Tell me a story\nAssistant:", true)
	if !slices.Equal(r.PromptTokens, want) {
		t.Fatalf("prompt %v, want %v", r.PromptTokens, want)
	}
	if slices.Contains(r.Tokens, tok.EOS()) {
		t.Errorf("the reply runs past EOS: %v", r.Tokens)
	}

	// --messages: the conversation so far, then the new user turn.
	dir := t.TempDir()
	msgs := `{"messages":[{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello."}]}`
	mf := filepath.Join(dir, "m.json")
	os.WriteFile(mf, []byte(msgs), 0o644)
	r = generateJSON(t, "--chat", "--messages", mf, "--prompt", "Bye", "-n", "5")
	want = tok.EncodeSpecial("User: Hi\nAssistant: Hello.</s>\nUser: Bye\nAssistant:", true)
	if !slices.Equal(r.PromptTokens, want) || !slices.Contains(want, tok.EOS()) {
		t.Fatalf("prompt %v, want %v", r.PromptTokens, want)
	}

	// A template file overrides; a broken one is one clear line.
	tf := filepath.Join(dir, "t.jinja")
	os.WriteFile(tf, []byte("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"), 0o644)
	r = generateJSON(t, "--chat", "--chat-template", tf, "--prompt", "Hi", "-n", "3")
	if want := tok.Encode("<user>Hi<assistant>", true); !slices.Equal(r.PromptTokens, want) {
		t.Errorf("--chat-template: prompt %v, want %v", r.PromptTokens, want)
	}
	// --chat-template-kwargs sets further variables, as llama.cpp's flag does.
	os.WriteFile(tf, []byte("{% if enable_thinking %}<think>{% endif %}{% for m in messages %}{{ m.content }}{% endfor %}"), 0o644)
	r = generateJSON(t, "--chat-template", tf, "--chat-template-kwargs", `{"enable_thinking": true}`, "--prompt", "Hi", "-n", "1")
	if want := tok.Encode("<think>Hi", true); !slices.Equal(r.PromptTokens, want) {
		t.Errorf("--chat-template-kwargs: prompt %v, want %v", r.PromptTokens, want)
	}
	for _, bad := range []string{`[1]`, `{"enable_thinking": }`, `{"messages": []}`} {
		code, _, errs := runCLI(t, "generate", "--model", stories(t), "--chat", "--chat-template-kwargs", bad, "--prompt", "Hi")
		if code != 2 || !strings.Contains(lastLine(errs), "--chat-template-kwargs") {
			t.Errorf("kwargs %s: exit %d, %q", bad, code, errs)
		}
	}
	os.WriteFile(tf, []byte("{% for m in messages %}{{ m.content "), 0o644)
	code, _, errs := runCLI(t, "generate", "--model", stories(t), "--chat", "--chat-template", tf, "--prompt", "Hi")
	if last := lastLine(errs); code != 1 || !strings.Contains(last, "t.jinja") || !strings.Contains(last, "unclosed") {
		t.Errorf("broken template: exit %d, %q", code, errs)
	}
	os.WriteFile(mf, []byte(`[{"role":"wizard","content":"x"}]`), 0o644)
	if code, _, errs := runCLI(t, "generate", "--model", stories(t), "--chat", "--messages", mf); code == 0 || !strings.Contains(errs, "wizard") {
		t.Errorf("bad role: exit %d, %q", code, errs)
	}
}

// qtune chat keeps the conversation: the second turn reuses the KV cache
// of the first (prefilling only what is new), and its reply is the one a
// fresh generate --chat gives for the same conversation.
func TestChatREPL(t *testing.T) {
	var out, errs bytes.Buffer
	in := strings.NewReader("Hi there\n\nWhat next?\n/exit\n")
	code := runIn([]string{"chat", "--model", stories(t), "--temp", "0", "-n", "24"}, in, &out, &errs)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs.String())
	}
	replies := strings.Split(strings.TrimRight(out.String(), "\n"), "\n")
	if len(replies) != 2 {
		t.Fatalf("want 2 replies, got %q", out.String())
	}
	turns := regexp.MustCompile(`prefilled=(\d+) reused=(\d+)`).FindAllStringSubmatch(errs.String(), -1)
	if len(turns) != 2 {
		t.Fatalf("turn logs: %q", errs.String())
	}
	if turns[0][2] != "0" || turns[1][2] == "0" {
		t.Errorf("KV cache not reused across turns: %v", turns)
	}
	reused, _ := strconv.Atoi(turns[1][2])
	prefilled, _ := strconv.Atoi(turns[1][1])
	if prefilled >= reused {
		t.Errorf("second turn prefilled %d and reused only %d", prefilled, reused)
	}
	dir := t.TempDir()
	conv, _ := json.Marshal([]map[string]string{{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": strings.TrimSpace(replies[0])}})
	mf := filepath.Join(dir, "m.json")
	os.WriteFile(mf, conv, 0o644)
	code2, fresh, e2 := runCLI(t, "generate", "--model", stories(t), "--temp", "0", "-n", "24", "--chat", "--messages", mf, "--prompt", "What next?")
	if code2 != 0 {
		t.Fatalf("exit %d: %s", code2, e2)
	}
	if strings.TrimRight(fresh, "\n") != replies[1] {
		t.Errorf("second turn %q, fresh generate --chat %q", replies[1], fresh)
	}
}

// chat and generate with --device cuda: the KV cache on the GPU, kept
// across turns as on the CPU; replies (greedy, f32 products) and what each
// turn reused equal the CPU's, and the log names the device's plan and
// peak. Skips without a GPU (the CUDA emulator runs it in make test).
func TestGPUChatMatchesCPU(t *testing.T) {
	if _, err := cuda.Count(); err != nil {
		if os.Getenv("QTUNE_REQUIRE_GPU") == "1" {
			t.Fatal(err)
		}
		t.Skipf("no GPU: %v", err)
	}
	chat := func(dev ...string) (string, [][]string, string) {
		var out, errs bytes.Buffer
		in := strings.NewReader("Hi there\nWhat next?\n/exit\n")
		args := append([]string{"chat", "--model", stories(t), "--temp", "0", "-n", "24"}, dev...)
		if code := runIn(args, in, &out, &errs); code != 0 {
			t.Fatalf("%v: exit %d: %s", dev, code, errs.String())
		}
		return out.String(), regexp.MustCompile(`prefilled=(\d+) reused=(\d+)`).FindAllStringSubmatch(errs.String(), -1), errs.String()
	}
	want, wturns, _ := chat()
	got, gturns, logs := chat("--device", "cuda", "--gpu-precision", "f32")
	if got != want || !slices.EqualFunc(gturns, wturns, slices.Equal) {
		t.Errorf("GPU chat %q %v, CPU %q %v", got, gturns, want, wturns)
	}
	for _, s := range []string{"device: cuda:0", "GPU memory:", "placement: 0 layers on host, 0 on disk, 5 on device", "GPU memory: peak"} {
		if !strings.Contains(logs, s) {
			t.Errorf("the GPU chat's log lacks %q:\n%s", s, logs)
		}
	}
	code, gen, e := runCLI(t, "generate", "--model", stories(t), "--prompt", "Once upon a time", "--temp", "0", "-n", "30", "--device", "cuda", "--gpu-precision", "f32")
	_, cpu, _ := runCLI(t, "generate", "--model", stories(t), "--prompt", "Once upon a time", "--temp", "0", "-n", "30")
	if code != 0 || gen != cpu {
		t.Errorf("generate --device cuda: exit %d, %q (CPU %q): %s", code, gen, cpu, e)
	}
}

// Without --max-vram, the GPU's free memory is the budget: on a GPU too
// small for the whole model (the emulator's, given 474 MiB, of which its
// context takes 256 and cuBLAS's lazily loaded kernels 64), generation
// streams blocks instead of failing at an allocation, and gives the CPU's
// tokens. Run in a child process: the emulator reads its size once.
func TestGPUBudgetFromFreeMemory(t *testing.T) {
	if _, err := cuda.Count(); err != nil || !strings.Contains(os.Getenv("QTUNE_CUDA_DRIVER"), "cudaemu") {
		t.Skip("needs the CUDA emulator (make test-gpu-emu), whose memory size a test can set")
	}
	p := filepath.Join(t.TempDir(), "15M.gguf")
	if err := synth.Write(p, synth.Presets["15M"], quant.F32, 1); err != nil {
		t.Fatal(err)
	}
	args := []string{"generate", "--model", p, "--prompt", "Once upon a time", "--temp", "0", "-n", "6"}
	_, want, _ := runCLI(t, args...)
	js, _ := json.Marshal(append(args, "--device", "cuda"))
	cmd := exec.Command(os.Args[0], "-test.run=^TestSignalChild$")
	cmd.Env = append(os.Environ(), "QTUNE_CHILD_ARGS="+string(js), "QTUNE_CUDAEMU_MEM=474MiB")
	var out, errs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errs
	err := cmd.Run()
	logs := errs.String()
	if err != nil || out.String() != want {
		t.Fatalf("exit %v: %q, CPU %q\n%s", err, out.String(), want, logs)
	}
	for _, s := range []string{"(no --max-vram: the GPU's free memory less a margin)", "the others streamed"} {
		if !strings.Contains(logs, s) {
			t.Errorf("the log lacks %q:\n%s", s, logs)
		}
	}
}

// Under mpirun the ranks on a machine take its GPUs one each (local rank
// r, cuda:r) with --device cuda, and train; more ranks there than GPUs is
// refused by every rank with a line naming how many fit. (The emulator,
// whose GPU count a test sets; the ranks are this test binary.)
func TestGPURanksUnderMPI(t *testing.T) {
	if _, err := cuda.Count(); err != nil || !strings.Contains(os.Getenv("QTUNE_CUDA_DRIVER"), "cudaemu") {
		t.Skip("needs the CUDA emulator (make test-gpu-emu), whose GPU count a test can set")
	}
	mpirun := shared.Tool(t, "mpirun", "apt-get install openmpi-bin")
	for _, gpus := range []string{"2", "1"} {
		dir := t.TempDir()
		args := []string{"train", "--model", stories(t), "--data", shared.Path(t, "assets", "data", "tinyshakespeare"), "--device", "cuda",
			"--iters", "2", "--batch-size", "2", "--max-seq-length", "32", "--steps-per-eval", "0", "--save-every", "0",
			"--adapter-path", dir, "--cache-dir", filepath.Join(dir, "cache")}
		js, _ := json.Marshal(args)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		cmd := exec.CommandContext(ctx, mpirun, "--oversubscribe", "--allow-run-as-root", "-np", "2", os.Args[0], "-test.run=^TestSignalChild$")
		cmd.Env = append(os.Environ(), "QTUNE_CHILD_ARGS="+string(js), "QTUNE_CUDAEMU_DEVICES="+gpus, "QTUNE_MPI_TIMEOUT=2m")
		out, err := cmd.CombinedOutput()
		cancel()
		logs := string(out)
		switch gpus {
		case "2":
			if err != nil || !strings.Contains(logs, "local rank 0 of 2 on this machine takes cuda:0 of its 2 GPUs") || !strings.Contains(logs, "trained 2 iterations") {
				t.Errorf("2 ranks, 2 GPUs: %v\n%s", err, logs)
			}
		case "1":
			if err == nil || strings.Count(logs, "2 ranks on this machine and 1 GPU(s)") != 2 || !strings.Contains(logs, "launch at most 1 ranks a machine") {
				t.Errorf("2 ranks, 1 GPU: %v\n%s", err, logs)
			}
		}
	}
}

// qtune devices says what --device auto would find: on a machine without
// CUDA, each missing library and the CPU; under the emulator, its GPU
// with its compute capability and whether its kernels are cached, and
// the libraries' paths.
func TestGPUDevicesCommand(t *testing.T) {
	code, out, errs := runCLI(t, "devices")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if _, err := cuda.Count(); err != nil {
		for _, s := range []string{"CUDA driver: cuda: CUDA driver not found", "--device auto: the CPU"} {
			if !strings.Contains(out, s) {
				t.Errorf("without CUDA, the report lacks %q:\n%s", s, out)
			}
		}
		return
	}
	for _, s := range []string{"  cuda:0  ", "compute ", "cuBLAS: /", "NVRTC: /", "--device auto: cuda:0"} {
		if !strings.Contains(out, s) {
			t.Errorf("the report lacks %q:\n%s", s, out)
		}
	}
	code, out, _ = runCLI(t, "devices", "--json")
	var inv struct {
		GPUs []struct {
			Major int `json:"major"`
		} `json:"gpus"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &inv) != nil || len(inv.GPUs) == 0 || inv.GPUs[0].Major < 3 {
		t.Errorf("--json: exit %d: %s", code, out)
	}
}
