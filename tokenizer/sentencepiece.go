package tokenizer

import (
	"encoding/binary"
	"fmt"
	"math"
)

// A minimal protobuf wire-format reader for SentencePiece's ModelProto.
// Every length is checked against the bytes left, nesting is one level, and
// unknown fields are skipped, so any input ends in a result or an error.

type pbReader struct {
	b   []byte
	pos int
	msg string // message name for errors
}

func (r *pbReader) errf(format string, args ...any) error {
	return fmt.Errorf("%w: sentencepiece %s at byte %d: %s", ErrFormat, r.msg, r.pos, fmt.Sprintf(format, args...))
}

func (r *pbReader) done() bool { return r.pos >= len(r.b) }

func (r *pbReader) varint() (uint64, error) {
	var v uint64
	for i := 0; i < 10; i++ {
		if r.pos >= len(r.b) {
			return 0, r.errf("varint past end")
		}
		c := r.b[r.pos]
		r.pos++
		v |= uint64(c&0x7f) << (7 * i)
		if c < 0x80 {
			return v, nil
		}
	}
	return 0, r.errf("varint longer than 10 bytes")
}

// key reads a field key: number and wire type.
func (r *pbReader) key() (int, int, error) {
	k, err := r.varint()
	if err != nil {
		return 0, 0, err
	}
	if k>>3 == 0 || k>>3 > math.MaxInt32 {
		return 0, 0, r.errf("field number %d", k>>3)
	}
	return int(k >> 3), int(k & 7), nil
}

func (r *pbReader) bytes() ([]byte, error) {
	n, err := r.varint()
	if err != nil {
		return nil, err
	}
	if n > uint64(len(r.b)-r.pos) {
		return nil, r.errf("length %d past end", n)
	}
	b := r.b[r.pos : r.pos+int(n)]
	r.pos += int(n)
	return b, nil
}

func (r *pbReader) fixed32() (uint32, error) {
	if len(r.b)-r.pos < 4 {
		return 0, r.errf("fixed32 past end")
	}
	v := binary.LittleEndian.Uint32(r.b[r.pos:])
	r.pos += 4
	return v, nil
}

// skip passes over a field of wire type wt.
func (r *pbReader) skip(wt int) error {
	switch wt {
	case 0:
		_, err := r.varint()
		return err
	case 1:
		if len(r.b)-r.pos < 8 {
			return r.errf("fixed64 past end")
		}
		r.pos += 8
		return nil
	case 2:
		_, err := r.bytes()
		return err
	case 5:
		_, err := r.fixed32()
		return err
	}
	return r.errf("wire type %d", wt)
}

// wantType checks the wire type of a known field.
func (r *pbReader) wantType(field, wt, want int) error {
	if wt != want {
		return r.errf("field %d: wire type %d, want %d", field, wt, want)
	}
	return nil
}

type spModel struct {
	pieces                []string
	scores                []float32
	types                 []int32
	modelType             int // 1 unigram 2 bpe 3 word 4 char
	byteFallback          bool
	unk, bos, eos, pad    int
	addDummyPrefix        bool
	removeExtraWhitespace bool
	normalizer            string
}

