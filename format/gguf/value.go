package gguf

import "fmt"

// ValueType is the type tag of a metadata value (formats.md §1).
type ValueType uint32

// Metadata value types, numbered as in the file.
const (
	TypeUint8   ValueType = 0
	TypeInt8    ValueType = 1
	TypeUint16  ValueType = 2
	TypeInt16   ValueType = 3
	TypeUint32  ValueType = 4
	TypeInt32   ValueType = 5
	TypeFloat32 ValueType = 6
	TypeBool    ValueType = 7
	TypeString  ValueType = 8
	TypeArray   ValueType = 9
	TypeUint64  ValueType = 10
	TypeInt64   ValueType = 11
	TypeFloat64 ValueType = 12
)

var valueTypeNames = [...]string{"u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64"}

// String names the type ("u32", "string", "array").
func (t ValueType) String() string {
	if int(t) < len(valueTypeNames) {
		return valueTypeNames[t]
	}
	return fmt.Sprintf("value_type(%d)", uint32(t))
}

// Valid reports whether t is one of the thirteen defined types.
func (t ValueType) Valid() bool { return t <= TypeFloat64 }

// scalarSize is the encoded size of a fixed-size value, 0 for string and array.
func (t ValueType) scalarSize() int {
	switch t {
	case TypeUint8, TypeInt8, TypeBool:
		return 1
	case TypeUint16, TypeInt16:
		return 2
	case TypeUint32, TypeInt32, TypeFloat32:
		return 4
	case TypeUint64, TypeInt64, TypeFloat64:
		return 8
	}
	return 0
}

// minSize is the smallest encoding of one value of type t.
func (t ValueType) minSize() int {
	switch t {
	case TypeString:
		return 8 // u64 length
	case TypeArray:
		return 12 // u32 element type + u64 count
	}
	return t.scalarSize()
}

// Array is an array value. Data is a typed slice according to Elem:
// []uint8, []int8, []uint16, []int16, []uint32, []int32, []float32, []bool,
// []string, []uint64, []int64, []float64, or []Array for nested arrays.
type Array struct {
	Elem ValueType
	Data any
}

// Len returns the number of elements, or -1 when Data does not match Elem.
func (a Array) Len() int {
	switch d := a.Data.(type) {
	case []uint8:
		return lenIf(a.Elem == TypeUint8, len(d))
	case []int8:
		return lenIf(a.Elem == TypeInt8, len(d))
	case []uint16:
		return lenIf(a.Elem == TypeUint16, len(d))
	case []int16:
		return lenIf(a.Elem == TypeInt16, len(d))
	case []uint32:
		return lenIf(a.Elem == TypeUint32, len(d))
	case []int32:
		return lenIf(a.Elem == TypeInt32, len(d))
	case []float32:
		return lenIf(a.Elem == TypeFloat32, len(d))
	case []bool:
		return lenIf(a.Elem == TypeBool, len(d))
	case []string:
		return lenIf(a.Elem == TypeString, len(d))
	case []uint64:
		return lenIf(a.Elem == TypeUint64, len(d))
	case []int64:
		return lenIf(a.Elem == TypeInt64, len(d))
	case []float64:
		return lenIf(a.Elem == TypeFloat64, len(d))
	case []Array:
		return lenIf(a.Elem == TypeArray, len(d))
	}
	return -1
}

func lenIf(ok bool, n int) int {
	if ok {
		return n
	}
	return -1
}

// KV is one metadata pair. Value holds the Go value for Type: uint8, int8,
// uint16, int16, uint32, int32, float32, bool, string, uint64, int64, float64,
// or Array.
type KV struct {
	Key   string
	Type  ValueType
	Value any
}

// KVOf builds a KV, taking the value type from v's Go type (see KV). Slices of
// the element types listed for Array become arrays. A value of another Go type
// gives a KV with an invalid Type, which Write reports as an error.
func KVOf(key string, v any) KV {
	t := ValueType(0xFFFFFFFF)
	switch x := v.(type) {
	case uint8:
		t = TypeUint8
	case int8:
		t = TypeInt8
	case uint16:
		t = TypeUint16
	case int16:
		t = TypeInt16
	case uint32:
		t = TypeUint32
	case int32:
		t = TypeInt32
	case float32:
		t = TypeFloat32
	case bool:
		t = TypeBool
	case string:
		t = TypeString
	case uint64:
		t = TypeUint64
	case int64:
		t = TypeInt64
	case float64:
		t = TypeFloat64
	case Array:
		t = TypeArray
	case []uint8:
		return KV{key, TypeArray, Array{TypeUint8, x}}
	case []int8:
		return KV{key, TypeArray, Array{TypeInt8, x}}
	case []uint16:
		return KV{key, TypeArray, Array{TypeUint16, x}}
	case []int16:
		return KV{key, TypeArray, Array{TypeInt16, x}}
	case []uint32:
		return KV{key, TypeArray, Array{TypeUint32, x}}
	case []int32:
		return KV{key, TypeArray, Array{TypeInt32, x}}
	case []float32:
		return KV{key, TypeArray, Array{TypeFloat32, x}}
	case []bool:
		return KV{key, TypeArray, Array{TypeBool, x}}
	case []string:
		return KV{key, TypeArray, Array{TypeString, x}}
	case []uint64:
		return KV{key, TypeArray, Array{TypeUint64, x}}
	case []int64:
		return KV{key, TypeArray, Array{TypeInt64, x}}
	case []float64:
		return KV{key, TypeArray, Array{TypeFloat64, x}}
	case []Array:
		return KV{key, TypeArray, Array{TypeArray, x}}
	}
	return KV{Key: key, Type: t, Value: v}
}
