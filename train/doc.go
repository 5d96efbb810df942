// Package train runs the loops over data: evaluation today (loss and
// perplexity on text, accuracy by candidate scoring on classification), and
// the fine-tuning loop with the training methods.
//
// It is the layer that talks: progress goes to a callback the caller
// supplies, cancellation comes through a context. Not here: model math
// (model/), data parsing (data/), command-line flags (cmd/).
package train
