// Package budget is the memory accountant and planner. It knows nothing of
// tensors: callers reserve bytes by category and layer before they allocate,
// and the planner chooses a strategy that fits a --max-mem budget.
package budget
