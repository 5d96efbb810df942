package train

import (
	"encoding/json"
	"fmt"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/qtune/qtune/internal/fsx"
)

// ParseConfig reads YAML or JSON settings (the keys of Config's json tags;
// unknown keys are an error) into c, over what c holds: `qtune train
// --config` and the C ABI's config both come here.
func ParseConfig(b []byte, c *Config) error {
	b = fsx.TrimBOM(b)
	var raw map[string]any
	if err := yaml.Unmarshal(b, &raw); err != nil { // YAML is a superset of JSON
		return err
	}
	j, err := json.Marshal(raw)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(strings.NewReader(string(j)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(c); err != nil {
		return fmt.Errorf("%w: %w", err, ErrBadOptions)
	}
	return nil
}
