package loho

import (
	"fmt"

	"github.com/qtune/qtune/model"
)

// RuntimeMargin is what the process needs besides weights and tensors: the
// Go runtime and binary, tokenizer, data and token cache, and garbage not yet
// collected. Checked on the synthetic 15M Q4_0 model, batch 2×256 tokens:
// N = 0 peaks at 99 MiB against an estimate of 97 MiB, N = 2 at 101 against
// 117, N = 6 at 120 against 155 (the activation term assumes every sequence
// at full length).
const RuntimeMargin = 48 << 20

// Plan is the memory model of LoHO-inter (methods.md §3.3) for one batch
// shape: what a run with n first-order blocks keeps resident.
type Plan struct {
	Weights     int64 // resident weights (mapped file pages that are read)
	Blocks      int   // L
	ActPerBlock int64 // activations one first-order block keeps for the backward
	Work        int64 // buffers every step needs whatever n is: block inputs, logits, one block's working set, backward scratch
	FOPerBlock  int64 // first-order state per block: parameters, gradients, optimizer moments
	ZOPerBlock  int64 // zeroth-order parameters per block (no gradients, no state)
	Runtime     int64 // RuntimeMargin
	// Margin, when set, is what a budget keeps free beyond an estimate of
	// peak bytes (budget.Margin): n fits when Bytes(n)+Margin(Bytes(n)) is
	// at most the budget.
	Margin func(peak int64) int64
}

// need is Bytes(n) and the margin kept free beside it.
func (p Plan) need(n int) int64 {
	b := p.Bytes(n)
	if p.Margin != nil {
		b += p.Margin(b)
	}
	return b
}

// PlanFor fills the activation terms from the model's shapes for B
// sequences of T tokens; foPerBlock and zoPerBlock are the method's own
// state per block.
func PlanFor(c model.Config, weights int64, B, T int, checkpoint bool, foPerBlock, zoPerBlock int64) Plan {
	one := c
	one.Layers = 1
	full := one.ActivationBytes(B, T, false) // one block, everything kept
	BT := int64(B * T)
	C, F, V := int64(c.Dim), int64(c.Hidden), int64(c.Vocab)
	qd, kvd := int64(c.Heads*c.HeadDim), int64(c.KVHeads*c.HeadDim)
	per := full
	if checkpoint {
		per = 4 * BT * C // only the block input; the block is recomputed in the work set
	}
	work := full + // one block's working set (no-grad blocks, recompute)
		4*6*BT*C + // block input/output, final norm, their gradients
		4*2*64*V + // logits and their gradient, 64 rows at a time
		4*BT*(3*F+C+2*qd+2*kvd) // backward scratch
	return Plan{Weights: weights, Blocks: c.Layers, ActPerBlock: per, Work: work,
		FOPerBlock: foPerBlock, ZOPerBlock: zoPerBlock, Runtime: RuntimeMargin}
}

// Bytes is the estimate with the deepest n blocks first-order.
func (p Plan) Bytes(n int) int64 {
	return p.Weights + p.Work + p.Runtime + int64(n)*(p.ActPerBlock+p.FOPerBlock) + int64(p.Blocks-n)*p.ZOPerBlock
}

// MaxFO returns the largest n in [0, Blocks] whose estimate fits budget, or
// an error when even n = 0 (pure MeZO) does not.
func (p Plan) MaxFO(budget int64) (int, error) {
	if p.need(0) > budget {
		return 0, fmt.Errorf("loho: a budget of %.1f MiB is below the %.1f MiB even zeroth-order training needs (weights %.1f MiB, working set %.1f MiB, runtime %.1f MiB, %.1f MiB kept free): try --max-mem %dMiB",
			mib(budget), mib(p.need(0)), mib(p.Weights), mib(p.Work), mib(p.Runtime), mib(p.need(0)-p.Bytes(0)), (p.need(0)+(1<<20)-1)>>20)
	}
	n := 0
	for n < p.Blocks && p.need(n+1) <= budget {
		n++
	}
	return n, nil
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }
