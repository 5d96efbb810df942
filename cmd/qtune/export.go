package main

import (
	"context"
	"flag"
	"fmt"
	"github.com/qtune/qtune/internal/fsx"
	"io"
	"time"

	"github.com/qtune/qtune/methods/lora"
	"github.com/qtune/qtune/methods/loreml"
	"github.com/qtune/qtune/model"
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
	var delta model.Delta
	var matrices int
	var set *lora.Set
	switch {
	case train.HasZOState(*adp) && !loreml.Has(*adp):
		if !*merge {
			return usageErr("%s holds zeroth-order or hybrid state (float tensors, block scales or deltas) with no PEFT/GGUF LoRA form; export it with --merge", *adp)
		}
		d, line, err := train.MergeZOState(m, *adp)
		if err != nil {
			return err
		}
		delta = d
		a.log.Info().Str("adapter", line).Msg("merging")
		for l := range m.Adapters {
			for _, ad := range m.Adapters[l] {
				if ad != nil {
					matrices++
				}
			}
		}
	case loreml.Has(*adp):
		ls, err := loreml.Load(m, *adp)
		if err != nil {
			return err
		}
		if !*merge {
			return usageErr("a LoReML delta (%s) has no PEFT/GGUF LoRA form; export it with --merge", loreml.FileName)
		}
		delta, matrices = ls.Merge(), len(ls.Matrices)
	default:
		if set, err = lora.Load(m, *adp); err != nil {
			return err
		}
		delta, matrices = set.Merge(), len(set.Layers)
	}
	if !*merge {
		// The folder's files are one unit: a crash leaves the old set or the new.
		if err := fsx.SaveDir(*out, func(stage string) error { return set.Save(stage, m, train.BaseModelName(*mp)) }); err != nil {
			return err
		}
		fmt.Fprintf(a.stdout, "%s: %d adapted matrices as PEFT (%s) and GGUF (%s)\n", *out, len(set.Layers), lora.PEFTFile, lora.GGUFFile)
		return nil
	}
	t0 := time.Now()
	var rep model.QuantizeReport
	if err := fsx.WriteFile(*out, func(w io.Writer) (err error) {
		rep, err = model.QuantizeWith(m, w, t, delta)
		return err
	}); err != nil {
		return err
	}
	a.log.Info().Dur("took", time.Since(t0).Round(time.Millisecond)).Msg("merged")
	fmt.Fprintf(a.stdout, "%s: merged %d adapted matrices, %d tensors (%d as %s), %s\n", *out, matrices, rep.Tensors, rep.Quantized, t, humanBytes(rep.Bytes))
	nf4Note(a, t)
	return nil
}

// nf4Note says plainly that an NF4 file is qtune's alone.
func nf4Note(a *app, t quant.Type) {
	if t == quant.NF4 {
		fmt.Fprintf(a.stdout, "note: NF4 is qtune's own type (id %d): this file loads in qtune only; for llama.cpp and other tools use --type q8_0, q4_k or f16\n", uint32(quant.NF4))
	}
}
