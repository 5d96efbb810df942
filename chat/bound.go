package chat

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/ardanlabs/jinja"
)

// This file bounds what a render can allocate. A chat template comes from a
// model file, so it is input like any other: '{{ " " * 10**10 }}' must be
// refused, not make a 10 GB string. Every way the engine can make a value
// much larger than its inputs goes through the guard (rewrite and expr.go
// put the calls in), and the guard checks the size before anything is
// allocated:
//
//   - a string made by *, +, ~, join, replace, indent, format or tojson
//     is at most MaxOutput bytes;
//   - a list made by +, append, insert, split, list or from_json, and a
//     dict grown by update, has at most MaxIterations items;
//   - append, insert, update and {% set ns.x = v %} refuse to make a value
//     that contains itself (printing it would recurse without end), and
//     values are printed or stringified only when nested at most maxNest
//     deep;
//   - everything {{ }} and literal text write, counted again where a
//     macro's result or a {% set %} block is written once more, is at most
//     emitFactor×MaxOutput bytes in all (loops of large writes);
//   - loops, macro calls and range() are counted by tick (limits.go).
//
// The operations themselves are the engine's (ardanlabs/jinja eval.go and
// builtins.go): each function below computes exactly what the engine would
// (bound_test.go compares them on a grid of values), after its checks.

// maxNest is how deep a value printed or stringified may nest.
const maxNest = 1000

// emitFactor bounds all the text written in one render, as a multiple of
// MaxOutput: a macro's output is counted when written inside it and again
// when its result is written.
const emitFactor = 4

// errSize is the guard's refusal of a value too large, as an error of the
// render (sticky, like the guard's other limits).
func (g *guard) errSize(format string, a ...any) error {
	if g.err == nil {
		g.err = fmt.Errorf(format+": %w", append(a, ErrLimit)...)
	}
	return g.err
}

// printedLen is len(printValue(v)) as the engine prints v at the top level
// ({{ v }}, ~, join), or as Value.String() inside a list or dict; the walk
// stops once the length passes limit, and fails past maxNest levels.
func printedLen(v jinja.Value, top bool, limit, depth int) (int, error) {
	if depth > maxNest {
		return 0, fmt.Errorf("a value nested more than %d deep", maxNest)
	}
	switch {
	case v.IsUndefined():
		if top {
			return 0, nil
		}
		return len("Undefined"), nil
	case v.IsNone():
		if top {
			return 0, nil
		}
		return len("None"), nil
	case v.IsString():
		if top {
			return len(v.AsString()), nil
		}
		return len(v.AsString()) + 2, nil
	case v.IsList():
		n := 2
		for i, it := range v.AsList().Items {
			if i > 0 {
				n += 2
			}
			m, err := printedLen(it, false, limit-n, depth+1)
			if err != nil {
				return 0, err
			}
			if n += m; n > limit {
				return n, nil
			}
		}
		return n, nil
	case v.IsDict():
		d := v.AsDict()
		n := 2
		for i, k := range d.Keys {
			if i > 0 {
				n += 2
			}
			n += len(k) + 4
			m, err := printedLen(d.Data[k], false, limit-n, depth+1)
			if err != nil {
				return 0, err
			}
			if n += m; n > limit {
				return n, nil
			}
		}
		return n, nil
	case v.IsCallable():
		if top {
			return 0, nil
		}
		return len(v.String()), nil
	}
	return len(v.String()), nil // bool, int, float
}

// printed is the engine's printValue.
func printed(v jinja.Value) string {
	switch {
	case v.IsUndefined(), v.IsNone(), v.IsCallable():
		return ""
	case v.IsString():
		return v.AsString()
	}
	return v.String()
}

// printedChecked is printed(v), refused when longer than MaxOutput.
func (g *guard) printedChecked(v jinja.Value, what string) (string, error) {
	n, err := printedLen(v, true, g.lim.MaxOutput, 0)
	if err != nil {
		return "", g.errSize("%s: %v", what, err)
	}
	if n > g.lim.MaxOutput {
		return "", g.errSize("%s would make a string of more than %d bytes", what, g.lim.MaxOutput)
	}
	return printed(v), nil
}

