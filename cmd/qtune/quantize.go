package main

import (
	"context"
	"flag"
	"fmt"
	"github.com/qtune/qtune/internal/fsx"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/qtune/qtune/model"
	"github.com/qtune/qtune/quant"
)

func (a *app) quantize(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("quantize", flag.ContinueOnError)
	typ := fs.String("type", "q8_0", "target type: "+quantizeTypeNames())
	tp := fs.String("tokenizer", "", "tokenizer file (llama2.c models)")
	pos, err := a.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 2 {
		return usageErr("quantize takes IN and OUT")
	}
	in, out := pos[0], pos[1]
	t, err := quant.ParseType(*typ)
	if err != nil || !quant.CanQuantize(t) {
		return usageErr("unsupported --type %q (%s)", *typ, quantizeTypeNames())
	}
	if abs1, _ := filepath.Abs(in); abs1 != "" {
		if abs2, _ := filepath.Abs(out); abs1 == abs2 {
			return usageErr("IN and OUT are the same file")
		}
	}
	m, err := a.openModel(in, *tp)
	if err != nil {
		return err
	}
	defer m.Close()
	t0 := time.Now()
	var rep model.QuantizeReport
	if err := fsx.WriteFile(out, func(w io.Writer) (err error) { // temporary name, fsync, rename
		rep, err = model.QuantizeContext(ctx, m, w, t) // Ctrl-C leaves no partial OUT
		return err
	}); err != nil {
		return err
	}
	a.log.Info().Str("out", out).Str("type", t.String()).Int("tensors", rep.Tensors).Int("quantized", rep.Quantized).
		Dur("took", time.Since(t0).Round(time.Millisecond)).Msg("quantized")
	fmt.Fprintf(a.stdout, "%s: %d tensors (%d as %s), %s, RMSE %.6g vs source\n", out, rep.Tensors, rep.Quantized, t, humanBytes(rep.Bytes), rep.RMSE)
	nf4Note(a, t)
	return nil
}

// quantizeTypeNames lists model.QuantizeTypes in lower case, as --type takes them.
func quantizeTypeNames() string {
	names := make([]string, len(model.QuantizeTypes))
	for i, t := range model.QuantizeTypes {
		names[i] = strings.ToLower(t.String())
	}
	return strings.Join(names, ", ")
}
