package train

import (
	"context"
	"errors"
	"fmt"
	"math"

	"github.com/qtune/qtune/budget"
	"github.com/qtune/qtune/data"
	"github.com/qtune/qtune/model"
	"github.com/qtune/qtune/nn"
)

// EvalOptions control evaluation.
type EvalOptions struct {
	// MaxSeqLen is the window length in tokens (0: the model's context,
	// capped at 1024). Longer texts are scored in windows that overlap by one
	// token, so every token after the first is predicted exactly once.
	MaxSeqLen int
	// Progress, when set, is called after each record with (done, total).
	Progress func(done, total int)

	dev *model.GPUSession // the device's scoring session, when on a GPU
}

// EvalRows is how many positions' logits evaluation materialises at once
// (gpuEvalRows on a GPU, in device memory).
const (
	EvalRows    = 64
	gpuEvalRows = 128
)

// LMResult is the outcome of a language-modelling evaluation.
type LMResult struct {
	Loss   float64 `json:"loss"` // mean negative log-likelihood per predicted token (nats)
	PPL    float64 `json:"ppl"`  // exp(Loss)
	Tokens int     `json:"tokens"`
}

// ClassResult is the outcome of a classification evaluation.
type ClassResult struct {
	Accuracy float64 `json:"accuracy"`
	N        int     `json:"n"`
}

// Window is the evaluation window for m.
func (o *EvalOptions) Window(m *model.Model) int { return o.window(m) }

func (o *EvalOptions) window(m *model.Model) int {
	w := o.MaxSeqLen
	if w <= 0 {
		w = min(m.Config.Context, 1024)
	}
	return max(2, min(w, m.Config.Context))
}

// EvalLM returns the mean loss over Text records (every token after BOS) or
// Completion records (completion tokens only).
func EvalLM(ctx context.Context, m *model.Model, recs []data.Record, kind data.Kind, o EvalOptions) (LMResult, error) {
	if kind != data.Text && kind != data.Completion {
		return LMResult{}, fmt.Errorf("train: language-model evaluation needs text or prompt/completion data, not %s", kind)
	}
	nllOf := func(ids []int, first int) (float64, int, error) { return gpuTokenNLL(ctx, o.dev, ids, first) }
	if o.dev == nil {
		W := o.window(m)
		st := m.NewState(W)
		defer st.Free()
		rows := min(W, EvalRows)
		logits, err := m.Acct.Floats(budget.Workspace, -1, rows*m.Config.Vocab)
		if err != nil {
			return LMResult{}, err
		}
		defer m.Acct.Free(logits)
		nllOf = func(ids []int, first int) (float64, int, error) { return tokenNLL(ctx, m, st, logits, ids, first) }
	}
	var nll float64
	var n int
	for ri, r := range recs {
		if err := ctx.Err(); err != nil {
			return LMResult{}, fmt.Errorf("train: evaluation stopped after %d of %d records: %w", ri, len(recs), err)
		}
		var ids []int
		first := 1 // index of the first scored token
		if kind == data.Text {
			ids = m.Tokenizer.Encode(r.Text, m.Tokenizer.AddBOS())
		} else {
			ids = m.Tokenizer.Encode(r.Prompt+r.Completion, m.Tokenizer.AddBOS())
			first = max(1, commonPrefix(ids, m.Tokenizer.Encode(r.Prompt, m.Tokenizer.AddBOS())))
		}
		s, k, err := nllOf(ids, first)
		if err != nil {
			if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
				return LMResult{}, fmt.Errorf("train: evaluation stopped in record %d of %d: %w", ri+1, len(recs), err)
			}
			return LMResult{}, err
		}
		nll += s
		n += k
		if o.Progress != nil {
			o.Progress(ri+1, len(recs))
		}
	}
	if n == 0 {
		return LMResult{}, errors.New("train: no tokens to score")
	}
	loss := nll / float64(n)
	if math.IsNaN(loss) || math.IsInf(loss, 0) {
		return LMResult{}, fmt.Errorf("train: the loss is %v: the model (or its adapter) holds non-finite weights", loss)
	}
	return LMResult{Loss: loss, PPL: math.Exp(loss), Tokens: n}, nil
}

