package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
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
	tmp := out + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	rep, err := model.Quantize(m, bw, t)
	if err == nil {
		err = bw.Flush()
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, out)
	}
	if err != nil {
		os.Remove(tmp)
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