func parseSentencePiece(data []byte) (*spModel, error) {
	m := &spModel{modelType: 1, unk: 0, bos: 1, eos: 2, pad: -1, addDummyPrefix: true, removeExtraWhitespace: true}
	r := &pbReader{b: data, msg: "ModelProto"}
	for !r.done() {
		f, wt, err := r.key()
		if err != nil {
			return nil, err
		}
		switch f {
		case 1, 2, 3:
			if err := r.wantType(f, wt, 2); err != nil {
				return nil, err
			}
			b, err := r.bytes()
			if err != nil {
				return nil, err
			}
			switch f {
			case 1:
				err = m.piece(b)
			case 2:
				err = m.trainer(b)
			case 3:
				err = m.normalizerSpec(b)
			}
			if err != nil {
				return nil, err
			}
		default:
			if err := r.skip(wt); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

func (m *spModel) piece(b []byte) error {
	r := &pbReader{b: b, msg: fmt.Sprintf("piece %d", len(m.pieces))}
	piece, score, typ := "", float32(0), int32(TypeNormal)
	for !r.done() {
		f, wt, err := r.key()
		if err != nil {
			return err
		}
		switch f {
		case 1:
			if err := r.wantType(f, wt, 2); err != nil {
				return err
			}
			s, err := r.bytes()
			if err != nil {
				return err
			}
			piece = string(s)
		case 2:
			if err := r.wantType(f, wt, 5); err != nil {
				return err
			}
			u, err := r.fixed32()
			if err != nil {
				return err
			}
			score = math.Float32frombits(u)
		case 3:
			if err := r.wantType(f, wt, 0); err != nil {
				return err
			}
			u, err := r.varint()
			if err != nil {
				return err
			}
			if u < TypeNormal || u > TypeByte {
				return r.errf("piece type %d", u)
			}
			typ = int32(u)
		default:
			if err := r.skip(wt); err != nil {
				return err
			}
		}
	}
	m.pieces = append(m.pieces, piece)
	m.scores = append(m.scores, score)
	m.types = append(m.types, typ)
	return nil
}

func (m *spModel) trainer(b []byte) error {
	r := &pbReader{b: b, msg: "TrainerSpec"}
	for !r.done() {
		f, wt, err := r.key()
		if err != nil {
			return err
		}
		switch f {
		case 3, 35, 40, 41, 42, 43:
			if err := r.wantType(f, wt, 0); err != nil {
				return err
			}
			u, err := r.varint()
			if err != nil {
				return err
			}
			id := int(int32(u)) // int32 fields: negative values are 10-byte varints
			switch f {
			case 3:
				m.modelType = id
			case 35:
				m.byteFallback = u != 0
			case 40:
				m.unk = id
			case 41:
				m.bos = id
			case 42:
				m.eos = id
			case 43:
				m.pad = id
			}
		default:
			if err := r.skip(wt); err != nil {
				return err
			}
		}
	}
	return nil
}

func (m *spModel) normalizerSpec(b []byte) error {
	r := &pbReader{b: b, msg: "NormalizerSpec"}
	for !r.done() {
		f, wt, err := r.key()
		if err != nil {
			return err
		}
		switch f {
		case 1:
			if err := r.wantType(f, wt, 2); err != nil {
				return err
			}
			s, err := r.bytes()
			if err != nil {
				return err
			}
			m.normalizer = string(s)
		case 3, 4:
			if err := r.wantType(f, wt, 0); err != nil {
				return err
			}
			u, err := r.varint()
			if err != nil {
				return err
			}
			if f == 3 {
				m.addDummyPrefix = u != 0
			} else {
				m.removeExtraWhitespace = u != 0
			}
		default:
			if err := r.skip(wt); err != nil {
				return err
			}
		}
	}
	return nil
}

// FromSentencePiece reads a SentencePiece tokenizer.model (ModelProto) of
// model type BPE. Unigram, word and char models give ErrUnsupported. The
// normalizer's add_dummy_prefix and remove_extra_whitespaces are honoured;
// a precompiled normalization charsmap (NFKC) is ignored, which is exact
// for the "identity" normalizer of the Llama models. BOS, EOS, UNK and PAD
// come from the trainer spec (defaults 1, 2, 0, -1) when they name a piece.
func FromSentencePiece(data []byte) (*Tokenizer, error) {
	m, err := parseSentencePiece(data)
	if err != nil {
		return nil, err
	}
	if len(m.pieces) == 0 {
		return nil, fmt.Errorf("%w: sentencepiece model without pieces", ErrFormat)
	}
	if m.modelType != 2 {
		names := map[int]string{1: "unigram", 3: "word", 4: "char"}
		return nil, fmt.Errorf("%w: sentencepiece model type %d (%s), only BPE", ErrUnsupported, m.modelType, names[m.modelType])
	}
	n := len(m.pieces)
	id := func(i int) int {
		if i < 0 || i >= n {
			return -1
		}
		return i
	}
	v := Vocab{
		Kind: SPM, Tokens: m.pieces, Scores: m.scores, Types: m.types,
		BOS: id(m.bos), EOS: id(m.eos), UNK: id(m.unk), PAD: id(m.pad),
		AddBOS: true, AddSpacePrefix: m.addDummyPrefix,
	}
	return build(v, options{removeExtraWhitespace: m.removeExtraWhitespace})
}
