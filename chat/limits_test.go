package chat

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// Runaway templates stop at a limit with an error that wraps ErrTemplate
// and ErrLimit and names the template.
func TestLimitsStopRunaways(t *testing.T) {
	for _, src := range []string{
		`{% for i in range(10**9) %}x{% endfor %}`,
		`{% for i in range(1000000000) %}x{% endfor %}`,
		`{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}`,
		`{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}`,
		`{% for m in messages %}{% for i in range(2000) %}{% for j in range(2000) %}{% endfor %}{% endfor %}{% endfor %}`,
	} {
		tm, err := Parse("runaway.jinja", src)
		if err != nil {
			t.Fatalf("%s: %v", src, err)
		}
		start := time.Now()
		_, err = tm.Render([]Message{{Role: "user", Content: "hi"}}, Options{})
		if !errors.Is(err, ErrTemplate) || !errors.Is(err, ErrLimit) || !strings.Contains(err.Error(), "runaway.jinja") {
			t.Errorf("%s: got %v, want a limit error naming the template", src, err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("%s: stopped after %v", src, d)
		}
	}
}

func TestLimitsTimeoutAndContext(t *testing.T) {
	tm, err := Parse("slow", `{% for i in range(100000) %}{{ i }}{% endfor %}`)
	if err != nil {
		t.Fatal(err)
	}
	_, err = tm.Render(nil, Options{Limits: Limits{Timeout: time.Nanosecond}})
	if !errors.Is(err, ErrLimit) || !strings.Contains(err.Error(), "longer than") {
		t.Errorf("timeout: got %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = tm.RenderContext(ctx, nil, Options{})
	if !errors.Is(err, ErrLimit) || !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: got %v", err)
	}
	_, err = tm.Render(nil, Options{Limits: Limits{MaxOutput: 100}})
	if !errors.Is(err, ErrLimit) || !strings.Contains(err.Error(), "output") {
		t.Errorf("output: got %v", err)
	}
	if _, err := Parse("big", strings.Repeat("x", MaxSource+1)); !errors.Is(err, ErrLimit) {
		t.Errorf("source: got %v", err)
	}
	if _, err := Parse("guard", "{{ "+guardPrefix+"tick() }}"); !errors.Is(err, ErrTemplate) {
		t.Errorf("reserved prefix: got %v", err)
	}
}

func TestStrftimeNowUsesClock(t *testing.T) {
	tm, err := Parse("date", `{{ strftime_now("%d %b %Y %B %H:%M %% %j") }}`)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2024, 7, 3, 9, 5, 0, 0, time.UTC)
	got, err := tm.Render(nil, Options{Now: func() time.Time { return at }})
	if want := "03 Jul 2024 July 09:05 % %j"; got != want || err != nil {
		t.Errorf("got %q, %v; want %q", got, err, want)
	}
}

func TestRaiseException(t *testing.T) {
	tm, err := Parse("gemma.jinja", `{{ raise_exception('System role not supported') }}`)
	if err != nil {
		t.Fatal(err)
	}
	_, err = tm.Render(nil, Options{})
	if !errors.Is(err, ErrTemplate) || !strings.Contains(err.Error(), "gemma.jinja: raise_exception: System role not supported") {
		t.Errorf("got %v", err)
	}
}
