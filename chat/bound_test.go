package chat

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/ardanlabs/jinja"
)

// engineRender renders src with the engine alone (no rewrite, no guard);
// a panic of the engine counts as an error.
func engineRender(src string, vars map[string]jinja.Value) (out string, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	tm, err := jinja.Compile(src)
	if err != nil {
		return "", err
	}
	return tm.RenderValues(vars)
}

// gridValues are the operands the differential test combines: every kind
// the engine's arithmetic and string helpers distinguish.
func gridValues() map[string]func() any {
	return map[string]func() any{
		"i3": func() any { return 3 }, "i0": func() any { return 0 }, "ineg": func() any { return -2 },
		"f": func() any { return 1.5 }, "t": func() any { return true }, "n": func() any { return nil },
		"s": func() any { return "ab" }, "snum": func() any { return "3" }, "sf": func() any { return "2.5x" },
		"e": func() any { return "" }, "ws": func() any { return " a  b\nc " }, "br": func() any { return "x{}y{0}{1}" },
		"l": func() any { return []any{1, "x", nil} }, "d": func() any { return map[string]any{"k": 1, "update": "own"} },
	}
}

// The guard's operators, methods and filters compute exactly what the
// engine's do, for every pair of kinds; only their size checks differ.
func TestGuardMatchesEngine(t *testing.T) {
	exprs := []string{
		"{{ a * b }}", "{{ a + b }}", "{{ a ~ b }}", "{{ a * b * a }}", "{{ a + b ~ a * b }}", "{{ -a * b }}",
		"{{ a ** 2 * b }}", "{{ a / 2 * b }}", "{{ (a ~ b) * 2 }}", "{{ [a, b] + [b] }}",
		"{{ a.replace('a', b) }}", "{{ a.replace('', '-') }}", "{{ a.replace('a', 'zz', 1) }}",
		"{{ a.format(b, a) }}", "{{ a.split() }}", "{{ a.split(b) }}", "{{ a.split('') }}",
		"{% set x = [1] %}{% set _ = x.append(a) %}{% set _ = x.insert(0, b) %}{{ x }}",
		"{% set _ = a.append(b) %}{{ a }}", "{% set _ = a.insert(1, b) %}{{ a }}",
		"{% set _ = a.update(b) %}{{ a }}", "{{ a.update }}",
		"{{ a|join(b) }}", "{{ a|join }}", "{{ [a, b, a]|join(', ') }}",
		"{{ a|replace('a', b) }}", "{{ a|replace(b, 'Q') }}", "{{ a|indent(2) }}", "{{ a|indent(2, true) }}", "{{ a|indent }}",
		"{{ a|string }}", "{{ a|list }}", "{{ a|upper }}",
		"{% set ns = namespace(v=a) %}{% set ns.v = ns.v ~ b %}{{ ns.v }}",
	}
	grid := gridValues()
	names := []string{"i3", "i0", "ineg", "f", "t", "n", "s", "snum", "sf", "e", "ws", "br", "l", "d"}
	n := 0
	for _, src := range exprs {
		for _, an := range names {
			for _, bn := range names {
				extra := map[string]any{"a": grid[an](), "b": grid[bn]()}
				want, werr := engineRender(src, map[string]jinja.Value{"a": toValue(grid[an]()), "b": toValue(grid[bn]())})
				got, gerr := render(t, src, nil, Options{Extra: extra})
				n++
				if an == "n" && strictUse(src) {
					// Python's Jinja refuses these filters on none; the engine does not
					if gerr == nil {
						t.Errorf("%s with a=none: rendered %q, want an error", src, got)
					}
					continue
				}
				switch {
				case werr != nil && gerr != nil:
				case werr != nil || gerr != nil:
					t.Errorf("%s with a=%s b=%s: engine %q, %v; guarded %q, %v", src, an, bn, want, werr, got, gerr)
				case got != want:
					t.Errorf("%s with a=%s b=%s: engine %q, guarded %q", src, an, bn, want, got)
				}
			}
		}
	}
	t.Logf("%d renders compared", n)
}

// strictUse reports whether src applies a filter of strictFilters to a.
func strictUse(src string) bool {
	for f := range strictFilters {
		if strings.Contains(src, "a|"+f) {
			return true
		}
	}
	return false
}

