package chat

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode/utf16"

	"github.com/ardanlabs/jinja"
)

// tojson is the tojson filter of transformers and @huggingface/jinja, which
// the rewrite puts in place of the engine's (whose indent form sorts keys
// and whose strings escape U+2028 and have no ensure_ascii):
// json.dumps(x, ensure_ascii=False, indent=None, separators=None,
// sort_keys=False) with JavaScript's number formatting, as Hugging Face.
// Its output is refused past max bytes (the render's MaxOutput).
func tojson(max int, args []jinja.Value, kw map[string]jinja.Value) (jinja.Value, error) {
	if len(args) == 0 {
		return jinja.Undefined(), fmt.Errorf("tojson: no input")
	}
	opt := jsonOptions{item: ", ", key: ": ", max: max}
	get := func(i int, name string) (jinja.Value, bool) {
		if v, ok := kw[name]; ok {
			return v, true
		}
		if i < len(args) {
			return args[i], true
		}
		return jinja.Undefined(), false
	}
	if v, ok := get(1, "ensure_ascii"); ok && !v.IsNone() {
		if !v.IsBool() {
			return jinja.Undefined(), fmt.Errorf("tojson: ensure_ascii must be a boolean")
		}
		opt.ascii = v.AsBool()
	}
	if v, ok := get(2, "indent"); ok && !v.IsNone() {
		if !v.IsInt() || v.AsInt() < 0 || v.AsInt() > 64 {
			return jinja.Undefined(), fmt.Errorf("tojson: indent must be a small integer")
		}
		opt.indent = strings.Repeat(" ", int(v.AsInt()))
		if v.AsInt() > 0 {
			opt.item = ","
		}
	}
	if v, ok := get(3, "separators"); ok && !v.IsNone() {
		if !v.IsList() || v.AsList().Len() != 2 || !v.AsList().Get(0).IsString() || !v.AsList().Get(1).IsString() {
			return jinja.Undefined(), fmt.Errorf("tojson: separators must be two strings")
		}
		opt.item, opt.key = v.AsList().Get(0).AsString(), v.AsList().Get(1).AsString()
	}
	if v, ok := get(4, "sort_keys"); ok && !v.IsNone() {
		opt.sort = v.IsTruthy()
	}
	var b strings.Builder
	if err := opt.encode(&b, args[0], 0); err != nil {
		return jinja.Undefined(), err
	}
	if b.Len() > max {
		return jinja.Undefined(), errJSONSize(max)
	}
	return jinja.NewString(b.String()), nil
}

type jsonOptions struct {
	item, key, indent string
	ascii, sort       bool
	max               int // the longest output; encode stops soon after
}

func errJSONSize(max int) error {
	return fmt.Errorf("tojson would make a string of more than %d bytes: %w", max, ErrLimit)
}

func (o *jsonOptions) encode(b *strings.Builder, v jinja.Value, depth int) error {
	if depth > 512 {
		return fmt.Errorf("tojson: nested too deep")
	}
	if b.Len() > o.max {
		return errJSONSize(o.max)
	}
	switch {
	case v.IsUndefined(), v.IsNone():
		b.WriteString("null")
	case v.IsBool():
		b.WriteString(strconv.FormatBool(v.AsBool()))
	case v.IsInt():
		b.WriteString(strconv.FormatInt(v.AsInt(), 10))
	case v.IsFloat():
		f := v.AsFloat()
		if math.IsInf(f, 0) || math.IsNaN(f) {
			b.WriteString("null") // JSON.stringify
		} else {
			b.WriteString(jsNumber(f))
		}
	case v.IsString():
		o.str(b, v.AsString())
	case v.IsList():
		items := v.AsList().Items
		o.open(b, '[', len(items))
		for i, it := range items {
			o.sep(b, i, depth)
			if err := o.encode(b, it, depth+1); err != nil {
				return err
			}
		}
		o.close(b, ']', len(items), depth)
	case v.IsDict():
		d := v.AsDict()
		keys := d.OrderedKeys()
		if o.sort {
			keys = slices.Clone(keys)
			slices.Sort(keys)
		}
		o.open(b, '{', len(keys))
		for i, k := range keys {
			o.sep(b, i, depth)
			o.str(b, k)
			b.WriteString(o.key)
			val, _ := d.Get(k)
			if err := o.encode(b, val, depth+1); err != nil {
				return err
			}
		}
		o.close(b, '}', len(keys), depth)
	default:
		return fmt.Errorf("tojson: cannot convert %s to JSON", v.String())
	}
	return nil
}

func (o *jsonOptions) open(b *strings.Builder, c byte, n int) { b.WriteByte(c) }

func (o *jsonOptions) sep(b *strings.Builder, i, depth int) {
	if i > 0 {
		b.WriteString(o.item)
	}
	if o.indent != "" {
		b.WriteByte('\n')
		b.WriteString(strings.Repeat(o.indent, depth+1))
	}
}

func (o *jsonOptions) close(b *strings.Builder, c byte, n, depth int) {
	if o.indent != "" && n > 0 {
		b.WriteByte('\n')
		b.WriteString(strings.Repeat(o.indent, depth))
	}
	b.WriteByte(c)
}

// str writes s as JSON.stringify does, then (ensure_ascii) every non-ASCII
// UTF-16 unit as \uXXXX.
func (o *jsonOptions) str(b *strings.Builder, s string) {
	const hex = "0123456789abcdef"
	b.WriteByte('"')
	for i, r := range s {
		if i&1023 == 0 && b.Len() > o.max {
			return // encode refuses it at the next value or at the end
		}
		switch {
		case r == '"':
			b.WriteString(`\"`)
		case r == '\\':
			b.WriteString(`\\`)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r == '\b':
			b.WriteString(`\b`)
		case r == '\f':
			b.WriteString(`\f`)
		case r < 0x20 || o.ascii && r > 0x7e:
			var units []uint16
			if r > 0xffff {
				r1, r2 := utf16.EncodeRune(r)
				units = []uint16{uint16(r1), uint16(r2)}
			} else {
				units = []uint16{uint16(r)}
			}
			for _, u := range units {
				b.WriteString(`\u`)
				b.WriteByte(hex[u>>12])
				b.WriteByte(hex[u>>8&15])
				b.WriteByte(hex[u>>4&15])
				b.WriteByte(hex[u&15])
			}
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
}

// jsNumber formats f as JavaScript's Number.prototype.toString.
func jsNumber(f float64) string {
	if f == 0 {
		return "0"
	}
	a := math.Abs(f)
	if a >= 1e-6 && a < 1e21 {
		return strconv.FormatFloat(f, 'f', -1, 64)
	}
	s := strconv.FormatFloat(f, 'e', -1, 64) // 1e+21, 1.5e-07
	mant, exp, _ := strings.Cut(s, "e")
	sign := exp[0]
	exp = strings.TrimLeft(exp[1:], "0")
	return mant + "e" + string(sign) + exp
}
