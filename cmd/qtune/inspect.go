package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/qtune/qtune/format/gguf"
	"github.com/qtune/qtune/model"
	"github.com/qtune/qtune/offload"
	"github.com/qtune/qtune/quant"
	"github.com/qtune/qtune/tensor"
)

type inspectTensor struct {
	Name  string  `json:"name"`
	Type  string  `json:"type"`
	Shape []int64 `json:"shape"`
	Bytes int64   `json:"bytes"`
}

type typeTotal struct {
	Type    string `json:"type"`
	Tensors int    `json:"tensors"`
	Elems   int64  `json:"elements"`
	Bytes   int64  `json:"bytes"`
}

type quantErr struct {
	Type     string  `json:"type"`
	RMSE     float64 `json:"rmse"`
	Elements int64   `json:"elements"`
}

type inspectResult struct {
	File       string            `json:"file"`
	Format     string            `json:"format"`
	Version    uint32            `json:"version,omitempty"`
	FileBytes  int64             `json:"file_bytes"`
	Arch       string            `json:"architecture,omitempty"`
	Family     string            `json:"family,omitempty"`      // the family qtune runs it as, with its features
	Features   []string          `json:"features,omitempty"`    // what the block turns on beyond Llama 2's
	Supported  *string           `json:"unsupported,omitempty"` // why qtune will not run it`
	Params     int64             `json:"parameters"`
	Metadata   map[string]string `json:"metadata"`
	metaOrder  []string
	Tensors    []inspectTensor `json:"tensors"`
	ByType     []typeTotal     `json:"bytes_per_type"`
	QuantError []quantErr      `json:"quantization_error,omitempty"`
}

