// Command finetune shows an app fine-tuning through the qtune library, the
// way an on-device app would: a context that cancels (Ctrl-C, or a deadline),
// a progress callback that could drive a UI, and errors to branch on.
//
//	go run ./examples/finetune -model ../shared/assets/models/stories260K.gguf \
//	    -data ../shared/assets/data/tinyshakespeare -iters 40
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"time"

	"github.com/qtune/qtune/model"
	"github.com/qtune/qtune/train"
)

func main() {
	mp := flag.String("model", "../shared/assets/models/stories260K.gguf", "base model")
	dp := flag.String("data", "../shared/assets/data/tinyshakespeare", "data folder or file")
	iters := flag.Int("iters", 40, "iterations")
	limit := flag.Duration("timeout", 2*time.Minute, "give up after this long")
	out := flag.String("out", "out/example-adapter", "adapter folder")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *limit)
	defer cancel()

	cfg := train.Defaults()
	cfg.Model, cfg.Data, cfg.AdapterPath = *mp, *dp, *out
	cfg.Method = "qlora" // the float base is quantized to NF4 once and cached
	cfg.Iters, cfg.BatchSize, cfg.MaxSeqLength = *iters, 4, 128
	cfg.LearningRate, cfg.Rank, cfg.Alpha = 3e-3, 8, 16
	cfg.StepsPerReport, cfg.StepsPerEval, cfg.ValBatches = 10, *iters, 10
	cfg.PhaseReports = true // phases and micro-batches too, for a progress bar

	res, err := train.Run(ctx, cfg,
		func(note string) { fmt.Println("note:", note) },
		func(p train.Progress) { // a UI would update a bar here
			switch p.Kind {
			case train.KindPhase: // converting base, tokenizing, training, validating, saving
				fmt.Println("--", p.Phase)
				return
			case train.KindMicroBatch: // every forward pass: a bar could move here
				return
			case train.KindVal:
				fmt.Printf("step %4d  validation loss %.3f\n", p.Iter, p.Loss)
				return
			}
			fmt.Printf("step %4d  loss %.3f  %.0f tok/s  %.1f MB peak\n", p.Iter, p.Loss, p.TokPerSec, float64(p.PeakMem)/1e6)
		})
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		fmt.Println("stopped early; resume later with cfg.Resume = true")
		return
	case err != nil:
		fmt.Fprintln(os.Stderr, "fine-tuning failed:", err)
		os.Exit(1)
	}
	fmt.Printf("validation loss %.3f -> %.3f in %s\n", res.FirstValLoss, res.FinalValLoss, res.Took.Round(time.Millisecond))

	// Use the adapter straight away.
	m, err := model.Open(*mp, model.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer m.Close()
	if _, err := train.ApplyAdapter(m, *out); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ids, err := m.Generate(ctx, m.Tokenizer.Encode("ROMEO:", m.Tokenizer.AddBOS()), model.GenerateOptions{MaxTokens: 40, StopAtEOS: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("ROMEO:%s\n", m.Tokenizer.Decode(ids))
}