// TokenNLL returns the summed negative log-likelihood of ids[first:] given
// their prefixes, and how many tokens that is. Sequences longer than the
// state are scored in windows of st.MaxLen() tokens overlapping by one, so
// every token is predicted once, with the context of its own window. logits
// is scratch of at least V floats; each window goes through the model in
// chunks of len(logits)/V positions.
func TokenNLL(m *model.Model, st *model.State, logits []float32, ids []int, first int) (float64, int, error) {
	return tokenNLL(context.Background(), m, st, logits, ids, first)
}

// tokenNLL is TokenNLL checking ctx before each chunk it feeds the model
// (one text record can be a whole book).
func tokenNLL(ctx context.Context, m *model.Model, st *model.State, logits []float32, ids []int, first int) (float64, int, error) {
	W, V := st.MaxLen(), m.Config.Vocab
	// A window is fed through the KV cache in chunks of as many positions
	// as logits holds rows, so the (positions, V) logits never exceed it.
	rows := max(1, min(len(logits)/V, W))
	return scoreWindows(W, ids, first, func(start, end int) (nll float64, n int, err error) {
		st.Reset()
		for c0 := start; c0 < end; c0 += rows {
			c1 := min(c0+rows, end)
			if err := ctx.Err(); err != nil {
				return 0, 0, err
			}
			if err := m.Forward(st, ids[c0:c1], logits, true); err != nil {
				return 0, 0, err
			}
			passDone("eval")
			for t := max(c0, first-1); t < c1 && t+1 < end; t++ {
				row := logits[(t-c0)*V : (t-c0+1)*V]
				nll += nn.LogSumExp(row) - float64(row[ids[t+1]])
				n++
			}
		}
		return nll, n, nil
	})
}

// scoreWindows walks ids in windows of W tokens overlapping by one (so
// every token after the first is predicted once, with its own window's
// context), skipping windows that end before first, and sums what score
// gives for each window [start, end).
func scoreWindows(W int, ids []int, first int, score func(start, end int) (float64, int, error)) (float64, int, error) {
	if W < 2 {
		return 0, 0, errors.New("train: window shorter than 2 tokens")
	}
	var nll float64
	var n int
	for start := 0; start+1 < len(ids); start += W - 1 {
		end := min(start+W, len(ids))
		if end > first {
			s, k, err := score(start, end)
			if err != nil {
				return 0, 0, err
			}
			nll, n = nll+s, n+k
		}
		if end == len(ids) {
			break
		}
	}
	return nll, n, nil
}

func commonPrefix(a, b []int) int {
	i := 0
	for i < len(a) && i < len(b) && a[i] == b[i] {
		i++
	}
	return i
}

// gpuTokenNLL is tokenNLL through a GPU scoring session: the same
// windows, each position's loss computed on the device.
func gpuTokenNLL(ctx context.Context, se *model.GPUSession, ids []int, first int) (float64, int, error) {
	return scoreWindows(se.MaxLen(), ids, first, func(start, end int) (float64, int, error) {
		if err := ctx.Err(); err != nil {
			return 0, 0, err
		}
		tg := make([]int, end-start)
		for t := start; t < end; t++ {
			tg[t-start] = -1
			if t >= first-1 && t+1 < end {
				tg[t-start] = ids[t+1]
			}
		}
		se.Pos = 0
		s, k, err := se.NLL(ids[start:end], tg)
		if err == nil {
			passDone("eval")
		}
		return s, k, err
	})
}

