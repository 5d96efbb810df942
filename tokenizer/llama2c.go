package tokenizer

import (
	"encoding/binary"
	"fmt"
	"math"
	"strings"
)

// FromLlama2C reads a llama2.c tokenizer.bin: u32 max_token_length, then
// vocabSize records (f32 score, i32 length, length bytes), little endian.
// vocabSize <= 0 reads records until the data ends. Pieces spell spaces as
// ' ' (turned into "▁" here); ids 1 and 2 ("\n<s>\n", "\n</s>\n") are BOS
// and EOS, "<unk>" at 0 is UNK, "<0xNN>" pieces are byte tokens. The
// tokenizer adds the dummy-prefix space and BOS, as llama2.c does.
func FromLlama2C(data []byte, vocabSize int) (*Tokenizer, error) {
	if len(data) < 4 {
		return nil, fmt.Errorf("%w: llama2.c tokenizer: %d bytes, no header", ErrFormat, len(data))
	}
	p := 4 // max_token_length: not needed
	// every record takes at least 8 bytes, which bounds the allocation
	if vocabSize > (len(data)-p)/8 {
		return nil, fmt.Errorf("%w: llama2.c tokenizer: %d tokens cannot fit in %d bytes", ErrFormat, vocabSize, len(data))
	}
	var tokens []string
	var scores []float32
	if vocabSize > 0 {
		tokens = make([]string, 0, vocabSize)
		scores = make([]float32, 0, vocabSize)
	}
	for i := 0; vocabSize <= 0 && p < len(data) || i < vocabSize; i++ {
		if len(data)-p < 8 {
			return nil, fmt.Errorf("%w: llama2.c tokenizer: token %d: record past end of data", ErrFormat, i)
		}
		score := math.Float32frombits(binary.LittleEndian.Uint32(data[p:]))
		n := int32(binary.LittleEndian.Uint32(data[p+4:]))
		p += 8
		if n < 0 || int(n) > len(data)-p {
			return nil, fmt.Errorf("%w: llama2.c tokenizer: token %d: length %d past end of data", ErrFormat, i, n)
		}
		s := string(data[p : p+int(n)])
		p += int(n)
		switch {
		case i == 1 && s == "\n<s>\n":
			s = "<s>"
		case i == 2 && s == "\n</s>\n":
			s = "</s>"
		default:
			s = strings.ReplaceAll(s, " ", "▁")
		}
		tokens = append(tokens, s)
		scores = append(scores, score)
	}
	if len(tokens) == 0 {
		return nil, fmt.Errorf("%w: llama2.c tokenizer: no tokens", ErrFormat)
	}
	v := Vocab{
		Kind: SPM, Tokens: tokens, Scores: scores,
		BOS: -1, EOS: -1, UNK: -1, PAD: -1,
		AddBOS: true, AddSpacePrefix: true,
	}
	if len(tokens) > 2 {
		v.BOS, v.EOS = 1, 2
	}
	if tokens[0] == "<unk>" {
		v.UNK = 0
	}
	return New(v)
}