// toInt64 and toFloat64 are the engine's conversions.
func toInt64(v jinja.Value) int64 {
	switch {
	case v.IsInt():
		return v.AsInt()
	case v.IsFloat():
		return int64(v.AsFloat())
	case v.IsBool():
		if v.AsBool() {
			return 1
		}
		return 0
	case v.IsString():
		var n int64
		fmt.Sscanf(v.AsString(), "%d", &n)
		return n
	}
	return 0
}

func toFloat64(v jinja.Value) float64 {
	switch {
	case v.IsFloat():
		return v.AsFloat()
	case v.IsInt():
		return float64(v.AsInt())
	case v.IsBool():
		if v.AsBool() {
			return 1
		}
		return 0
	case v.IsString():
		var f float64
		fmt.Sscanf(v.AsString(), "%f", &f)
		return f
	}
	return 0
}

func two(args []jinja.Value, name string) (jinja.Value, jinja.Value, error) {
	if len(args) != 2 {
		return jinja.Undefined(), jinja.Undefined(), fmt.Errorf("internal %s: %d arguments", name, len(args))
	}
	return args[0], args[1], nil
}

// mul is a * b.
func (g *guard) mul(args []jinja.Value, kw map[string]jinja.Value) (jinja.Value, error) {
	a, b, err := two(args, "*")
	if err != nil {
		return jinja.Undefined(), err
	}
	if a.IsString() && b.IsInt() {
		s, n := a.AsString(), b.AsInt()
		if n < 0 {
			return jinja.Undefined(), g.errSize("a string repeated a negative number of times (%d)", n)
		}
		if n > 0 && int64(len(s)) > int64(g.lim.MaxOutput)/n {
			return jinja.Undefined(), g.errSize("a string of %d bytes repeated %d times would exceed %d bytes", len(s), n, g.lim.MaxOutput)
		}
		return jinja.NewString(strings.Repeat(s, int(n))), nil
	}
	if a.IsFloat() || b.IsFloat() {
		return jinja.NewFloat(toFloat64(a) * toFloat64(b)), nil
	}
	return jinja.NewInt(toInt64(a) * toInt64(b)), nil
}

// add is a + b.
func (g *guard) add(args []jinja.Value, kw map[string]jinja.Value) (jinja.Value, error) {
	a, b, err := two(args, "+")
	if err != nil {
		return jinja.Undefined(), err
	}
	if a.IsString() || b.IsString() {
		return g.concat(a, b, "+")
	}
	if a.IsList() && b.IsList() {
		x, y := a.AsList().Items, b.AsList().Items
		if len(x)+len(y) > g.lim.MaxIterations {
			return jinja.Undefined(), g.errSize("lists of %d and %d items added would exceed %d items", len(x), len(y), g.lim.MaxIterations)
		}
		items := make([]jinja.Value, 0, len(x)+len(y))
		return jinja.NewList(append(append(items, x...), y...)), nil
	}
	if a.IsFloat() || b.IsFloat() {
		return jinja.NewFloat(toFloat64(a) + toFloat64(b)), nil
	}
	return jinja.NewInt(toInt64(a) + toInt64(b)), nil
}

// cat is a ~ b.
func (g *guard) cat(args []jinja.Value, kw map[string]jinja.Value) (jinja.Value, error) {
	a, b, err := two(args, "~")
	if err != nil {
		return jinja.Undefined(), err
	}
	return g.concat(a, b, "~")
}

func (g *guard) concat(a, b jinja.Value, op string) (jinja.Value, error) {
	limit := g.lim.MaxOutput
	na, err := printedLen(a, true, limit, 0)
	if err == nil {
		var nb int
		nb, err = printedLen(b, true, limit, 0)
		if err == nil && na+nb > limit {
			return jinja.Undefined(), g.errSize("%s would make a string of more than %d bytes", op, limit)
		}
	}
	if err != nil {
		return jinja.Undefined(), g.errSize("%s: %v", op, err)
	}
	return jinja.NewString(printed(a) + printed(b)), nil
}

// out counts what {{ v }} writes and returns v for the engine to write.
func (g *guard) out(args []jinja.Value, kw map[string]jinja.Value) (jinja.Value, error) {
	if len(args) != 1 {
		return jinja.Undefined(), fmt.Errorf("an output tag holds %d expressions, want one", len(args))
	}
	total := int64(emitFactor) * int64(g.lim.MaxOutput)
	left := total - g.emitted
	n, err := printedLen(args[0], true, int(left), 0)
	if err != nil {
		return jinja.Undefined(), g.errSize("output: %v", err)
	}
	if g.emitted += int64(n); g.emitted > total {
		return jinja.Undefined(), g.errSize("the template wrote more than %d bytes (output, macro results and {%% set %%} blocks together)", total)
	}
	return args[0], nil
}

