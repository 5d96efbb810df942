package quant

import (
	"encoding/binary"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/qtune/qtune/internal/shared"
)

// miniGGUF is a deliberately minimal GGUF v3 reader for this test only (the
// real, hardened reader is format/gguf): it skips every metadata value except
// general.alignment and returns each tensor's type, element count and bytes.
type miniTensor struct {
	typ  Type
	n    int64
	data []byte
}

func readMiniGGUF(raw []byte) (map[string]miniTensor, []string, error) {
	pos := 0
	need := func(k int) error {
		if k < 0 || pos+k > len(raw) {
			return fmt.Errorf("truncated at %d", pos)
		}
		return nil
	}
	u32 := func() (uint32, error) {
		if err := need(4); err != nil {
			return 0, err
		}
		v := binary.LittleEndian.Uint32(raw[pos:])
		pos += 4
		return v, nil
	}
	u64 := func() (uint64, error) {
		if err := need(8); err != nil {
			return 0, err
		}
		v := binary.LittleEndian.Uint64(raw[pos:])
		pos += 8
		return v, nil
	}
	str := func() (string, error) {
		l, err := u64()
		if err != nil || l > 1<<24 {
			return "", fmt.Errorf("bad string at %d", pos)
		}
		if err := need(int(l)); err != nil {
			return "", err
		}
		s := string(raw[pos : pos+int(l)])
		pos += int(l)
		return s, nil
	}
	fixed := map[uint32]int{0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
	var skip func(vt uint32) error
	skip = func(vt uint32) error {
		if sz, ok := fixed[vt]; ok {
			if err := need(sz); err != nil {
				return err
			}
			pos += sz
			return nil
		}
		switch vt {
		case 8:
			_, err := str()
			return err
		case 9:
			et, err := u32()
			if err != nil {
				return err
			}
			cnt, err := u64()
			if err != nil || cnt > 1<<26 {
				return fmt.Errorf("bad array")
			}
			for i := uint64(0); i < cnt; i++ {
				if err := skip(et); err != nil {
					return err
				}
			}
			return nil
		}
		return fmt.Errorf("unknown value type %d", vt)
	}

	if magic, err := u32(); err != nil || magic != 0x46554747 {
		return nil, nil, fmt.Errorf("not GGUF")
	}
	if v, err := u32(); err != nil || v != 3 {
		return nil, nil, fmt.Errorf("version %d, want 3", v)
	}
	nt, _ := u64()
	nkv, err := u64()
	if err != nil {
		return nil, nil, err
	}
	align := uint64(32)
	for i := uint64(0); i < nkv; i++ {
		key, err := str()
		if err != nil {
			return nil, nil, err
		}
		vt, err := u32()
		if err != nil {
			return nil, nil, err
		}
		if key == "general.alignment" && vt == 4 {
			a, _ := u32()
			align = uint64(a)
			continue
		}
		if err := skip(vt); err != nil {
			return nil, nil, err
		}
	}
	type info struct {
		name string
		typ  Type
		n    int64
		off  uint64
	}
	infos := make([]info, 0, nt)
	for i := uint64(0); i < nt; i++ {
		name, err := str()
		if err != nil {
			return nil, nil, err
		}
		nd, _ := u32()
		if nd > 4 {
			return nil, nil, fmt.Errorf("%s: %d dims", name, nd)
		}
		n := int64(1)
		for d := uint32(0); d < nd; d++ {
			ne, _ := u64()
			n *= int64(ne)
		}
		ty, _ := u32()
		off, err := u64()
		if err != nil {
			return nil, nil, err
		}
		infos = append(infos, info{name, Type(ty), n, off})
	}
	start := (uint64(pos) + align - 1) / align * align
	out := make(map[string]miniTensor, len(infos))
	var names []string
	for _, in := range infos {
		size, err := Bytes(in.typ, in.n)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", in.name, err)
		}
		lo := start + in.off
		if lo > uint64(len(raw)) || uint64(size) > uint64(len(raw))-lo {
			return nil, nil, fmt.Errorf("%s: data past end of file", in.name)
		}
		out[in.name] = miniTensor{in.typ, in.n, raw[lo : lo+uint64(size)]}
		names = append(names, in.name)
	}
	return out, names, nil
}

// TestSyntheticKQuantsGGUF checks every w.T / w.T.deq pair of the synthetic
// GGUF bit for bit, and that quantizing w.T.f32 reproduces w.T.
func TestSyntheticKQuantsGGUF(t *testing.T) {
	raw, err := os.ReadFile(shared.Path(t, "golden", "gguf", "synthetic-kquants.gguf"))
	if err != nil {
		t.Fatal(err)
	}
	ts, names, err := readMiniGGUF(raw)
	if err != nil {
		t.Fatal(err)
	}
	pairs := 0
	for _, name := range names {
		if strings.Count(name, ".") != 1 {
			continue // w.T.f32, w.T.deq
		}
		w := ts[name]
		deq, ok := ts[name+".deq"]
		if !ok || deq.typ != F32 || deq.n != w.n {
			t.Fatalf("%s: no matching F32 %s.deq", name, name)
		}
		pairs++
		t.Run(name, func(t *testing.T) {
			want := bytesToF32(deq.data)
			got := make([]float32, w.n)
			if err := Dequantize(w.typ, got, w.data); err != nil {
				t.Fatal(err)
			}
			if i := firstBitDiff(got, want); i >= 0 {
				t.Fatalf("%s element %d: got %#08x, ggml %#08x", w.typ, i, got[i], want[i])
			}
			if in, ok := ts[name+".f32"]; ok && CanQuantize(w.typ) {
				checkQuantize(t, w.typ, bytesToF32(in.data), w.data, want)
			}
		})
	}
	if pairs != 13 {
		t.Errorf("found %d w.T/w.T.deq pairs, the README lists 13", pairs)
	}
}