// ChoiceScores returns, for one classification record, the summed
// log-likelihood of each choice's tokens after the prompt (MeZO's protocol:
// the text prompt+choice is encoded whole and the tokens past the part shared
// with the prompt's own encoding are scored).
func ChoiceScores(m *model.Model, st *model.State, r data.Record) ([]float64, error) {
	V := m.Config.Vocab
	full, lcp, maxLen, err := choiceTokens(m, r, st.MaxLen())
	if err != nil {
		return nil, err
	}
	st.Reset()
	last := make([]float32, V)
	if err := m.Forward(st, full[0][:lcp], last, false); err != nil {
		return nil, err
	}
	scores := make([]float64, len(r.Choices))
	logits, err := m.Acct.Floats(budget.Workspace, -1, maxLen*V)
	if err != nil {
		return nil, err
	}
	defer m.Acct.Free(logits)
	for i, f := range full {
		st.Pos = lcp
		rest := f[lcp:]
		if err := m.Forward(st, rest, logits, true); err != nil {
			return nil, err
		}
		s := float64(last[rest[0]]) - nn.LogSumExp(last)
		for j := 1; j < len(rest); j++ {
			row := logits[(j-1)*V : j*V]
			s += float64(row[rest[j]]) - nn.LogSumExp(row)
		}
		scores[i] = s
	}
	return scores, nil
}

// choiceTokens encodes a classification record's prompt+choice texts and
// finds the prefix they share with the prompt's own encoding (at least 1).
func choiceTokens(m *model.Model, r data.Record, window int) (full [][]int, lcp, maxLen int, err error) {
	prompt := m.Tokenizer.Encode(r.Prompt, m.Tokenizer.AddBOS())
	full = make([][]int, len(r.Choices))
	lcp = len(prompt)
	for i, c := range r.Choices {
		full[i] = m.Tokenizer.Encode(r.Prompt+c, m.Tokenizer.AddBOS())
		lcp = min(lcp, commonPrefix(full[i], prompt))
	}
	lcp = max(lcp, 1)
	for _, f := range full {
		maxLen = max(maxLen, len(f))
		if len(f) <= lcp {
			return nil, 0, 0, fmt.Errorf("train: choice adds no tokens after the prompt %q", r.Prompt)
		}
	}
	if maxLen > window {
		return nil, 0, 0, fmt.Errorf("train: prompt and choice take %d tokens, more than the window of %d", maxLen, window)
	}
	return full, lcp, maxLen, nil
}

// gpuChoiceScores is ChoiceScores through a GPU scoring session: the
// shared prefix but its last token once, then for each choice that token
// and the choice's, each choice token's loss computed on the device.
func gpuChoiceScores(m *model.Model, se *model.GPUSession, r data.Record) ([]float64, error) {
	full, lcp, _, err := choiceTokens(m, r, se.MaxLen())
	if err != nil {
		return nil, err
	}
	se.Pos = 0
	if lcp > 1 {
		pre := full[0][:lcp-1]
		none := make([]int, len(pre))
		for i := range none {
			none[i] = -1
		}
		if _, _, err := se.NLL(pre, none); err != nil {
			return nil, err
		}
	}
	scores := make([]float64, len(full))
	for i, f := range full {
		se.Pos = lcp - 1
		tg := make([]int, len(f)-lcp+1)
		copy(tg, f[lcp:])
		tg[len(tg)-1] = -1
		s, _, err := se.NLL(f[lcp-1:], tg)
		if err != nil {
			return nil, err
		}
		scores[i] = -s
	}
	return scores, nil
}

// EvalClassify returns the accuracy of picking the choice with the highest
// summed log-likelihood.
func EvalClassify(ctx context.Context, m *model.Model, recs []data.Record, o EvalOptions) (ClassResult, error) {
	scoresOf := func(r data.Record) ([]float64, error) { return gpuChoiceScores(m, o.dev, r) }
	if o.dev == nil {
		st := m.NewState(o.window(m))
		defer st.Free()
		scoresOf = func(r data.Record) ([]float64, error) { return ChoiceScores(m, st, r) }
	}
	correct := 0
	for i, r := range recs {
		if err := ctx.Err(); err != nil {
			return ClassResult{}, fmt.Errorf("train: evaluation stopped after %d of %d records: %w", i, len(recs), err)
		}
		sc, err := scoresOf(r)
		if err != nil {
			return ClassResult{}, fmt.Errorf("record %d: %w", i+1, err)
		}
		passDone("eval")
		best := 0
		for j, s := range sc {
			if s > sc[best] {
				best = j
			}
		}
		if best == r.Label {
			correct++
		}
		if o.Progress != nil {
			o.Progress(i+1, len(recs))
		}
	}
	return ClassResult{Accuracy: float64(correct) / float64(len(recs)), N: len(recs)}, nil
}
