package daemon

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Size is a byte count written in the config as "20GiB", "512MiB", "4096" or
// "4096B".
type Size int64

// Binary size units accepted by ParseSize.
const (
	B   Size = 1
	KiB      = 1024 * B
	MiB      = 1024 * KiB
	GiB      = 1024 * MiB
	TiB      = 1024 * GiB
)

var sizeUnits = []struct {
	suffix string
	mult   Size
}{
	// Longest suffixes first so that "KiB" is not read as "B".
	{"TiB", TiB}, {"GiB", GiB}, {"MiB", MiB}, {"KiB", KiB}, {"B", B},
}

// ParseSize parses a non-negative integer with an optional binary unit
// (B, KiB, MiB, GiB, TiB).
func ParseSize(s string) (Size, error) {
	t := strings.TrimSpace(s)
	mult := B
	for _, u := range sizeUnits {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("invalid size %q (want a whole number with B, KiB, MiB, GiB or TiB)", s)
	}
	if n > math.MaxInt64/int64(mult) {
		return 0, fmt.Errorf("invalid size %q: too large", s)
	}
	return Size(n) * mult, nil
}

// String formats s with the largest unit that divides it exactly.
func (s Size) String() string {
	for _, u := range sizeUnits {
		if s != 0 && s%u.mult == 0 {
			return strconv.FormatInt(int64(s/u.mult), 10) + u.suffix
		}
	}
	return strconv.FormatInt(int64(s), 10) + "B"
}

// UnmarshalText lets the TOML decoder read sizes; the decoder adds the key
// to the error.
func (s *Size) UnmarshalText(b []byte) error {
	v, err := ParseSize(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// MarshalText is the inverse of UnmarshalText.
func (s Size) MarshalText() ([]byte, error) { return []byte(s.String()), nil }