// reaches reports whether v is or contains target (a *List or *Dict); a
// value nested more than maxNest deep is an error.
func reaches(v jinja.Value, target any, depth int) (bool, error) {
	if depth > maxNest {
		return false, fmt.Errorf("a value nested more than %d deep", maxNest)
	}
	var items []jinja.Value
	switch {
	case v.IsList():
		if any(v.AsList()) == target {
			return true, nil
		}
		items = v.AsList().Items
	case v.IsDict():
		if any(v.AsDict()) == target {
			return true, nil
		}
		for _, k := range v.AsDict().Keys {
			items = append(items, v.AsDict().Data[k])
		}
	}
	for _, it := range items {
		if found, err := reaches(it, target, depth+1); found || err != nil {
			return found, err
		}
	}
	return false, nil
}

// link refuses to put v inside target (what names the operation).
func (g *guard) link(v jinja.Value, target any, what, kind string) error {
	found, err := reaches(v, target, 1)
	if err != nil {
		return g.errSize("%s: %v", what, err)
	}
	if found {
		return g.errSize("%s would put a %s inside itself", what, kind)
	}
	return nil
}

// into is the value of {% set ns.attr = v %}: v, unless it contains ns.
func (g *guard) into(args []jinja.Value, kw map[string]jinja.Value) (jinja.Value, error) {
	ns, v, err := two(args, "set")
	if err != nil {
		return jinja.Undefined(), err
	}
	if ns.IsDict() {
		if err := g.link(v, any(ns.AsDict()), "set", "namespace"); err != nil {
			return jinja.Undefined(), err
		}
	}
	return v, nil
}

// method is x|m('name') for x.name(...) of guardedMethods: the method the
// engine would find (evalAttr: a dict's own key first), bounded.
func (g *guard) method(args []jinja.Value, kw map[string]jinja.Value) (jinja.Value, error) {
	obj, nv, err := two(args, "method")
	if err != nil {
		return jinja.Undefined(), err
	}
	name := printed(nv)
	call := func(f func([]jinja.Value) (jinja.Value, error)) (jinja.Value, error) {
		return jinja.NewCallable(name, func(a []jinja.Value, _ map[string]jinja.Value) (jinja.Value, error) { return f(a) }), nil
	}
	switch {
	case obj.IsDict():
		d := obj.AsDict()
		if v, ok := d.Get(name); ok {
			return v, nil
		}
		if name != "update" {
			return jinja.Undefined(), nil
		}
		return call(func(a []jinja.Value) (jinja.Value, error) {
			if len(a) > 0 && a[0].IsDict() {
				other := a[0].AsDict()
				if err := g.link(a[0], any(d), "update", "dict"); err != nil {
					return jinja.Undefined(), err
				}
				if d.Len()+other.Len() > g.lim.MaxIterations {
					return jinja.Undefined(), g.errSize("update would make a dict of more than %d items", g.lim.MaxIterations)
				}
				for _, k := range other.Keys {
					d.Set(k, other.Data[k])
				}
			}
			return jinja.None(), nil
		})
	case obj.IsList():
		l := obj.AsList()
		grow := func(v jinja.Value) error {
			if err := g.link(v, any(l), name, "list"); err != nil {
				return err
			}
			if l.Len() >= g.lim.MaxIterations {
				return g.errSize("%s would make a list of more than %d items", name, g.lim.MaxIterations)
			}
			return nil
		}
		switch name {
		case "append":
			return call(func(a []jinja.Value) (jinja.Value, error) {
				if len(a) > 0 {
					if err := grow(a[0]); err != nil {
						return jinja.Undefined(), err
					}
					l.Append(a[0])
				}
				return jinja.None(), nil
			})
		case "insert":
			return call(func(a []jinja.Value) (jinja.Value, error) {
				if len(a) < 2 {
					return jinja.None(), nil
				}
				if err := grow(a[1]); err != nil {
					return jinja.Undefined(), err
				}
				idx := min(max(int(toInt64(a[0])), 0), l.Len())
				l.Items = append(l.Items, jinja.Undefined())
				copy(l.Items[idx+1:], l.Items[idx:])
				l.Items[idx] = a[1]
				return jinja.None(), nil
			})
		}
		return jinja.Undefined(), nil
	case obj.IsString():
		s := obj.AsString()
		switch name {
		case "replace":
			return call(func(a []jinja.Value) (jinja.Value, error) {
				if len(a) < 2 {
					return jinja.NewString(s), nil
				}
				count := -1
				if len(a) > 2 {
					count = int(toInt64(a[2]))
				}
				return g.replace(s, a[0], a[1], count)
			})
		case "format":
			return call(func(a []jinja.Value) (jinja.Value, error) {
				result := s
				for i, arg := range a {
					p, err := g.printedChecked(arg, "format")
					if err != nil {
						return jinja.Undefined(), err
					}
					ph := fmt.Sprintf("{%d}", i)
					if err := g.fits(len(result)+strings.Count(result, ph)*(len(p)-len(ph)), "format"); err != nil {
						return jinja.Undefined(), err
					}
					result = strings.ReplaceAll(result, ph, p)
					if err := g.fits(len(result)+len(p), "format"); err != nil {
						return jinja.Undefined(), err
					}
					result = strings.Replace(result, "{}", p, 1)
				}
				return jinja.NewString(result), nil
			})
		case "split":
			return call(func(a []jinja.Value) (jinja.Value, error) {
				var parts []string
				if len(a) == 0 {
					parts = strings.Fields(s) // at most len(s)/2+1 parts
				} else {
					sep := printed(a[0])
					n := utf8.RuneCountInString(s)
					if sep != "" {
						n = strings.Count(s, sep) + 1
					}
					if n > g.lim.MaxIterations {
						return jinja.Undefined(), g.errSize("split would make a list of more than %d items", g.lim.MaxIterations)
					}
					parts = strings.Split(s, sep)
				}
				if len(parts) > g.lim.MaxIterations {
					return jinja.Undefined(), g.errSize("split would make a list of more than %d items", g.lim.MaxIterations)
				}
				items := make([]jinja.Value, len(parts))
				for i, p := range parts {
					items[i] = jinja.NewString(p)
				}
				return jinja.NewList(items), nil
			})
		}
	}
	return jinja.Undefined(), nil
}

