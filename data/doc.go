// Package data turns data files into training batches: it reads plain text
// and JSONL in the shapes fine-tuning tools share — {"text"},
// {"prompt","completion"}, {"messages"} and classification
// {"prompt","choices","label"} — tokenizes records into examples with a loss
// mask, caches the tokens, and cuts examples into shuffled, resumable
// batches.
//
// The flow:
//
//	FindSplits / LoadSplits(dir)  train.jsonl, valid.jsonl, test.jsonl (MLX-LM's layout) or one file
//	Scan / Load                   records, one at a time or all
//	Tokenize                      records -> []Example{Tokens, Loss} (in memory)
//	CachedTokenFile               data file -> TokenFile (tokens on disk, an index in memory)
//	NewBatcher(src).Next()        Examples or TokenFile -> Batch{Tokens, Targets} (B, T), Seek/Position to resume
//
// Loss masks. Loss[i] says whether token i is a target. Text trains on every
// token after BOS; prompt/completion and classification on the completion
// (the label's choice), with the boundary found by encoding prompt+completion
// whole and the prompt alone, so tokens at the join are the natural ones;
// chat on the assistant turns and the end-of-turn token closing each, in
// the conversation as the model's own Jinja chat template renders it (a
// Renderer: package chat runs the template, train picks it), with special
// token text parsed into ids; headers and a trailing EOS the template did
// not write are never targets (see templateChat).
//
// Batches. Targets are already shifted: position t of a row holds a token and
// targets the token after it, or -1. Without packing each example is a row,
// truncated to MaxSeqLen positions and padded to the batch's longest row.
// With packing the examples of an epoch are concatenated, as tokenized (with
// AddEOS each ends with EOS and the next starts with BOS), and cut into rows
// of MaxSeqLen: attention and prediction run across example boundaries as in
// llama-style and MLX-LM packing, except that a BOS is never a target. Every
// epoch has its own order, a function of the seed and the epoch number only
// (our own splitmix64 shuffle, stable across Go releases), so a run resumed
// at a saved Pos sees the same batches.
//
// Not here: the tokenizer itself (data needs only the small Encoder
// interface and must not import tokenizer/), full Jinja chat templates
// (families are rendered natively, without default system prompts), sorting
// by length to cut padding, and attention masks that stop at example
// boundaries (packing trades that isolation for no padding at all).
//
// The token cache trades disk for memory and start-up time: a training run's
// data costs memory per example, not per token. The records are streamed
// twice (hashed, then, on a miss, tokenized one by one into the file), never
// held; the file stores each token as a u32 (id | loss<<31) with an index of
// example lengths, under the SHA-256 of the records, the options and the
// caller's tokenizer identity. A TokenFile keeps 4 bytes an example in memory
// and reads rows with ReadAt as batches need them. A damaged file is detected
// (sizes checked exactly against the file's length, CRC-32C) and rebuilt.
package data
