// Package data reads training and evaluation data: plain text, and JSONL in
// the shapes fine-tuning tools share — {"text"}, {"prompt","completion"},
// {"messages"} and classification {"prompt","choices","label"}.
//
// It validates records line by line and reports the file and line of the
// first bad one. Not here: tokenization policy beyond what a record needs,
// or batching for training (arrives with the training loop).
package data
