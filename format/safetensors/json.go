package safetensors

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
)

// maxJSONDepth bounds object/array nesting in the JSON we read.
const maxJSONDepth = 64

// checkJSON walks data token by token and fails on invalid JSON, data after
// the top-level value, nesting deeper than maxJSONDepth, or an object with a
// repeated key (which encoding/json would silently resolve to the last one).
func checkJSON(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	// keys[i] is the key set of the i-th open container (nil for an array).
	var keys []map[string]bool
	for {
		// In an object, the decoder yields keys as strings before each value.
		if n := len(keys); n > 0 && keys[n-1] != nil && dec.More() {
			tok, err := dec.Token()
			if err != nil {
				return fmt.Errorf("invalid JSON: %w", err)
			}
			k, _ := tok.(string)
			if keys[n-1][k] {
				return fmt.Errorf("duplicate key %q", k)
			}
			keys[n-1][k] = true
		}
		tok, err := dec.Token()
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("invalid JSON: %w", err)
		}
		if d, ok := tok.(json.Delim); ok {
			switch d {
			case '{':
				keys = append(keys, map[string]bool{})
			case '[':
				keys = append(keys, nil)
			default: // '}' or ']'
				keys = keys[:len(keys)-1]
			}
			if len(keys) > maxJSONDepth {
				return fmt.Errorf("JSON nested deeper than %d", maxJSONDepth)
			}
		}
		if len(keys) == 0 {
			if _, err := dec.Token(); err != io.EOF {
				return fmt.Errorf("invalid JSON: data after the top-level value")
			}
			return nil
		}
	}
}
