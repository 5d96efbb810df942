// Package chat renders a model's Jinja chat template (the
// tokenizer.chat_template of a GGUF file or tokenizer_config.json) on a
// conversation, byte for byte as Hugging Face does, so that fine-tuning
// sees the prompts the model will be served with.
//
// It is not a general Jinja engine, and it does not find templates: the
// caller reads them from its files and hands Parse the source.
//
// # Engine
//
// The Jinja itself is github.com/ardanlabs/jinja (v1.8.0): pure Go, no
// dependencies, written for LLM chat templates (loop.last, namespace,
// tojson with Python's separators, items(), string methods, slicing,
// dicts keeping insertion order). The alternatives were judged by their
// documentation and design, not measured on the templates here:
// nikolalohinski/gonja is the closest port of Python's Jinja and the
// likeliest second choice, but general-purpose (autoescape, loaders,
// extensions) with more dependencies; flosch/pongo2 is Django syntax, not
// Jinja (no namespace(), different filters and literals);
// noirbizarre/gonja is unmaintained; a hand-written subset would be a
// second engine to keep correct against every new model's template. ardanlabs/jinja has
// gaps of its own, which this package closes from outside (the engine is
// used unmodified):
//
//   - whitespace: the engine applies "-", trim_blocks and lstrip_blocks
//     to the nearest text even across other tags; see below.
//   - none: it iterates none and lets list filters take it as empty, where
//     Python's Jinja and @huggingface/jinja raise; a check before every
//     for iterable and list filter raises instead.
//   - tojson: replaced by Hugging Face's (indent keeps key order,
//     ensure_ascii, sort_keys, separators; JavaScript number formatting,
//     so 2.0 prints as 2 as in @huggingface/jinja, not 2.0 as in Python).
//   - globals: raise_exception, range and strftime_now are replaced by
//     versions with Hugging Face's behaviour (message, bounded length,
//     English month names on a clock the caller may fix, Options.Now).
//   - undefined: "+" treats an undefined variable as "" where
//     Python and Hugging Face raise (not closed; a template that relies on
//     the error renders instead).
//
// # Whitespace
//
// Parse rewrites the template before the engine compiles it (lex.go): it
// applies @huggingface/jinja's preprocessing (drop one trailing newline,
// lstrip_blocks, trim_blocks, drop {% generation %} tags), then the "-"
// markers with JavaScript's definition of whitespace, and turns every
// literal text into a {{ '...' }} expression, so the engine has no text of
// its own left to trim. String literals are decoded with Hugging Face's
// escapes and re-encoded for the engine.
//
// # Limits
//
// A template is untrusted input (it comes inside a downloaded model).
// Parse refuses sources over MaxSource. Render is bounded by Limits:
// loop iterations plus macro calls (counted by guard statements that the
// rewrite puts at the start of every loop and macro body) and range
// lengths, macro recursion depth, wall-clock time, checked at the same
// points, and output size; the context of RenderContext cancels at the
// same points. A panic inside the engine becomes an error.
//
// Single expressions are bounded too (bound.go): the rewrite routes every
// operation that can make a value much larger than its inputs (*, +, ~,
// join, replace, indent, str.format, split, list, from_json, tojson) and
// every one that can link a value into itself (append, insert, update,
// {% set ns.x %}) through the guard, which checks the size before the
// engine allocates: a string is at most MaxOutput bytes, a list or dict at
// most MaxIterations items, nothing contains itself, and all that output
// tags write (macro results included) is at most 4×MaxOutput bytes. The
// guard computes what the engine would, which a test checks on a grid of
// operand kinds; 'x' * 10**10 is an error naming the limit, not 10 GB.
//
// Values in Message.Extra and Options.Extra are JSON-like Go values;
// Object and json.RawMessage keep their key order (tool schemas), a
// map[string]any shows its keys sorted.
//
// Every error wraps ErrTemplate and names the template; errors from a
// limit or the context wrap ErrLimit too.
//
// The tests render all the templates of ../shared/assets/chat-templates
// on several conversations through this package and through
// @huggingface/jinja (internal/hfjinja) and compare bytes.
package chat