// Templates that would allocate far more than MaxOutput are refused by a
// limit before they do: the render fails with ErrLimit, fast, and
// allocates a small multiple of MaxOutput at most.
func TestGuardRefusesAmplification(t *testing.T) {
	const maxOut = 1 << 20
	lim := Limits{MaxOutput: maxOut, MaxIterations: 20000, MaxDepth: 50, Timeout: 10 * time.Second}
	for _, src := range []string{
		`{{' '*21121111111}}`, // found by FuzzRender
		`{{ 'ab' * (10**9)|int }}`,
		`{% set s = 'x' * 1000000 %}{{ (s ~ s) * 2 }}`,
		`{% set s = 'x' * 1000 %}{{ s * 1000 * 1000 }}`,
		`{% set ns = namespace(s='xx') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}`,
		`{% set ns = namespace(s='xx') %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}{% endfor %}`,
		`{% set ns = namespace(l=[1]) %}{% for i in range(60) %}{% set ns.l = ns.l + ns.l %}{% endfor %}`,
		`{% set s = 'x' * 1000000 %}{% for i in range(5000) %}{{ s }}{% endfor %}`,
		`{% set s = 'x' * 1000000 %}{% for i in range(5000) %}{{ s|string }}{% endfor %}`,
		`{% set l = [] %}{% set s = 'x' * 1000000 %}{% for i in range(10000) %}{% set _ = l.append(s) %}{% endfor %}{{ l|join }}`,
		`{% set l = [] %}{% set s = 'x' * 1000000 %}{% for i in range(10000) %}{% set _ = l.append(s) %}{% endfor %}{{ l|tojson }}`,
		`{% set l = [] %}{% set s = 'x' * 1000000 %}{% for i in range(10000) %}{% set _ = l.append(s) %}{% endfor %}{{ l|string }}`,
		`{% set l = [] %}{% set s = 'x' * 1000000 %}{% for i in range(10000) %}{% set _ = l.append(s) %}{% endfor %}{{ 'a' ~ l }}`,
		`{% set l = range(10000)|list %}{{ l|join('x' * 1000000) }}`,
		`{{ ('x' * 1000000).replace('', 'yyyy') }}`,
		`{{ ('x' * 1000000)|replace('x', 'yyyy') }}`,
		`{{ ('{0}' * 300000).format('x' * 1000) }}`,
		`{{ ('a\n' * 400000)|indent(1000000) }}`,
		`{{ 'a'|indent(10**12) }}`,
		`{{ ('x' * 1000000).split('') }}`,
		`{{ ('x' * 1000000)|list }}`,
		`{{ ('[' ~ '0,' * 400000 ~ '0]')|fromjson }}`,
		`{% set l = [] %}{% set _ = l.append(l) %}{{ l }}`,
		`{% set l = [] %}{% set m = [l] %}{% set _ = l.insert(0, m) %}{{ l }}`,
		`{% set d = {} %}{% set e = {'d': d} %}{% set _ = d.update(e) %}{{ d }}`,
		`{% set ns = namespace() %}{% set ns.self = [ns] %}{{ ns }}`,
		`{% set ns = namespace(x=[]) %}{% for i in range(5000) %}{% set ns.x = [ns.x] %}{% endfor %}{{ ns.x }}`,
	} {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		start := time.Now()
		tm, err := Parse("amplify.jinja", src)
		if err != nil {
			t.Fatalf("%s: %v", src, err)
		}
		_, err = tm.Render([]Message{{Role: "user", Content: "hi"}}, Options{Limits: lim})
		runtime.ReadMemStats(&after)
		if !errors.Is(err, ErrTemplate) || !errors.Is(err, ErrLimit) {
			t.Errorf("%s: got %v, want a limit error", src, err)
			continue
		}
		if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 64*maxOut {
			t.Errorf("%s: allocated %d MiB before the refusal (%v)", src, alloc>>20, err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("%s: refused after %v", src, d)
		}
		t.Logf("%-60.60s %v", src, err)
	}
}

// The limits leave room for what real templates do with large inputs:
// a message of half the output limit renders through join, replace,
// indent, ~ and tojson.
func TestGuardAllowsLargeMessages(t *testing.T) {
	big := strings.Repeat("word ", 100_000) // 500 KB
	src := `{% for m in messages %}{{ (m.role ~ ': ' ~ m.content)|indent(2)|replace('word', 'w') }}{{ [m.content]|join('') }}{{ m.content|tojson }}{% endfor %}`
	got, err := render(t, src, []Message{{Role: "user", Content: big}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if want := 6 + 200_000 + len(big) + len(big) + 2; len(got) != want {
		t.Errorf("rendered %d bytes, want %d", len(got), want)
	}
}
