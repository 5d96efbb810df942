// Package loho holds the parts of LoHO (Chen, Huang and Wen, AAAI 2025;
// methods.md §3) that are its own: the memory plan that picks how many of
// the deepest blocks train first-order under a budget (inter-layer mode),
// and the sparse delta with a seeded random mask whose gradient is a
// sampled dense-dense product (intra-layer mode).
//
// Inter-layer: the deepest N blocks train first-order (their LoRA factors,
// SGD or AdamW, backprop stopped at block L−N by model.StepOptions.FirstLayer
// so nothing below is kept), the other blocks' LoRA factors zeroth-order
// (methods/mezo). Plan estimates weights + working set + N blocks of
// activations and first-order state + zeroth-order parameters + a runtime
// margin, and MaxFO returns the largest N within the budget.
//
// Intra-layer: every adapted matrix gets a mask M keeping a share of its
// entries (fo-ratio). S, stored CSR with values only at M, is the
// first-order part: y += x·Sᵀ, dS = (dyᵀx) at M only, dx += dy·S — memory
// per stored entry, never an (out, in) gradient. The zeroth-order part is
// the complementary entries ¬M, as in the paper: a quantized base has no
// writable W (codes cannot move by ±εz), so they live in Dense, a float32
// delta D of the matrix's shape beside the base, zero at M, which MeZO
// perturbs and updates through a z cleared at M (Dense.ZeroMasked). S and D
// partition W's entries: W_eff = W + S + D. D costs 4 bytes per entry of
// every adapted matrix (7× a Q4_0 base), which the memory plan shows; the
// lighter variant (--zo-target lora) puts the zeroth-order part on the same
// matrices' LoRA factors instead, a low-rank term beside W that no longer
// partitions the entries.
//
// The glue that runs a step (two perturbed no-grad forwards for the
// zeroth-order set, one forward/backward for the first-order set, on the
// same minibatch) is in train/loho.go: methods/ packages do not import one
// another.
//
// Trade-off: first-order accuracy where gradients are cheap (near the
// output, or on a sparse subset), zeroth-order memory elsewhere. The mask
// is regenerated from (seed, matrix name), so checkpoints hold values, not
// positions; the CSR column indices (4 bytes per entry) are the price of a
// fast gather, and the scalar SDDMM loops cost about as much as a dense
// product over the stored share.
package loho
