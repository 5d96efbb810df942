package budget

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// ParseSize reads a memory size: plain bytes ("1073741824"), or a number with
// a unit: KiB, MiB, GiB, TiB (powers of 1024), KB, MB, GB, TB (powers of
// 1000), K/M/G/T taken as binary. Case and a space before the unit are
// ignored: "512MiB", "2GB", "1.5GiB", "768 mib".
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	if t == "" {
		return 0, fmt.Errorf("budget: empty size")
	}
	i := len(t)
	for i > 0 && (t[i-1] < '0' || t[i-1] > '9') && t[i-1] != '.' {
		i--
	}
	num, unit := strings.TrimSpace(t[:i]), strings.ToLower(strings.TrimSpace(t[i:]))
	mult := map[string]float64{"": 1, "b": 1,
		"k": 1 << 10, "kib": 1 << 10, "kb": 1e3, "m": 1 << 20, "mib": 1 << 20, "mb": 1e6,
		"g": 1 << 30, "gib": 1 << 30, "gb": 1e9, "t": 1 << 40, "tib": 1 << 40, "tb": 1e12}[unit]
	if mult == 0 {
		return 0, fmt.Errorf("budget: size %q: unknown unit %q (use KiB, MiB, GiB, KB, MB, GB or bytes)", s, t[i:])
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || v < 0 || math.IsInf(v, 0) || math.IsNaN(v) {
		return 0, fmt.Errorf("budget: size %q is not a non-negative number", s)
	}
	b := v * mult
	if b > math.MaxInt64/2 {
		return 0, fmt.Errorf("budget: size %q is too large", s)
	}
	if b < 1 {
		return 0, fmt.Errorf("budget: size %q is zero", s)
	}
	return int64(b), nil
}

// FormatSize renders bytes in binary units ("1.50 GiB").
func FormatSize(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