func (a *app) inspect(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("inspect", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print the result as JSON")
	errs := fs.Bool("errors", false, "measure the RMSE each quantization type would give (default: on for files under 64 MiB)")
	tp := fs.String("tokenizer", "", "tokenizer file (llama2.c models)")
	pos, err := a.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageErr("inspect takes one FILE (a .gguf, a llama2.c .bin or a Hugging Face folder)")
	}
	path := pos[0]
	res := inspectResult{File: path, Metadata: map[string]string{}}
	var ts []tensor.Tensor
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	var store offload.Store
	defer store.Close()
	if !st.IsDir() {
		mf, err := store.Map(path)
		if err != nil {
			return err
		}
		res.FileBytes = int64(len(mf.Bytes()))
		if b := mf.Bytes(); len(b) >= 4 && string(b[:4]) == "GGUF" {
			f, err := gguf.Parse(b)
			if err != nil {
				return fmt.Errorf("%s: %w", path, err)
			}
			res.Format, res.Version = "gguf", f.Version
			res.Arch, _ = f.String("general.architecture")
			for _, kv := range f.KV {
				res.Metadata[kv.Key] = showValue(kv.Value)
				res.metaOrder = append(res.metaOrder, kv.Key)
			}
			for _, ti := range f.Tensors {
				ts = append(ts, tensor.Tensor{Name: ti.Name, Type: ti.Type, Shape: ti.Shape, Data: f.Data(b, ti)})
			}
		}
	}
	if res.Format == "" {
		m, err := model.Open(path, model.Options{Tokenizer: *tp})
		if err != nil {
			return err
		}
		defer m.Close()
		res.Format, res.Arch = m.Format, m.Config.Arch
		res.Family, res.Features = m.Config.Arch, m.Features()
		c := m.Config
		for _, kv := range [][2]string{{"dim", fmt.Sprint(c.Dim)}, {"hidden", fmt.Sprint(c.Hidden)}, {"layers", fmt.Sprint(c.Layers)},
			{"heads", fmt.Sprint(c.Heads)}, {"kv_heads", fmt.Sprint(c.KVHeads)}, {"vocab", fmt.Sprint(c.Vocab)},
			{"context", fmt.Sprint(c.Context)}, {"rope_theta", fmt.Sprint(c.RopeTheta)}, {"rms_eps", fmt.Sprint(c.Eps)}, {"tied_output", fmt.Sprint(c.Tied)}} {
			res.Metadata[kv[0]] = kv[1]
			res.metaOrder = append(res.metaOrder, kv[0])
		}
		ts = m.Tensors
		if res.FileBytes == 0 {
			res.FileBytes = m.WeightBytes()
		}
	}
	if res.Format == "gguf" {
		// The family and its features, or why qtune refuses the file.
		if m, err := model.Open(path, model.Options{Tokenizer: *tp}); err != nil {
			why := err.Error()
			res.Supported = &why
		} else {
			res.Family, res.Features = m.Config.Arch, m.Features()
			m.Close()
		}
	}
	totals := map[quant.Type]*typeTotal{}
	for _, t := range ts {
		res.Tensors = append(res.Tensors, inspectTensor{t.Name, t.Type.String(), t.Shape, int64(len(t.Data))})
		res.Params += t.Elems()
		tt := totals[t.Type]
		if tt == nil {
			tt = &typeTotal{Type: t.Type.String()}
			totals[t.Type] = tt
		}
		tt.Tensors++
		tt.Elems += t.Elems()
		tt.Bytes += int64(len(t.Data))
	}
	for _, tt := range totals {
		res.ByType = append(res.ByType, *tt)
	}
	sort.Slice(res.ByType, func(i, j int) bool { return res.ByType[i].Bytes > res.ByType[j].Bytes })
	measure := *errs
	if !isFlagSet(fs, "errors") {
		measure = res.FileBytes < 64<<20
	}
	if measure {
		for _, qt := range []quant.Type{quant.Q8_0, quant.Q6_K, quant.Q4_K, quant.Q4_0, quant.NF4} {
			r, n, err := model.QuantError(ts, qt)
			if err != nil {
				return err
			}
			if n > 0 {
				res.QuantError = append(res.QuantError, quantErr{qt.String(), r, n})
			}
		}
	}
	if *asJSON {
		return a.printJSON(res)
	}
	w := a.stdout
	fmt.Fprintf(w, "file        %s\nformat      %s", res.File, res.Format)
	if res.Version > 0 {
		fmt.Fprintf(w, " v%d", res.Version)
	}
	fmt.Fprintf(w, "\nsize        %s\n", humanBytes(res.FileBytes))
	if res.Arch != "" {
		fmt.Fprintf(w, "arch        %s\n", res.Arch)
	}
	if res.Family != "" {
		fmt.Fprintf(w, "family      %s: %s\n", res.Family, strings.Join(res.Features, ", "))
	}
	if res.Supported != nil {
		fmt.Fprintf(w, "family      not supported: %s\n", *res.Supported)
	}
	fmt.Fprintf(w, "parameters  %s (%d)\n\nmetadata (%d)\n", humanCount(res.Params), res.Params, len(res.metaOrder))
	for _, k := range res.metaOrder {
		fmt.Fprintf(w, "  %-44s %s\n", k, res.Metadata[k])
	}
	fmt.Fprintf(w, "\ntensors (%d)\n", len(res.Tensors))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  name\ttype\tshape\tbytes")
	for _, t := range res.Tensors {
		fmt.Fprintf(tw, "  %s\t%s\t%v\t%d\n", t.Name, t.Type, t.Shape, t.Bytes)
	}
	tw.Flush()
	fmt.Fprintln(w, "\nbytes per type")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, t := range res.ByType {
		bpw := 8 * float64(t.Bytes) / float64(max(t.Elems, 1))
		fmt.Fprintf(tw, "  %s\t%d tensors\t%s\t%.2f bits/weight\n", t.Type, t.Tensors, humanBytes(t.Bytes), bpw)
	}
	tw.Flush()
	if len(res.QuantError) > 0 {
		fmt.Fprintln(w, "\nquantization error (RMSE vs these weights, over the tensors each type would convert)")
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		for _, q := range res.QuantError {
			fmt.Fprintf(tw, "  %s\t%.6g\t%d elements\n", q.Type, q.RMSE, q.Elements)
		}
		tw.Flush()
	}
	return nil
}

func isFlagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) {
		if f.Name == name {
			set = true
		}
	})
	return set
}

func showValue(v any) string {
	switch x := v.(type) {
	case string:
		if len(x) > 80 {
			return fmt.Sprintf("%q… (%d bytes)", x[:77], len(x))
		}
		return fmt.Sprintf("%q", x)
	case gguf.Array:
		n := x.Len()
		var head []string
		switch d := x.Data.(type) {
		case []string:
			for i := 0; i < len(d) && i < 5; i++ {
				head = append(head, fmt.Sprintf("%q", d[i]))
			}
		default:
			s := fmt.Sprint(d)
			s = strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")
			f := strings.Fields(s)
			if len(f) > 5 {
				f = f[:5]
			}
			head = f
		}
		more := ""
		if n > len(head) {
			more = ", …"
		}
		return fmt.Sprintf("[%d × %s: %s%s]", n, x.Elem, strings.Join(head, ", "), more)
	}
	return fmt.Sprint(v)
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.2f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func humanCount(n int64) string {
	switch {
	case n >= 1e9:
		return fmt.Sprintf("%.2fB", float64(n)/1e9)
	case n >= 1e6:
		return fmt.Sprintf("%.2fM", float64(n)/1e6)
	case n >= 1e3:
		return fmt.Sprintf("%.1fK", float64(n)/1e3)
	}
	return fmt.Sprint(n)
}
