package adapter

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/qtune/qtune/quant"
)

// FuzzReadGGUF: ReadGGUF never panics, fails with an "adapter: " error that
// matches one of the package's kinds or a wrapped gguf error, and what it
// accepts is a valid Adapter that survives WriteGGUF → ReadGGUF unchanged.
func FuzzReadGGUF(f *testing.F) {
	for i, dt := range []quant.Type{quant.F32, quant.F16, quant.BF16} {
		a := newAdapter(uint64(30+i), dims{C: 4, F: 6, H: 2, KV: 1, D: 2}, 1+i, []int{0, 1}, []string{"q", "k", "down"})
		a.UseRSLoRA = i == 1
		var buf bytes.Buffer
		if err := WriteGGUF(&buf, a, dt, "llama"); err != nil {
			f.Fatal(err)
		}
		f.Add(buf.Bytes())
		f.Add(buf.Bytes()[:buf.Len()/2])
	}
	f.Add([]byte("GGUF"))
	f.Fuzz(func(t *testing.T, data []byte) {
		a, err := ReadGGUF(data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "adapter: ") {
				t.Fatalf("error without prefix: %v", err)
			}
			return
		}
		if _, err := check(a); err != nil {
			t.Fatalf("accepted an invalid adapter: %v", err)
		}
		var buf bytes.Buffer
		if err := WriteGGUF(&buf, a, quant.F32, "llama"); err != nil {
			if errors.Is(err, ErrInvalid) {
				t.Fatalf("cannot write what was read: %v", err)
			}
			t.Fatal(err)
		}
		b, err := ReadGGUF(buf.Bytes())
		if err != nil {
			t.Fatalf("cannot read what was written: %v", err)
		}
		if !reflect.DeepEqual(nanFree(a), nanFree(b)) {
			t.Fatalf("round trip changed the adapter")
		}
	})
}

// nanFree replaces NaNs (which DeepEqual never finds equal) by a marker.
func nanFree(a *Adapter) *Adapter {
	c := *a
	c.Layers = append([]LoRA(nil), a.Layers...)
	for i := range c.Layers {
		for _, v := range []*[]float32{&c.Layers[i].A, &c.Layers[i].B} {
			s := append([]float32(nil), (*v)...)
			for j, x := range s {
				if x != x {
					s[j] = -12345
				}
			}
			*v = s
		}
	}
	return &c
}

// FuzzReadPEFTConfig: parsePEFTConfig never panics, fails with an
// "adapter: " error of kind ErrFormat or ErrUnsupported, and what it accepts
// is within bounds.
func FuzzReadPEFTConfig(f *testing.F) {
	f.Add([]byte(realPEFTConfig))
	f.Add([]byte(`{"peft_type":"LORA","target_modules":"all-linear"}`))
	f.Add([]byte(`{"peft_type":"LORA","r":8,"lora_alpha":16,"target_modules":["q_proj","lm_head"]}`))
	f.Add([]byte(`{"peft_type":"LORA","rank_pattern":{"x":1},"bias":"all"}`))
	f.Add([]byte(`{"peft_type":"LORA","r":1e3}`))
	f.Add([]byte(`[`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := parsePEFTConfig(data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "adapter: ") || !(errors.Is(err, ErrFormat) || errors.Is(err, ErrUnsupported)) {
				t.Fatalf("bad error: %v", err)
			}
			return
		}
		if c.rank < 1 || c.rank > maxRank || !(c.alpha > 0) || !(c.dropout >= 0 && c.dropout < 1) {
			t.Fatalf("accepted out-of-range values: %+v", c)
		}
		for _, k := range c.targets {
			if k < 0 || k >= len(modules) {
				t.Fatalf("target %d", k)
			}
		}
	})
}