// fits refuses a string of n bytes made by what.
func (g *guard) fits(n int, what string) error {
	if n > g.lim.MaxOutput || n < 0 {
		return g.errSize("%s would make a string of more than %d bytes", what, g.lim.MaxOutput)
	}
	return nil
}

// replace is strings.Replace(s, old, new, count) when its result fits.
func (g *guard) replace(s string, oldV, newV jinja.Value, count int) (jinja.Value, error) {
	old, err := g.printedChecked(oldV, "replace")
	if err != nil {
		return jinja.Undefined(), err
	}
	nw, err := g.printedChecked(newV, "replace")
	if err != nil {
		return jinja.Undefined(), err
	}
	n := strings.Count(s, old) // runes+1 for an empty old
	if count >= 0 && count < n {
		n = count
	}
	if len(nw) > len(old) && n > 0 {
		if int64(len(s))+int64(n)*int64(len(nw)-len(old)) > int64(g.lim.MaxOutput) {
			return jinja.Undefined(), g.errSize("replace would make a string of more than %d bytes", g.lim.MaxOutput)
		}
	}
	return jinja.NewString(strings.Replace(s, old, nw, count)), nil
}

// filterCheck is x|f('name') before the filter name: none is refused for
// strictFilters (as Python's Jinja), and a filter that turns its input
// into a string or a list of its characters gets one of bounded size.
func (g *guard) filterCheck(args []jinja.Value, kw map[string]jinja.Value) (jinja.Value, error) {
	v, nv, err := two(args, "filter check")
	if err != nil {
		return jinja.Undefined(), err
	}
	name := printed(nv)
	if v.IsNone() && strictFilters[name] {
		return jinja.Undefined(), fmt.Errorf("cannot apply filter %q to none", name)
	}
	switch name {
	case "string", "lower", "upper", "title", "capitalize", "trim", "escape", "e", "wordcount", "safe":
		if v.IsList() || v.IsDict() {
			if _, err := g.printedChecked(v, name); err != nil {
				return jinja.Undefined(), err
			}
		}
	case "list":
		if v.IsString() && utf8.RuneCountInString(v.AsString()) > g.lim.MaxIterations {
			return jinja.Undefined(), g.errSize("list would make a list of more than %d items", g.lim.MaxIterations)
		}
	case "from_json", "fromjson":
		if v.IsString() && jsonItems(v.AsString()) > g.lim.MaxIterations {
			return jinja.Undefined(), g.errSize("%s would make more than %d values", name, g.lim.MaxIterations)
		}
	}
	return v, nil
}

