package model

import (
	"math"
	"testing"
)

func TestLlama3Factors(t *testing.T) {
	c := Config{RopeDims: 64, RopeTheta: 500000}
	f := llama3Factors(c, map[string]any{"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192.0})
	if f[0] != 1 || f[31] != 8 {
		t.Fatalf("ends: %v %v", f[0], f[31])
	}
	for j := range f {
		wave := 2 * math.Pi * math.Pow(500000, float64(2*j)/64)
		if wave > 2048 && wave < 8192 {
			if !(f[j] > 1 && f[j] < 8) {
				t.Fatalf("band j=%d (wavelength %.0f): factor %v", j, wave, f[j])
			}
		}
		if j > 0 && f[j] < f[j-1] {
			t.Fatalf("factors not monotone at %d: %v", j, f)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	good := Config{Dim: 64, Hidden: 172, Layers: 5, Heads: 8, KVHeads: 4, HeadDim: 8, Vocab: 512, Context: 512, Eps: 1e-5, RopeTheta: 10000, RopeDims: 8}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, mut := range []func(*Config){
		func(c *Config) { c.Dim = 0 },
		func(c *Config) { c.Heads = 6 },
		func(c *Config) { c.Vocab = 1 << 30 },
		func(c *Config) { c.RopeDims = 9 },
		func(c *Config) { c.Eps = float32(math.NaN()) },
		func(c *Config) { c.Layers = 1 << 20 },
	} {
		c := good
		mut(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("invalid config accepted: %+v", c)
		}
	}
}
