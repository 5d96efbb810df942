package chat

import (
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/ardanlabs/jinja"
)

// addGlobals sets the functions Hugging Face gives chat templates where
// the engine's own differ: raise_exception with Hugging Face's message,
// range bounded by the guard (the engine's would build range(10**9)
// before any loop starts), strftime_now on opts.Now with
// @huggingface/jinja's directives, and the guard's tick (see rewrite).
func addGlobals(vars map[string]jinja.Value, g *guard, now func() time.Time) {
	vars[guardPrefix+"tick"] = jinja.NewCallable(guardPrefix+"tick", g.tick)
	vars[guardPrefix+"enter"] = jinja.NewCallable(guardPrefix+"enter", g.enter)
	vars[guardPrefix+"leave"] = jinja.NewCallable(guardPrefix+"leave", g.leave)
	vars[guardPrefix+"f"] = jinja.NewCallable(guardPrefix+"f", g.filterCheck)
	vars[guardPrefix+"iter"] = jinja.NewCallable(guardPrefix+"iter", iterable)
	vars[guardPrefix+"tojson"] = jinja.NewCallable("tojson", func(args []jinja.Value, kw map[string]jinja.Value) (jinja.Value, error) {
		return tojson(g.lim.MaxOutput, args, kw)
	})
	vars[guardPrefix+"join"] = jinja.NewCallable("join", g.join)
	vars[guardPrefix+"replace"] = jinja.NewCallable("replace", g.replaceFilter)
	vars[guardPrefix+"indent"] = jinja.NewCallable("indent", g.indent)
	vars[guardPrefix+"mul"] = jinja.NewCallable("*", g.mul)
	vars[guardPrefix+"add"] = jinja.NewCallable("+", g.add)
	vars[guardPrefix+"cat"] = jinja.NewCallable("~", g.cat)
	vars[guardPrefix+"out"] = jinja.NewCallable("output", g.out)
	vars[guardPrefix+"into"] = jinja.NewCallable("set", g.into)
	vars[guardPrefix+"m"] = jinja.NewCallable("method", g.method)
	vars["raise_exception"] = jinja.NewCallable("raise_exception", raiseException)
	vars["range"] = jinja.NewCallable("range", func(args []jinja.Value, kw map[string]jinja.Value) (jinja.Value, error) {
		return rangeOf(g, args)
	})
	vars["strftime_now"] = jinja.NewCallable("strftime_now", func(args []jinja.Value, kw map[string]jinja.Value) (jinja.Value, error) {
		if len(args) != 1 || !args[0].IsString() {
			return jinja.Undefined(), fmt.Errorf("strftime_now: want one format string")
		}
		return jinja.NewString(strftime(now(), args[0].AsString())), nil
	})
}

// iterable is the iterable of every for loop as rewrite writes it: none,
// a number or a boolean is an error, as in Python's Jinja (the engine
// would iterate nothing); undefined iterates nothing, as in Python.
func iterable(args []jinja.Value, kw map[string]jinja.Value) (jinja.Value, error) {
	if len(args) != 1 {
		return jinja.Undefined(), fmt.Errorf("internal loop check: %d arguments", len(args))
	}
	v := args[0]
	if v.IsNone() || v.IsNumber() || v.IsBool() || v.IsCallable() {
		return jinja.Undefined(), fmt.Errorf("cannot iterate over %s in a for loop", v.String())
	}
	return v, nil
}

// errRaised is the error of raise_exception.
type errRaised struct{ msg string }

func (e *errRaised) Error() string { return "raise_exception: " + e.msg }

func raiseException(args []jinja.Value, kw map[string]jinja.Value) (jinja.Value, error) {
	parts := make([]string, len(args))
	for i, a := range args {
		parts[i] = str(a)
	}
	return jinja.Undefined(), &errRaised{strings.Join(parts, ",")}
}

// rangeOf is Python's range with integer arguments, its length charged to
// the guard before the list is built.
func rangeOf(g *guard, args []jinja.Value) (jinja.Value, error) {
	var a [3]int64
	for i, v := range args {
		switch {
		case i >= 3:
			return jinja.Undefined(), fmt.Errorf("range: want 1 to 3 integer arguments")
		case v.IsInt():
			a[i] = v.AsInt()
		case v.IsFloat() && v.AsFloat() == math.Trunc(v.AsFloat()) && math.Abs(v.AsFloat()) < 1<<62:
			a[i] = int64(v.AsFloat()) // 10**9: the engine's ** gives floats
		default:
			return jinja.Undefined(), fmt.Errorf("range: want 1 to 3 integer arguments")
		}
	}
	start, stop, step := int64(0), int64(0), int64(1)
	switch len(args) {
	case 1:
		stop = a[0]
	case 2:
		start, stop = a[0], a[1]
	case 3:
		start, stop, step = a[0], a[1], a[2]
	default:
		return jinja.Undefined(), fmt.Errorf("range: want 1 to 3 integer arguments")
	}
	if step == 0 {
		return jinja.Undefined(), fmt.Errorf("range: step must not be zero")
	}
	var n uint64
	if step > 0 && stop > start {
		n = (uint64(stop-start) + uint64(step) - 1) / uint64(step)
	} else if step < 0 && start > stop {
		n = (uint64(start-stop) + uint64(-step) - 1) / uint64(-step)
	}
	if n > uint64(g.lim.MaxIterations) {
		return jinja.Undefined(), fmt.Errorf("range of %d items: more than %d: %w", n, g.lim.MaxIterations, ErrLimit)
	}
	if err := g.step(int(n)); err != nil {
		return jinja.Undefined(), err
	}
	items := make([]jinja.Value, n)
	for i := range items {
		items[i] = jinja.NewInt(start + int64(i)*step)
	}
	return jinja.NewList(items), nil
}

// strftime formats t with @huggingface/jinja's directives (%Y %m %d %b %B
// %H %M %%, English month names); any other directive stays as written.
func strftime(t time.Time, format string) string {
	var b strings.Builder
	for i := 0; i < len(format); i++ {
		if format[i] != '%' || i+1 == len(format) {
			b.WriteByte(format[i])
			continue
		}
		i++
		switch format[i] {
		case 'Y':
			fmt.Fprintf(&b, "%d", t.Year())
		case 'm':
			fmt.Fprintf(&b, "%02d", int(t.Month()))
		case 'd':
			fmt.Fprintf(&b, "%02d", t.Day())
		case 'b':
			b.WriteString(t.Month().String()[:3])
		case 'B':
			b.WriteString(t.Month().String())
		case 'H':
			fmt.Fprintf(&b, "%02d", t.Hour())
		case 'M':
			fmt.Fprintf(&b, "%02d", t.Minute())
		case '%':
			b.WriteByte('%')
		default:
			b.WriteByte('%')
			b.WriteByte(format[i])
		}
	}
	return b.String()
}

// str is v as the template would print it.
func str(v jinja.Value) string {
	if v.IsString() {
		return v.AsString()
	}
	return v.String()
}
