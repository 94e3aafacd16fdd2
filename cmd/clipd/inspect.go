package main

import (
	"context"
	"fmt"
	"time"

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
	return printVersions(e)
}

// printVersions prints the CLI's version and the daemon's: after an upgrade
// the two differ until the daemon restarts. A daemon that does not answer
// is reported, not an error: the CLI's version was still printed.
func printVersions(e *env) error {
	fmt.Fprintf(e.stdout, "clipd %s\n", clipdVersion())
	c, err := e.global.client()
	if err != nil {
		fmt.Fprintf(e.stdout, "daemon: unknown (%v)\n", err)
		return nil
	}
	ctx, cancel := context.WithTimeout(e.ctx, versionTimeout)
	defer cancel()
	h, err := c.Health(ctx)
	if err != nil {
		fmt.Fprintf(e.stdout, "daemon: unreachable (%v)\n", err)
		return nil
	}
	fmt.Fprintf(e.stdout, "daemon: %s (%s)\n", h.Version, c.Socket())
	return nil
}

// versionTimeout bounds the health call of `clipd version`: a hung daemon
// must not hang the CLI.
const versionTimeout = 3 * time.Second

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
