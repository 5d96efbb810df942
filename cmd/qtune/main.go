// Command qtune fine-tunes and runs Llama-family models whose weights stay
// quantized in memory-mapped files. This package only parses flags, sets up
// logging and calls the library; see the README for the commands.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/qtune/qtune/budget"
	"github.com/qtune/qtune/kernels"
	"github.com/qtune/qtune/kernels/cuda"
	"github.com/qtune/qtune/offload/mpi"
	"github.com/qtune/qtune/train"
)

const usage = `qtune: fine-tune Llama-family models on quantized, memory-mapped weights

Usage:
  qtune inspect FILE [--json] [--errors]          metadata, tensors, bytes per type, parameters
  qtune tokenize --model M --text T [--special] [--json]   token ids (M may be a vocabulary-only GGUF)
  qtune generate --model M --prompt P [-n N] [--temp T] [--top-p P] [--seed S] [--adapter DIR] [--json]
                 [--chat [--system S] [--messages FILE.json] [--chat-template FILE] [--chat-template-kwargs JSON]]
                                                  reply in the model's chat format
  qtune chat --model M [--adapter DIR] [--system S] [--chat-template FILE] [--chat-template-kwargs JSON]
                                                  talk to the model (KV cache kept across turns)
  qtune eval --model M --data FILE [--adapter DIR] [--json]   loss/perplexity, or accuracy on classification JSONL
  qtune quantize IN OUT --type q8_0|q4_0|q4_k|q5_k|q6_k|q3_k|q2_k|iq4_nl|iq4_xs|nf4|f16|bf16|f32
  qtune export --model M --adapter DIR [--merge --type T] --out OUT   adapters for other tools, or a merged model
  qtune plan train|eval|generate [the same flags]   print the memory plan (--max-mem) and stop
  qtune devices [--json]                           the GPUs and CUDA libraries --device auto would find
  qtune train --model M --data D --method lora|qlora [--iters N --batch-size B --learning-rate LR ...]

Global flags (before or after the command):
  --log-json     logs as JSON lines on stderr (default: console format on a terminal)
  --quiet        only warnings and errors on stderr

Results go to stdout; logs and progress go to stderr. Exit status 1 on error, 2 on bad usage.
`

// errUsage marks a command-line mistake (exit status 2).
var errUsage = errors.New("usage")

type app struct {
	log    zerolog.Logger
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	tty    bool // stderr is a terminal
	json   bool // --log-json
	quiet  bool // --quiet
	// planOnly makes train, eval and generate print their memory plan to
	// stdout and stop (qtune plan).
	planOnly bool
}

func main() {
	// A GPU run compiles its kernels (on a cache miss) in a child qtune:
	// NVRTC's library and heap stay out of this process and its --max-mem.
	cuda.ServeCompile()
	if exe, err := os.Executable(); err == nil {
		cuda.CompileInChild(exe)
	}
	// QTUNE_CPUPROFILE writes a CPU profile of the whole run (go tool pprof).
	if p := os.Getenv("QTUNE_CPUPROFILE"); p != "" {
		if f, err := os.Create(p); err == nil && pprof.StartCPUProfile(f) == nil {
			defer f.Close()
		}
	}
	// QTUNE_MEMPROFILE records every allocation (MemProfileRate 1) and writes
	// the heap profile at exit: go tool pprof -sample_index=alloc_space.
	mp := os.Getenv("QTUNE_MEMPROFILE")
	if mp != "" {
		runtime.MemProfileRate = 1
	}
	// QTUNE_MEMTRACE=1 reports what the highest resident set was made of.
	var mt *memTrace
	if os.Getenv("QTUNE_MEMTRACE") != "" {
		mt = startMemTrace()
	}
	code := run(os.Args[1:], os.Stdout, os.Stderr)
	if mt != nil {
		mt.report(os.Stderr)
	}
	pprof.StopCPUProfile()
	if mp != "" {
		if f, err := os.Create(mp); err == nil {
			pprof.Lookup("allocs").WriteTo(f, 0)
			f.Close()
		}
	}
	// The kernels' scratch past its plan item is a planning error that the
	// budget's margin may hide: say so (the memory tests fail on it).
	if _, _, over := kernels.ScratchStats(); over > 0 {
		fmt.Fprintf(os.Stderr, "qtune: warning: the kernels' scratch went %s past its plan\n", budget.FormatSize(over))
	}
	// QTUNE_PEAK_FILE asks for the process's peak resident set (VmHWM) on
	// exit (FILE.RANK under an MPI launcher), for memory tests: a parent's
	// rusage can carry the parent's own high-water mark across fork and exec.
	if p := os.Getenv("QTUNE_PEAK_FILE"); p != "" {
		if r, ok := mpi.LaunchedRank(); ok { // one file per rank: FILE.0, FILE.1, …
			p = fmt.Sprintf("%s.%d", p, r)
		}
		os.WriteFile(p, []byte(fmt.Sprintln(train.PeakRSS())), 0o644)
	}
	os.Exit(code)
}

