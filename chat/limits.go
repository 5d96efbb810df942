package chat

import (
	"context"
	"fmt"
	"time"

	"github.com/ardanlabs/jinja"
)

// MaxSource is the largest template Parse accepts (the largest chat
// template on the Hub is about 30 KiB).
const MaxSource = 1 << 20

// Limits bound one render. A zero field takes DefaultLimits' value.
type Limits struct {
	// Timeout is the wall-clock budget of the render, checked at every loop
	// iteration and macro call.
	Timeout time.Duration
	// MaxOutput is the largest rendered prompt, in bytes.
	MaxOutput int
	// MaxIterations bounds loop iterations plus macro calls of one render,
	// and the length of one range().
	MaxIterations int
	// MaxDepth bounds macro calls in progress (recursion).
	MaxDepth int
}

// DefaultLimits are generous for chat templates (a thousand-turn
// conversation with tools renders in far fewer iterations) and stop
// runaway templates within about a second.
var DefaultLimits = Limits{
	Timeout:       2 * time.Second,
	MaxOutput:     64 << 20,
	MaxIterations: 1_000_000,
	MaxDepth:      100,
}

func (l Limits) orDefault() Limits {
	if l.Timeout <= 0 {
		l.Timeout = DefaultLimits.Timeout
	}
	if l.MaxOutput <= 0 {
		l.MaxOutput = DefaultLimits.MaxOutput
	}
	if l.MaxIterations <= 0 {
		l.MaxIterations = DefaultLimits.MaxIterations
	}
	if l.MaxDepth <= 0 {
		l.MaxDepth = DefaultLimits.MaxDepth
	}
	return l
}

// guardPrefix starts the names rewrite gives the guard's variables; a
// template's own names may not use it.
const guardPrefix = "__qtune_guard_"

// guard counts a render's loop iterations and macro calls and checks its
// deadline and context; rewrite puts a call of tick at the start of every
// for and macro body.
type guard struct {
	ctx      context.Context
	lim      Limits
	deadline time.Time
	n        int
	depth    int   // macro calls in progress
	checked  int   // n at the last deadline check
	emitted  int64 // bytes written by output tags and text (bound.go)
	err      error // the first limit hit; sticky
}

func newGuard(ctx context.Context, lim Limits) *guard {
	return &guard{ctx: ctx, lim: lim, deadline: time.Now().Add(lim.Timeout)}
}

// step charges n units of work and reports the first limit it hits.
func (g *guard) step(n int) error {
	if g.err != nil {
		return g.err
	}
	g.n += n
	switch {
	case g.n > g.lim.MaxIterations:
		g.err = fmt.Errorf("more than %d loop iterations and macro calls: %w", g.lim.MaxIterations, ErrLimit)
	case g.n-g.checked < 64:
	case time.Now().After(g.deadline):
		g.err = fmt.Errorf("render took longer than %v: %w", g.lim.Timeout, ErrLimit)
	case g.ctx.Err() != nil:
		g.err = fmt.Errorf("%w: %w", ErrLimit, g.ctx.Err())
	default:
		g.checked = g.n
	}
	return g.err
}

// tick is the guard as the template's function guardPrefix+"tick".
func (g *guard) tick(args []jinja.Value, kwargs map[string]jinja.Value) (jinja.Value, error) {
	if err := g.step(1); err != nil {
		return jinja.Undefined(), err
	}
	return jinja.None(), nil
}

// enter is tick at the start of a macro body, and counts its depth.
func (g *guard) enter(args []jinja.Value, kwargs map[string]jinja.Value) (jinja.Value, error) {
	g.depth++
	if g.depth > g.lim.MaxDepth && g.err == nil {
		g.err = fmt.Errorf("macro calls nested more than %d deep: %w", g.lim.MaxDepth, ErrLimit)
	}
	return g.tick(args, kwargs)
}

// leave ends a macro body.
func (g *guard) leave(args []jinja.Value, kwargs map[string]jinja.Value) (jinja.Value, error) {
	g.depth--
	return jinja.None(), nil
}
