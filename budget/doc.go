// Package budget is the memory accountant and planner. It knows nothing of
// tensors: callers ask for bytes by category and layer, and the planner
// chooses a strategy that fits a --max-mem budget.
//
// # Where each byte lives
//
// A run's resident set is four parts, and each has one owner that keeps it
// inside its share of the budget:
//
//   - Mapped weights (file pages). The plan keeps the output matrix, the
//     norms and the looked-up embedding rows resident, and either every
//     block or, when streaming, the block in use: offload reads the next
//     block ahead and drops the last one's pages (madvise) after use.
//     Counted as "weights resident" and "weights streamed".
//   - Slabs: every buffer that grows with the batch, the sequence or the
//     input (saved activations and block inputs, the step's workspace with
//     its logits chunk, backward scratch and the adapters' scratch
//     (model.ScratchAdapter: products with the rows, dropout masks), the
//     KV cache, a scorer's or an evaluation's buffers), and every method's
//     state: LoRA's and QLoRA's factors and gradients, MeZO's LoRA factors,
//     block scales or writable copies of float matrices, LoHO's factors,
//     first-order gradients, sparse deltas and dense zeroth-order deltas,
//     LoReML's scores and its stage-2 deltas, warm start and gradients
//     (model.Alloc, made as the method is built or changes stage, one
//     allocation per tensor group), and the optimizer's moments (one slab
//     made at the first step, in place of the plan's optimizer-state
//     booking or of the method's own count of it), returned when the run
//     ends. Accountant.Floats books one before mapping it (an anonymous
//     private mapping, outside the Go heap) and Free returns it; freed slabs
//     are cached for the next step while booked, and are unmapped first
//     whenever a new booking needs the room or the cache would lift the
//     bookings above the highest the live buffers reached. The collector
//     never sees these bytes, so how busy the machine is cannot move them:
//     a booking that does not fit fails with ErrOverBudget and maps nothing.
//   - Bookings of heap data: an adapter applied to generate or eval (read
//     from its file), the token cache's index. They are made once, live for
//     the run and make no garbage; they are booked against the same limit
//     as the slabs.
//   - The runtime: the binary's code (file pages), the Go runtime as
//     measured after the model was opened (GoRuntimeBytes: parsed header,
//     tokenizer, rotary tables, stacks), and headroom for a step's small
//     garbage: the plan's first "runtime" item.
//   - The kernels' scratch (the second "runtime" item, OffHeap): packed
//     GEMM operands, decoded panels of quantized weights, attention score
//     blocks, every worker's GEMM blocks. An arena of anonymous mappings in
//     package kernels, kept between calls (a request takes a free block of
//     at most twice its size, else one is mapped), whose mapped total
//     kernels.ScratchBytes bounds for the plan's shapes and worker count;
//     train.ApplyPlan makes the item the arena's limit, so free blocks are
//     unmapped before it would pass it (kernels.ScratchStats says how far
//     it went: the memory tests require never past).
//
// The accountant's limit is what the plan books (slabs and bookings, and a
// MiB for the slabs' page rounding), at most the budget less the weights
// and the runtime (Plan.HeapLimit). The Go heap's soft limit
// (debug.SetMemoryLimit, set by train.ApplyPlan) is the runtime's heap part,
// the booked heap data and the budget's slack past the plan and its margin,
// never below the runtime's own mapped overhead plus 4 MiB, plus the address
// space the runtime maps but never touches (the profile's bucket table,
// 1.4 MiB: the soft limit counts mapped bytes, the plan resident ones).
// Since nothing proportional to the model or the batch is garbage on the
// heap (the kernels' scratch is not heap at all), the collector only has a
// step's small objects to keep up with, and the margin that remains for it
// is the headroom in the runtime item: a 110M LoRA run collects 12 times in
// 3 steps at 160 MiB.
//
// Every plan keeps Margin(peak) free under its budget (a MiB and 1/128 of
// the peak): what no estimate can know varies from one run to the next
// (which file pages the kernel reads ahead or keeps, when the collector
// runs), by half a MiB on a 55 MiB run. A plan fits when its peak and its
// margin fit, the smallest budget a refusal names includes it, and the
// heap's soft limit does not take it.
//
// What stays on the Go heap is small and bounded: parsed metadata and the
// tokenizer, the GEMM's per-call state (kept in a free list: a MatMul
// allocates nothing, kernels.TestGEMMAllocatesNothing), per-call garbage
// of attention and adapters (a row per worker), a LoReML
// transition's top-k heaps (one matrix's kept entries at a time) and a
// stage-1 save's passing copy of the mask, and the I/O buffers of saving
// (adapters are encoded as they are written, 64 KiB at a time, not whole:
// q/k rows in the other order, MLX-LM's transposes and Phi-3's fused
// layers are read through views, not copied; a loaded adapter's file is
// mapped, decoded once into qtune's layout and its q/k rows moved in
// place).
// Closing a model unmaps its accountant's cached slabs.
package budget
