package data

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/qtune/qtune/budget"
	"github.com/qtune/qtune/internal/fsx"
	"io"
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
	// Line is the record's line in a JSONL file (1 for a plain-text
	// file's one record; 0 when it did not come from a file).
	Line int
}

// ErrData marks malformed data.
var ErrData = errors.New("malformed data")

// Error is a data error that names where it is: the file and the line of
// a JSONL record (or, when lines are not known, the record's number). It
// wraps ErrData or the cause (errors.Is / errors.As).
type Error struct {
	File   string // "" when the records did not come from a file
	Line   int    // 1-based; 0: not known
	Record int    // 1-based, when Line is not known; 0: the whole file
	Err    error
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("data: ")
	if e.File != "" {
		b.WriteString(e.File)
		b.WriteString(": ")
	}
	switch {
	case e.Line > 0:
		fmt.Fprintf(&b, "line %d: ", e.Line)
	case e.Record > 0:
		fmt.Fprintf(&b, "record %d: ", e.Record)
	}
	b.WriteString(e.Err.Error())
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// lineErr is a malformed line: ErrData and what is wrong with it.
func lineErr(line int, format string, args ...any) error {
	return &Error{Line: line, Err: fmt.Errorf("%w: "+format, append([]any{ErrData}, args...)...)}
}

// inFile names the file of a data error that did not know it; any other
// error (reading the file) is wrapped with the file's name.
func inFile(path string, err error) error {
	var de *Error
	if !errors.As(err, &de) {
		return fmt.Errorf("data: %s: %w", path, err)
	}
	if de.File == "" {
		c := *de
		c.File = path
		return &c
	}
	return err
}

// MaxLine bounds one JSONL line (64 MiB).
const MaxLine = 64 << 20

// Load reads a data file: JSONL when its name ends in .jsonl or its first
// non-blank byte is '{', otherwise the whole file is one plain-text record.
// It holds every record; Scan walks them one at a time.
func Load(path string) ([]Record, Kind, error) {
	var recs []Record
	kind, _, err := Scan(path, func(r Record) error {
		recs = append(recs, r)
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	return recs, kind, nil
}

// Scan reads a data file as Load does, calling fn with each record in order
// and keeping none of them, and returns the file's kind and number of
// records. Parse errors are Load's (they name the file and the line); an
// error from fn stops the walk and is returned as it is. A plain-text file is
// one record, so it is held whole while fn runs.
func Scan(path string, fn func(Record) error) (Kind, int, error) {
	return ScanMax(path, MaxLine, fn)
}

// ScanMax is Scan with records of at most maxRecord bytes (MaxLine when
// not positive): a longer JSONL line, or a longer plain-text file, is an
// error naming it before it is read whole.
func ScanMax(path string, maxRecord int64, fn func(Record) error) (Kind, int, error) {
	if maxRecord <= 0 || maxRecord > MaxLine {
		maxRecord = MaxLine
	}
	f, err := fsx.Open(path)
	if err != nil {
		return 0, 0, fmt.Errorf("data: %w", err)
	}
	defer f.Close()
	var fnErr error
	call := func(r Record) error {
		fnErr = fn(r)
		return fnErr
	}
	br := bufio.NewReaderSize(f, 1<<16)
	head, _ := br.Peek(512)
	trim := bytes.TrimLeft(head, " \t\r\n\ufeff")
	if strings.HasSuffix(path, ".jsonl") || (len(trim) > 0 && trim[0] == '{') {
		kind, n, err := scanJSONL(br, int(maxRecord), call)
		if fnErr != nil {
			return 0, 0, fnErr
		}
		if err != nil {
			return 0, 0, inFile(path, err)
		}
		return kind, n, nil
	}
	if st, err := f.Stat(); err == nil && st.Size() > maxRecord {
		return 0, 0, &Error{File: path, Err: fmt.Errorf("%w: a plain-text record of %s, more than the %s one record may be under this memory budget: split it (JSONL, one record per line) or raise --max-mem",
			ErrData, budget.FormatSize(st.Size()), budget.FormatSize(maxRecord))}
	}
	b, err := io.ReadAll(br)
	if err != nil {
		return 0, 0, fmt.Errorf("data: %s: %w", path, err)
	}
	b = fsx.TrimBOM(b) // an editor's mark, not text to train on
	if !utf8.Valid(b) {
		return 0, 0, &Error{File: path, Err: fmt.Errorf("%w: not UTF-8 text", ErrData)}
	}
	if len(b) == 0 {
		return 0, 0, &Error{File: path, Err: fmt.Errorf("%w: empty file", ErrData)}
	}
	if err := fn(Record{Text: string(b), Line: 1}); err != nil {
		return 0, 0, err
	}
	return Text, 1, nil
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
	var recs []Record
	kind, _, err := scanJSONL(r, MaxLine, func(rec Record) error {
		recs = append(recs, rec)
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	return recs, kind, nil
}

// scanJSONL is ReadJSONL calling fn with each record instead of keeping it;
// an error from fn is returned as it is.
func scanJSONL(r io.Reader, maxLine int, fn func(Record) error) (Kind, int, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, min(1<<16, maxLine+1)), maxLine+1) // the line and its newline
	var kind Kind
	line, n := 0, 0
	for sc.Scan() {
		line++
		b := bytes.TrimSpace(sc.Bytes())
		if line == 1 {
			b = fsx.TrimBOM(b)
		}
		if len(b) == 0 {
			continue
		}
		var raw rawRecord
		if err := json.Unmarshal(b, &raw); err != nil {
			return 0, 0, lineErr(line, "%v", err)
		}
		rec, k, err := raw.record()
		if err != nil {
			return 0, 0, lineErr(line, "%v", err)
		}
		rec.Line = line
		if kind == 0 {
			kind = k
		} else if k != kind {
			return 0, 0, lineErr(line, "%s record in a %s file", k, kind)
		}
		if err := fn(rec); err != nil {
			return 0, 0, err
		}
		n++
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			if maxLine < MaxLine {
				return 0, 0, lineErr(line+1, "a record longer than the %s one record may be under this memory budget: split it or raise --max-mem", budget.FormatSize(int64(maxLine)))
			}
			return 0, 0, lineErr(line+1, "line longer than %d bytes", MaxLine)
		}
		return 0, 0, err
	}
	if n == 0 {
		return 0, 0, &Error{Err: fmt.Errorf("%w: no records", ErrData)}
	}
	return kind, n, nil
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
