package quant

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
)

// Type is a tensor element type. Values below NF4 are ggml's type ids, so a
// GGUF file's u32 type field converts directly.
type Type uint32

// ggml type ids (ggml.h); NF4 is qtune's own (see doc.go).
const (
	F32    Type = 0
	F16    Type = 1
	Q4_0   Type = 2
	Q4_1   Type = 3
	Q5_0   Type = 6
	Q5_1   Type = 7
	Q8_0   Type = 8
	Q8_1   Type = 9
	Q2_K   Type = 10
	Q3_K   Type = 11
	Q4_K   Type = 12
	Q5_K   Type = 13
	Q6_K   Type = 14
	Q8_K   Type = 15
	IQ4_NL Type = 20
	IQ4_XS Type = 23
	I8     Type = 24
	I16    Type = 25
	I32    Type = 26
	I64    Type = 27
	F64    Type = 28
	BF16   Type = 30
	MXFP4  Type = 39
	// NF4 is QLoRA's 4-bit NormalFloat with double-quantized absmax. It is not a
	// ggml type; qtune stores it in GGUF containers under this id (doc.go).
	NF4 Type = 4096
)

// Info describes a block format: BlockSize elements are stored in TypeSize
// bytes. For NF4 the block is the 64-weight nibble block; its absmax codes and
// group scales live in a tensor-level side table (see NF4SideBytes).
type Info struct {
	Name      string
	BlockSize int
	TypeSize  int
	Quantized bool
}

// table lists every type qtune knows, explicitly (house rule: no registration).
var table = map[Type]Info{
	F32:    {"F32", 1, 4, false},
	F16:    {"F16", 1, 2, false},
	BF16:   {"BF16", 1, 2, false},
	F64:    {"F64", 1, 8, false},
	I8:     {"I8", 1, 1, false},
	I16:    {"I16", 1, 2, false},
	I32:    {"I32", 1, 4, false},
	I64:    {"I64", 1, 8, false},
	Q4_0:   {"Q4_0", 32, 18, true},
	Q4_1:   {"Q4_1", 32, 20, true},
	Q5_0:   {"Q5_0", 32, 22, true},
	Q5_1:   {"Q5_1", 32, 24, true},
	Q8_0:   {"Q8_0", 32, 34, true},
	Q8_1:   {"Q8_1", 32, 36, true},
	Q2_K:   {"Q2_K", 256, 84, true},
	Q3_K:   {"Q3_K", 256, 110, true},
	Q4_K:   {"Q4_K", 256, 144, true},
	Q5_K:   {"Q5_K", 256, 176, true},
	Q6_K:   {"Q6_K", 256, 210, true},
	Q8_K:   {"Q8_K", 256, 292, true},
	IQ4_NL: {"IQ4_NL", 32, 18, true},
	IQ4_XS: {"IQ4_XS", 256, 136, true},
	MXFP4:  {"MXFP4", 32, 17, true},
	NF4:    {"NF4", 64, 32, true},
}

// refused names the ggml types qtune knows of but does not read: the
// codebook formats of the IQ1/IQ2/IQ3 families, the ternary formats, the
// formats ggml added after qtune's table, and the ids ggml retired. Lookup
// refuses them by name (ErrUnsupported) rather than as an unknown number.
var refused = map[Type]string{
	4: "Q4_2", 5: "Q4_3",
	16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 21: "IQ3_S", 22: "IQ2_S", 29: "IQ1_M",
	31: "Q4_0_4_4", 32: "Q4_0_4_8", 33: "Q4_0_8_8",
	34: "TQ1_0", 35: "TQ2_0",
	36: "IQ4_NL_4_4", 37: "IQ4_NL_4_8", 38: "IQ4_NL_8_8",
	40: "NVFP4", 41: "Q1_0", 42: "Q2_0",
}

// ErrUnknownType is returned for a type id qtune does not know.
var ErrUnknownType = errors.New("unknown tensor type")

// refusedError is Lookup's error for a type in refused; it wraps ErrUnsupported.
type refusedError struct{ name string }

func (e refusedError) Error() string {
	return fmt.Sprintf("quant: tensor type %s is not supported (supported: %s)", e.name, supportedNames())
}

func (e refusedError) Unwrap() error { return ErrUnsupported }

// supportedNames lists the names of the types a weight can have (those
// Dequantize decodes), in type id order.
func supportedNames() string {
	ids := make([]Type, 0, len(table))
	for t := range table {
		if _, _, ok := blockInfo(t); ok && t != Q8_1 {
			ids = append(ids, t)
		}
	}
	slices.Sort(ids)
	names := make([]string, len(ids))
	for i, t := range ids {
		names[i] = table[t].Name
	}
	return strings.Join(names, ", ")
}

// Lookup returns the block description of t. A ggml type qtune does not
// read (IQ2_XS, TQ1_0 …) is refused by name with an error wrapping
// ErrUnsupported; any other id not in the table wraps ErrUnknownType.
func Lookup(t Type) (Info, error) {
	in, ok := table[t]
	if !ok {
		if name, ok := refused[t]; ok {
			return Info{}, refusedError{name}
		}
		return Info{}, fmt.Errorf("quant: %w %d", ErrUnknownType, uint32(t))
	}
	return in, nil
}

// String names the type ("Q4_0", also for the refused ggml types such as
// "IQ2_XS"), or "type(N)" when unknown.
func (t Type) String() string {
	if in, ok := table[t]; ok {
		return in.Name
	}
	if name, ok := refused[t]; ok {
		return name
	}
	return fmt.Sprintf("type(%d)", uint32(t))
}

// Known reports whether t is in the table.
func (t Type) Known() bool { _, ok := table[t]; return ok }

// ParseType reads a type name, case-insensitively ("q4_k", "NF4").
func ParseType(s string) (Type, error) {
	u := strings.ToUpper(s)
	for t, in := range table {
		if in.Name == u {
			return t, nil
		}
	}
	for _, name := range refused {
		if name == u {
			return 0, refusedError{name}
		}
	}
	return 0, fmt.Errorf("quant: %w %q", ErrUnknownType, s)
}

// nf4GroupBlocks is how many NF4 blocks share one double-quantization scale.
const nf4GroupBlocks = 256

// Bytes returns the storage size of n elements of type t, checking that n is
// a whole number of blocks and that the size does not overflow.
func Bytes(t Type, n int64) (int64, error) {
	in, err := Lookup(t)
	if err != nil {
		return 0, err
	}
	if n < 0 {
		return 0, fmt.Errorf("quant: negative element count %d", n)
	}
	if n%int64(in.BlockSize) != 0 {
		return 0, fmt.Errorf("quant: %s: %d elements is not a multiple of the block size %d", in.Name, n, in.BlockSize)
	}
	blocks := n / int64(in.BlockSize)
	if blocks > math.MaxInt64/int64(in.TypeSize) {
		return 0, fmt.Errorf("quant: %s: %d elements overflow", in.Name, n)
	}
	size := blocks * int64(in.TypeSize)
	if t == NF4 {
		size += NF4SideBytes(blocks)
	}
	return size, nil
}

// NF4SideBytes is the size of an NF4 tensor's side table for the given number
// of 64-weight blocks: one int8 absmax code per block, one f32 scale per group
// of 256 blocks, and one f32 mean per tensor.
func NF4SideBytes(blocks int64) int64 {
	groups := (blocks + nf4GroupBlocks - 1) / nf4GroupBlocks
	return blocks + 4*groups + 4
}
