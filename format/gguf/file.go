package gguf

import "math"

// Get returns the pair with the given key.
func (f *File) Get(key string) (KV, bool) {
	if f.kvIndex != nil {
		i, ok := f.kvIndex[key]
		if !ok {
			return KV{}, false
		}
		return f.KV[i], true
	}
	for _, kv := range f.KV { // a File built by hand
		if kv.Key == key {
			return kv, true
		}
	}
	return KV{}, false
}

// String returns a string value.
func (f *File) String(key string) (string, bool) {
	kv, ok := f.Get(key)
	if !ok {
		return "", false
	}
	s, ok := kv.Value.(string)
	return s, ok
}

// Uint returns a value of any integer type that is not negative, or a bool
// (0 or 1), as uint64.
func (f *File) Uint(key string) (uint64, bool) {
	kv, ok := f.Get(key)
	if !ok {
		return 0, false
	}
	return toUint(kv.Value)
}

// Int returns a value of any integer type that fits in int64, or a bool (0 or
// 1), as int64.
func (f *File) Int(key string) (int64, bool) {
	kv, ok := f.Get(key)
	if !ok {
		return 0, false
	}
	return toInt(kv.Value)
}

// Float returns an f32 or f64 value, or any integer value, as float64.
func (f *File) Float(key string) (float64, bool) {
	kv, ok := f.Get(key)
	if !ok {
		return 0, false
	}
	switch v := kv.Value.(type) {
	case float32:
		return float64(v), true
	case float64:
		return v, true
	case uint64:
		return float64(v), true
	}
	if i, ok := toInt(kv.Value); ok {
		if _, isBool := kv.Value.(bool); !isBool {
			return float64(i), true
		}
	}
	return 0, false
}

// Strings returns a string array. The slice is the File's own; do not modify it.
func (f *File) Strings(key string) ([]string, bool) {
	a, ok := f.array(key)
	if !ok {
		return nil, false
	}
	s, ok := a.Data.([]string)
	return s, ok
}

// Float32s returns an f32 array (the File's own slice; do not modify it), or
// an f64 array converted to a new []float32.
func (f *File) Float32s(key string) ([]float32, bool) {
	a, ok := f.array(key)
	if !ok {
		return nil, false
	}
	switch d := a.Data.(type) {
	case []float32:
		return d, true
	case []float64:
		out := make([]float32, len(d))
		for i, v := range d {
			out[i] = float32(v)
		}
		return out, true
	}
	return nil, false
}

// Int32s returns an i32 array (the File's own slice; do not modify it), or an
// array of u8, i8, u16, i16 or u32 converted to a new []int32. A u32 array
// with a value above MaxInt32 gives false.
func (f *File) Int32s(key string) ([]int32, bool) {
	a, ok := f.array(key)
	if !ok {
		return nil, false
	}
	switch d := a.Data.(type) {
	case []int32:
		return d, true
	case []uint32:
		out := make([]int32, len(d))
		for i, v := range d {
			if v > math.MaxInt32 {
				return nil, false
			}
			out[i] = int32(v)
		}
		return out, true
	case []uint8:
		return convert(d), true
	case []int8:
		return convert(d), true
	case []uint16:
		return convert(d), true
	case []int16:
		return convert(d), true
	}
	return nil, false
}

func convert[T uint8 | int8 | uint16 | int16](d []T) []int32 {
	out := make([]int32, len(d))
	for i, v := range d {
		out[i] = int32(v)
	}
	return out
}

func (f *File) array(key string) (Array, bool) {
	kv, ok := f.Get(key)
	if !ok {
		return Array{}, false
	}
	a, ok := kv.Value.(Array)
	if !ok || a.Len() < 0 {
		return Array{}, false
	}
	return a, true
}

// Tensor returns the tensor with the given name.
func (f *File) Tensor(name string) (TensorInfo, bool) {
	if f.tensorIndex != nil {
		i, ok := f.tensorIndex[name]
		if !ok {
			return TensorInfo{}, false
		}
		return f.Tensors[i], true
	}
	for _, t := range f.Tensors {
		if t.Name == name {
			return t, true
		}
	}
	return TensorInfo{}, false
}

// Data returns the view data[t.Offset : t.Offset+t.Size] of the file bytes
// that were parsed (capacity limited to the tensor). It returns nil when the
// range does not lie inside data.
func (f *File) Data(data []byte, t TensorInfo) []byte {
	if t.Offset < 0 || t.Size < 0 || t.Offset > int64(len(data)) || t.Size > int64(len(data))-t.Offset {
		return nil
	}
	return data[t.Offset : t.Offset+t.Size : t.Offset+t.Size]
}

func toUint(v any) (uint64, bool) {
	switch x := v.(type) {
	case uint8:
		return uint64(x), true
	case uint16:
		return uint64(x), true
	case uint32:
		return uint64(x), true
	case uint64:
		return x, true
	case bool:
		if x {
			return 1, true
		}
		return 0, true
	}
	if i, ok := toInt(v); ok && i >= 0 {
		return uint64(i), true
	}
	return 0, false
}

func toInt(v any) (int64, bool) {
	switch x := v.(type) {
	case uint8:
		return int64(x), true
	case int8:
		return int64(x), true
	case uint16:
		return int64(x), true
	case int16:
		return int64(x), true
	case uint32:
		return int64(x), true
	case int32:
		return int64(x), true
	case uint64:
		if x > math.MaxInt64 {
			return 0, false
		}
		return int64(x), true
	case int64:
		return x, true
	case bool:
		if x {
			return 1, true
		}
		return 0, true
	}
	return 0, false
}
