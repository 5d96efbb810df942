// Package loreml implements LoReML (Chen et al., CIKM 2025): low-rank mask
// learning, then sparse fine-tuning, on a frozen and possibly quantized base.
//
// Stage 1 trains rank-R scores on every adapted linear layer, exactly LoRA
// with the roles of the two factors' initialisations swapped (methods.md
// §4.1):
//
//	S = (α/R)·U·V     U (Out, R) Kaiming-uniform (a = √5, fan-in R), V (R, In) zero
//
// train/ trains them with lora.Layer (lora's B holds U, lora's A holds V;
// InitScores sets them); this package only sees them as Scores (methods do
// not import each other). Stage 2 (Build) reads S = U·V per matrix (no α/R,
// §4.2), keeps the top k = ⌊Out·In·keep⌋ entries of |S| per matrix as a mask (found one row of
// S at a time: S is never materialised), and trains a sparse delta Δ at those
// entries, initialised to zero, plus the RMSNorm weights:
//
//	y = x·(W + γ·U·V + Δ)ᵀ      W frozen (quantized), γ·U·V frozen, Δ (k values) trained
//
// The warm start W ← W + γ·S of the paper cannot be folded into a quantized W
// without requantizing, so it stays beside it as a frozen low-rank term
// (methods.md §4.2 [project]); this is exact and costs R·(Out+In) floats per
// matrix. Δ's backward computes its gradient only at the kept entries
// (a sampled dense-dense product, SDDMM: dΔ[p] = Σ_m dy[m,i]·x[m,j] for kept
// (i, j)) and dx += dy·Δ from the sparse rows; no dense dW ever exists.
// Stage-2 memory is k values, k gradients, 2k optimizer moments and k int32
// column indices (CSR, plus Out+1 row offsets) per matrix.
//
// Dimension legend (design.md): Out and In are a linear layer's output and
// input sizes, R the rank, k the kept entries of one matrix, M the rows of
// one call (B·T).
//
// Not here: the embedding and the output projection are not adapted (the
// model's adapter hook covers the seven linear layers of a block only;
// Llama has no biases); the training loop, schedules and optimizer state
// live in train/ and optim/. Save writes qtune's own file (loreml_delta.safetensors,
// documented at FileName); PEFT has no sparse-delta form.
//
// Trade-off: the mask is chosen once, from the stage-1 scores, and never
// revised; per-row CSR with int32 columns favours simple, deterministic,
// allocation-free kernels over the reference code's int16 columns.
package loreml
