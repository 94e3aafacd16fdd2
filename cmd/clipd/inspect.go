package main

import (
	"fmt"

	"github.com/clipd/clipd/index"
)

func cmdInspect(e *env, args []string) error {
	flags := newFlags(e, "inspect", "inspect ARCHIVE")
	pos, err := parse(flags, args, 1, 1)
	if err != nil {
		return err
	}
	a, err := index.Open(pos[0])
	if err != nil {
		return err
	}
	if err := index.Describe(e.stdout, a); err != nil {
		return err
	}
	return describeImageConfig(e.stdout, a.Image)
}

func cmdVersion(e *env, args []string) error {
	flags := newFlags(e, "version", "version")
	if _, err := parse(flags, args, 0, 0); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "clipd %s\n", clipdVersion())
	return nil
}

// humanBytes prints n with an IEC unit, the way ls -h does.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
