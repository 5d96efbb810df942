package train

import (
	"errors"

	"github.com/qtune/qtune/model"
)

// newLoHOMethod is filled in by the hybrid work (issue 6).
func newLoHOMethod(m *model.Model, cfg Config, intra bool) (Method, error) {
	return nil, errors.New("train: loho is not implemented yet")
}
