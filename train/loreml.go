package train

import (
	"errors"

	"github.com/qtune/qtune/model"
)

// newLoReMLMethod is filled in by the mask-learning work (issue 6).
func newLoReMLMethod(m *model.Model, cfg Config) (Method, error) {
	return nil, errors.New("train: loreml is not implemented yet")
}
