package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/qtune/qtune/methods/lora"
	"github.com/qtune/qtune/quant"
	"github.com/qtune/qtune/train"
)

func (a *app) export(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("export", flag.ContinueOnError)
	mp := fs.String("model", "", "base model file or folder")
	tp := fs.String("tokenizer", "", "tokenizer file (llama2.c models)")
	adp := fs.String("adapter", "", "adapter to export (PEFT folder, GGUF adapter file/folder; LoReML, MeZO float/scales and LoHO-intra outputs: --merge only)")
	merge := fs.Bool("merge", false, "fold the adapter into the weights and write a whole model")
	typ := fs.String("type", "f16", "with --merge: type of the merged matrices (f32, f16, bf16, q8_0, q4_0, q4_k, q6_k, nf4)")
	out := fs.String("out", "", "output: a .gguf file with --merge, else a folder for PEFT + GGUF adapters")
	pos, err := a.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageErr("unexpected argument %q", pos[0])
	}
	if *adp == "" || *out == "" {
		return usageErr("--adapter and --out are required")
	}
	t, err := quant.ParseType(*typ)
	if err != nil || !quant.CanQuantize(t) {
		return usageErr("unsupported --type %q", *typ)
	}
	m, err := a.openModel(*mp, *tp)
	if err != nil {
		return err
	}
	defer m.Close()
	t0 := time.Now()
	ex, err := train.Export(m, train.ExportOptions{Adapter: *adp, Out: *out, Merge: *merge, Type: t, ModelPath: *mp})
	if errors.Is(err, train.ErrBadOptions) {
		return usageErr("%s", strings.TrimSuffix(err.Error(), ": "+train.ErrBadOptions.Error()))
	}
	if err != nil {
		return err
	}
	if !*merge {
		fmt.Fprintf(a.stdout, "%s: %d adapted matrices as PEFT (%s) and GGUF (%s)\n", *out, ex.Matrices, lora.PEFTFile, lora.GGUFFile)
		return nil
	}
	a.log.Info().Str("adapter", ex.Loaded).Dur("took", time.Since(t0).Round(time.Millisecond)).Msg("merged")
	rep := ex.Report
	fmt.Fprintf(a.stdout, "%s: merged %d adapted matrices, %d tensors (%d as %s), %s\n", *out, ex.Matrices, rep.Tensors, rep.Quantized, t, humanBytes(rep.Bytes))
	nf4Note(a, t)
	return nil
}

// nf4Note says plainly that an NF4 file is qtune's alone.
func nf4Note(a *app, t quant.Type) {
	if t == quant.NF4 {
		fmt.Fprintf(a.stdout, "note: NF4 is qtune's own type (id %d): this file loads in qtune only; for llama.cpp and other tools use --type q8_0, q4_k or f16\n", uint32(quant.NF4))
	}
}
