// Package hfjinja renders chat templates with Hugging Face's own Jinja
// renderer, the npm package @huggingface/jinja that transformers.js and the
// Hub use, so that tests judge qtune's chat package by the tool whose output
// users compare with (design.md, house rule 13) rather than by qtune's own
// reading of Jinja.
//
// What it is for: tests. Render hands one JSON request (every template once,
// every rendering of it) to tools/hfjinja/render.mjs, a Node.js script over
// @huggingface/jinja 0.5.13 (pinned in tools/hfjinja/package-lock.json), and
// decodes the JSON answer: per rendering, the output string or the error
// Hugging Face's renderer raised. Require skips a test when node or the npm
// install is missing, except under CI=true, where a missing judge fails the
// test.
//
// What it is not: part of the library or the binary. Nothing outside tests
// imports it; it starts a process and nothing more.
//
// The trade-off: one Node.js process per call, so a test batches all its
// renderings into one request (70 templates × dozens of conversations in
// well under a second) instead of paying node's start-up per rendering.
//
// Errors start with "hfjinja: "; Available's wrap ErrUnavailable.
package hfjinja