func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func run(args []string, stdout, stderr io.Writer) int {
	return runIn(args, os.Stdin, stdout, stderr)
}

// runIn is run with stdin given (qtune chat reads its turns there).
func runIn(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	a := &app{stdin: stdin, stdout: stdout, stderr: stderr}
	if f, ok := stderr.(*os.File); ok {
		a.tty = isTerminal(f)
	}
	// Global flags come before the command, read as the flag package reads
	// any flags (--quiet=true too), or among the command's own flags, where
	// the flag package reads them: a flag's value that looks like one,
	// tokenize --text "-q", stays a value.
	gfs := flag.NewFlagSet("qtune", flag.ContinueOnError)
	gfs.SetOutput(io.Discard)
	gfs.BoolVar(&a.json, "log-json", false, "")
	gfs.BoolVar(&a.quiet, "quiet", false, "")
	gfs.BoolVar(&a.quiet, "q", false, "")
	err := gfs.Parse(args)
	a.setLogger()
	switch {
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprint(stdout, usage)
		return 0
	case err != nil:
		fmt.Fprintf(stderr, "qtune: %v (try qtune --help)\n", err)
		return 2
	}
	rest := gfs.Args()
	if len(rest) == 0 || rest[0] == "help" {
		fmt.Fprint(stdout, usage)
		if len(rest) == 0 {
			return 2
		}
		return 0
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM) // a train run saves its state on either
	defer stop()
	cmds := map[string]func(context.Context, []string) error{
		"inspect":  a.inspect,
		"tokenize": a.tokenize,
		"generate": a.generate,
		"chat":     a.chat,
		"eval":     a.eval,
		"quantize": a.quantize,
		"train":    a.train,
		"export":   a.export,
		"plan":     a.plan,
		"devices":  a.devices,
	}
	cmd, ok := cmds[rest[0]]
	if !ok {
		fmt.Fprintf(stderr, "qtune: unknown command %q (try qtune --help)\n", rest[0])
		return 2
	}
	err = cmd(ctx, rest[1:])
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintf(stderr, "qtune %s: %s\n", rest[0], strings.TrimPrefix(err.Error(), "usage: "))
		return 2
	default:
		msg := strings.ReplaceAll(err.Error(), "\n", " ")
		if a.json {
			a.log.Error().Str("command", rest[0]).Msg(msg)
		} else {
			fmt.Fprintf(stderr, "qtune %s: %s\n", rest[0], msg)
		}
		return 1
	}
}

// parse parses flags that may come before, between or after positional
// arguments, returning the positionals.
func (a *app) parse(fs *flag.FlagSet, args []string) ([]string, error) {
	fs.SetOutput(io.Discard)
	if fs.Lookup("quiet") == nil { // the global flags, among the command's
		q, j := a.quiet, a.json
		defer func() {
			if a.quiet != q || a.json != j {
				a.setLogger()
			}
		}()
		fs.BoolVar(&a.quiet, "quiet", a.quiet, "only warnings and errors on stderr (also before the command)")
		fs.BoolVar(&a.quiet, "q", a.quiet, "short for --quiet")
		fs.BoolVar(&a.json, "log-json", a.json, "logs as JSON lines (also before the command)")
	}
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fs.SetOutput(a.stdout)
				fmt.Fprintf(a.stdout, "Flags of qtune %s:\n", fs.Name())
				fs.PrintDefaults()
				return nil, err
			}
			return nil, fmt.Errorf("%w: %v", errUsage, err)
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// setLogger makes the logger for the global flags: JSON lines or console,
// warnings only when quiet.
func (a *app) setLogger() {
	level := zerolog.InfoLevel
	if a.quiet {
		level = zerolog.WarnLevel
	}
	if a.json {
		a.log = zerolog.New(a.stderr).With().Timestamp().Logger().Level(level)
	} else {
		a.log = zerolog.New(zerolog.ConsoleWriter{Out: a.stderr, TimeFormat: time.TimeOnly, NoColor: !a.tty}).
			With().Timestamp().Logger().Level(level)
	}
}

func usageErr(f string, a ...any) error {
	return fmt.Errorf("%w: %s", errUsage, fmt.Sprintf(f, a...))
}

// plan runs train, eval or generate up to their memory plan.
func (a *app) plan(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return usageErr("plan needs a command: train, eval or generate")
	}
	a.planOnly = true
	switch args[0] {
	case "train":
		return a.train(ctx, args[1:])
	case "eval":
		return a.eval(ctx, args[1:])
	case "generate":
		return a.generate(ctx, args[1:])
	}
	return usageErr("plan: unknown command %q (train, eval, generate)", args[0])
}
