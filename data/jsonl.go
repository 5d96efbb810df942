package data

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"unicode/utf8"
)

// Kind is the shape of a data set; every record of a file has the same kind.
type Kind int

// The record kinds.
const (
	Text Kind = iota + 1
	Completion
	Chat
	Classification
)

func (k Kind) String() string {
	switch k {
	case Text:
		return "text"
	case Completion:
		return "prompt/completion"
	case Chat:
		return "chat"
	case Classification:
		return "classification"
	}
	return "unknown"
}

// Message is one turn of a chat record.
type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// Record is one example.
type Record struct {
	Text       string    // Text
	Prompt     string    // Completion, Classification
	Completion string    // Completion
	Messages   []Message // Chat
	Choices    []string  // Classification
	Label      int       // Classification: index into Choices
}

// ErrData marks malformed data.
var ErrData = errors.New("malformed data")

// MaxLine bounds one JSONL line (64 MiB).
const MaxLine = 64 << 20

// Load reads a data file: JSONL when its name ends in .jsonl or its first
// non-blank byte is '{', otherwise the whole file is one plain-text record.
func Load(path string) ([]Record, Kind, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, fmt.Errorf("data: %w", err)
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 1<<16)
	head, _ := br.Peek(512)
	trim := bytes.TrimLeft(head, " \t\r\n\ufeff")
	if strings.HasSuffix(path, ".jsonl") || (len(trim) > 0 && trim[0] == '{') {
		recs, kind, err := ReadJSONL(br)
		if err != nil {
			return nil, 0, fmt.Errorf("data: %s: %w", path, err)
		}
		return recs, kind, nil
	}
	b, err := io.ReadAll(br)
	if err != nil {
		return nil, 0, fmt.Errorf("data: %s: %w", path, err)
	}
	if !utf8.Valid(b) {
		return nil, 0, fmt.Errorf("data: %s: %w: not UTF-8 text", path, ErrData)
	}
	if len(b) == 0 {
		return nil, 0, fmt.Errorf("data: %s: %w: empty file", path, ErrData)
	}
	return []Record{{Text: string(b)}}, Text, nil
}

type rawRecord struct {
	Text       *string         `json:"text"`
	Prompt     *string         `json:"prompt"`
	Completion *string         `json:"completion"`
	Messages   []Message       `json:"messages"`
	Choices    []string        `json:"choices"`
	Label      json.RawMessage `json:"label"`
}

// ReadJSONL parses records, one JSON object per line (blank lines skipped).
// Errors name the line.
func ReadJSONL(r io.Reader) ([]Record, Kind, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 1<<16), MaxLine)
	var recs []Record
	var kind Kind
	line := 0
	for sc.Scan() {
		line++
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) == 0 {
			continue
		}
		var raw rawRecord
		if err := json.Unmarshal(b, &raw); err != nil {
			return nil, 0, fmt.Errorf("line %d: %w: %v", line, ErrData, err)
		}
		rec, k, err := raw.record()
		if err != nil {
			return nil, 0, fmt.Errorf("line %d: %w: %v", line, ErrData, err)
		}
		if kind == 0 {
			kind = k
		} else if k != kind {
			return nil, 0, fmt.Errorf("line %d: %w: %s record in a %s file", line, ErrData, k, kind)
		}
		recs = append(recs, rec)
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, 0, fmt.Errorf("line %d: %w: line longer than %d bytes", line+1, ErrData, MaxLine)
		}
		return nil, 0, err
	}
	if len(recs) == 0 {
		return nil, 0, fmt.Errorf("%w: no records", ErrData)
	}
	return recs, kind, nil
}

func (r *rawRecord) record() (Record, Kind, error) {
	switch {
	case r.Choices != nil || r.Label != nil:
		if r.Prompt == nil {
			return Record{}, 0, errors.New(`classification record without "prompt"`)
		}
		if len(r.Choices) < 2 {
			return Record{}, 0, fmt.Errorf(`classification record needs at least 2 "choices", has %d`, len(r.Choices))
		}
		var label int
		if err := json.Unmarshal(r.Label, &label); err != nil {
			return Record{}, 0, errors.New(`"label" must be an integer index into "choices"`)
		}
		if label < 0 || label >= len(r.Choices) {
			return Record{}, 0, fmt.Errorf(`"label" %d out of range for %d choices`, label, len(r.Choices))
		}
		return Record{Prompt: *r.Prompt, Choices: r.Choices, Label: label}, Classification, nil
	case r.Messages != nil:
		if len(r.Messages) == 0 {
			return Record{}, 0, errors.New(`empty "messages"`)
		}
		for i, m := range r.Messages {
			switch m.Role {
			case "system", "user", "assistant":
			default:
				return Record{}, 0, fmt.Errorf(`message %d: unknown role %q`, i, m.Role)
			}
		}
		return Record{Messages: r.Messages}, Chat, nil
	case r.Prompt != nil || r.Completion != nil:
		if r.Prompt == nil || r.Completion == nil {
			return Record{}, 0, errors.New(`"prompt" and "completion" go together`)
		}
		return Record{Prompt: *r.Prompt, Completion: *r.Completion}, Completion, nil
	case r.Text != nil:
		return Record{Text: *r.Text}, Text, nil
	}
	return Record{}, 0, errors.New(`record has none of "text", "prompt"/"completion", "messages", "prompt"/"choices"/"label"`)
}
