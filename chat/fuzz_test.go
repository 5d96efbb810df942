package chat

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/qtune/qtune/internal/shared"
)

// FuzzRender parses and renders arbitrary sources on arbitrary messages:
// it must never panic out of Parse or Render, every error must wrap
// ErrTemplate, and limits must stop every render promptly.
func FuzzRender(f *testing.F) {
	for _, s := range []string{
		`{% for i in range(10**9) %}x{% endfor %}`,
		`{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}`,
		`{%- for m in messages -%}{{ m.role|upper }}: {{ m.content|trim }}{% if not loop.last %}\n{% endif %}{%- endfor -%}`,
		`{{ messages[0].content[::-1] }}{{ messages|selectattr('role', 'equalto', 'user')|list|length }}`,
		`{% set ns = namespace(x=0) %}{% for m in messages %}{% set ns.x = ns.x + 1 %}{% endfor %}{{ ns.x }}{{ none|length }}`,
		`{{ messages|tojson }}{{ '\u00e9\x41' }}{# c #}{{- ' a ' -}} b {%- raw %}{{ x }}{% endraw %}`,
		`{{ raise_exception('no') }}`, `{% if %}`, `{{`, `{% for %}`, "{{ 'a' * 3 }}",
	} {
		f.Add(s, "user", "héllo 👋 猫")
	}
	if d, ok := shared.Dir(); ok {
		files, _ := filepath.Glob(filepath.Join(d, "assets", "chat-templates", "*.jinja"))
		for _, p := range files {
			// the small ones: large seeds make the fuzzer's minimizing slow
			if b, err := os.ReadFile(p); err == nil && len(b) < 3000 {
				f.Add(string(b), "system", "Be brief.")
			}
		}
	}
	lim := Limits{Timeout: 100 * time.Millisecond, MaxOutput: 1 << 20, MaxIterations: 20000, MaxDepth: 50}
	f.Fuzz(func(t *testing.T, src, role, content string) {
		tm, err := Parse("fuzz", src)
		if err != nil {
			if !errors.Is(err, ErrTemplate) {
				t.Fatalf("Parse error does not wrap ErrTemplate: %v", err)
			}
			return
		}
		msgs := []Message{{Role: role, Content: content}, {Role: "assistant", Content: content}}
		start := time.Now()
		_, err = tm.Render(msgs, Options{AddGenerationPrompt: true, BOS: "<s>", EOS: "</s>", Limits: lim})
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("render took %v", d)
		}
		if err != nil && !errors.Is(err, ErrTemplate) {
			t.Fatalf("Render error does not wrap ErrTemplate: %v", err)
		}
	})
}