// jsonItems bounds the number of values a JSON text decodes to: one more
// than its commas, colons and opening brackets outside strings.
func jsonItems(s string) int {
	n, in := 1, false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case in && c == '\\':
			i++
		case c == '"':
			in = !in
		case !in && (c == ',' || c == ':' || c == '[' || c == '{'):
			n++
		}
	}
	return n
}

// join is the engine's join filter, bounded.
func (g *guard) join(args []jinja.Value, kw map[string]jinja.Value) (jinja.Value, error) {
	if len(args) == 0 {
		return jinja.NewString(""), nil
	}
	if !args[0].IsList() {
		s, err := g.printedChecked(args[0], "join")
		return jinja.NewString(s), err
	}
	sep := ""
	if len(args) > 1 {
		sep = printed(args[1])
	}
	if s, ok := kw["d"]; ok {
		sep = printed(s)
	}
	attr := ""
	if a, ok := kw["attribute"]; ok {
		attr = printed(a)
	}
	items := args[0].AsList().Items
	if len(items) > 1 && int64(len(sep))*int64(len(items)-1) > int64(g.lim.MaxOutput) {
		return jinja.Undefined(), g.errSize("join would make a string of more than %d bytes", g.lim.MaxOutput)
	}
	total := len(sep) * max(len(items)-1, 0)
	parts := make([]string, len(items))
	for i, item := range items {
		if attr != "" && item.IsDict() {
			if v, ok := item.AsDict().Get(attr); ok {
				item = v
			}
		}
		n, err := printedLen(item, true, g.lim.MaxOutput-total, 0)
		if err != nil {
			return jinja.Undefined(), g.errSize("join: %v", err)
		}
		if total += n; total > g.lim.MaxOutput {
			return jinja.Undefined(), g.errSize("join would make a string of more than %d bytes", g.lim.MaxOutput)
		}
		parts[i] = printed(item)
	}
	return jinja.NewString(strings.Join(parts, sep)), nil
}

// replaceFilter is the engine's replace filter, bounded.
func (g *guard) replaceFilter(args []jinja.Value, kw map[string]jinja.Value) (jinja.Value, error) {
	if len(args) < 3 {
		return jinja.NewString(""), fmt.Errorf("replace: expected at least 3 arguments")
	}
	s, err := g.printedChecked(args[0], "replace")
	if err != nil {
		return jinja.Undefined(), err
	}
	count := -1
	if len(args) > 3 {
		count = int(toInt64(args[3]))
	}
	if c, ok := kw["count"]; ok {
		count = int(toInt64(c))
	}
	return g.replace(s, args[1], args[2], count)
}

// indent is the engine's indent filter, bounded.
func (g *guard) indent(args []jinja.Value, kw map[string]jinja.Value) (jinja.Value, error) {
	if len(args) == 0 {
		return jinja.NewString(""), nil
	}
	s, err := g.printedChecked(args[0], "indent")
	if err != nil {
		return jinja.Undefined(), err
	}
	width := 4
	if len(args) > 1 {
		width = int(toInt64(args[1]))
	}
	if w, ok := kw["width"]; ok {
		width = int(toInt64(w))
	}
	first := false
	if len(args) > 2 {
		first = args[2].IsTruthy()
	}
	if f, ok := kw["first"]; ok {
		first = f.IsTruthy()
	}
	if width < 0 {
		return jinja.Undefined(), g.errSize("indent by a negative width (%d)", width)
	}
	lines := strings.Split(s, "\n")
	if int64(width)*int64(len(lines))+int64(len(s)) > int64(g.lim.MaxOutput) {
		return jinja.Undefined(), g.errSize("indent would make a string of more than %d bytes", g.lim.MaxOutput)
	}
	pad := strings.Repeat(" ", width)
	for i, line := range lines {
		if i == 0 && !first {
			continue
		}
		if line != "" {
			lines[i] = pad + line
		}
	}
	return jinja.NewString(strings.Join(lines, "\n")), nil
}
