package train

import "github.com/qtune/qtune/model"

// scoring is a method that computes its losses without gradients on a
// model.Scorer (zeroth-order methods): its validation loss is computed on
// the same Scorer, so validation adds no buffers of its own.
type scoring interface {
	scorer() *model.Scorer
}
