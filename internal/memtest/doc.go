// Package memtest holds the integration tests of --max-mem: they build the
// qtune binary, write synthetic Llama models of about 110M and 1B
// parameters, run train, eval and generate under budgets above and below the
// size of the quantized weights, and check the process's peak resident set
// (VmHWM, as the kernel reports it in rusage) against the budget and against
// the plan's estimate.
package memtest
