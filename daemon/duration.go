package daemon

import (
	"fmt"
	"time"
)

// Duration is a config value written as a Go duration string ("30s",
// "1m30s").
type Duration time.Duration

// UnmarshalText parses a duration string.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("%q is not a duration (like \"30s\")", b)
	}
	*d = Duration(v)
	return nil
}

// MarshalText writes the duration string.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

func (d Duration) String() string { return time.Duration(d).String() }

// Std is d as a time.Duration.
func (d Duration) Std() time.Duration { return time.Duration(d) }
