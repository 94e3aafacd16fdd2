package main

import (
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/clipd/clipd/api"
)

func cmdMount(e *env, args []string) error {
	flags := newFlags(e, "mount", "mount ARCHIVE|REF MOUNTPOINT [--prefetch] [--setuid] [--writable] [--bundle DIR] [--platform P]")
	writable := flags.Bool("writable", false, "an overlay over the image's shared read-only mount, with its own upper directory")
	platform := flags.String("platform", "", "platform of an image reference (default: the daemon's)")
	prefetch := flags.Bool("prefetch", false, "ask the daemon to fetch the image in the background")
	setuid := flags.Bool("setuid", false, "honour setuid/setgid bits (for a runtime's containers; refused under a\nmount root other users can traverse)")
	bundleDir := flags.String("bundle", "", "write an OCI runtime bundle (config.json for the image's config, root.path\n= MOUNTPOINT) in DIR, under a mount root: runc run --bundle DIR ID")
	pos, err := parse(flags, args, 2, 2)
	if err != nil {
		return err
	}
	if *bundleDir != "" {
		if *bundleDir, err = filepath.Abs(*bundleDir); err != nil {
			return err
		}
	}
	if isImageRef(pos[0]) {
		mp, err := filepath.Abs(pos[1])
		if err != nil {
			return err
		}
		c, err := e.global.client()
		if err != nil {
			return err
		}
		return daemonErr(mountImage(e, c, pos[0], mp, *platform, api.CreateMount{Prefetch: *prefetch, Setuid: *setuid,
			Writable: *writable, Bundle: *bundleDir}))
	}
	// The daemon runs elsewhere: relative paths mean nothing to it.
	archive, err := filepath.Abs(pos[0])
	if err != nil {
		return err
	}
	mp, err := filepath.Abs(pos[1])
	if err != nil {
		return err
	}
	c, err := e.global.client()
	if err != nil {
		return err
	}
	mi, err := c.Mount(e.ctx, api.CreateMount{Archive: archive, Mountpoint: mp, Prefetch: *prefetch, Setuid: *setuid,
		Bundle: *bundleDir, Writable: *writable})
	if err != nil {
		return daemonErr(err)
	}
	fmt.Fprintln(e.stdout, mi.ID)
	return nil
}

func cmdUmount(e *env, args []string) error {
	flags := newFlags(e, "umount", "umount MOUNTPOINT|ID [--force] [--keep-upper]")
	keepUpper := flags.Bool("keep-upper", false, "writable mounts: keep the upper directory (its path is printed)")
	force := flags.Bool("force", false, "detach lazily: the filesystem goes away once its last user leaves")
	pos, err := parse(flags, args, 1, 1)
	if err != nil {
		return err
	}
	c, err := e.global.client()
	if err != nil {
		return err
	}
	id, err := findMount(e, c, pos[0])
	if err != nil {
		return err
	}
	mi, err := c.UnmountWith(e.ctx, id, api.UnmountOptions{Force: *force, KeepUpper: *keepUpper})
	if err == nil && mi.Note != "" {
		fmt.Fprintln(e.stdout, mi.Note)
	}
	return daemonErr(err)
}

// findMount resolves a mount id or a mountpoint (relative, or through
// symlinks: the daemon reports resolved paths) to a mount id.
func findMount(e *env, c *api.Client, arg string) (string, error) {
	list, err := c.List(e.ctx)
	if err != nil {
		return "", daemonErr(err)
	}
	for _, m := range list {
		if m.ID == arg {
			return m.ID, nil
		}
	}
	abs, err := filepath.Abs(arg)
	if err != nil {
		return "", err
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		// A dead FUSE mount cannot be resolved; its path still matches.
		real = abs
	}
	for _, m := range list {
		if m.Mountpoint == abs || m.Mountpoint == real {
			return m.ID, nil
		}
	}
	return "", &exitError{code: exitNotFound, err: errors.New("no mount with id or mountpoint " + arg)}
}

func cmdLs(e *env, args []string) error {
	flags := newFlags(e, "ls", "ls [--json]")
	asJSON := flags.Bool("json", false, "print the daemon's answer as JSON")
	if _, err := parse(flags, args, 0, 0); err != nil {
		return err
	}
	c, err := e.global.client()
	if err != nil {
		return err
	}
	list, err := c.List(e.ctx)
	if err != nil {
		return daemonErr(err)
	}
	if *asJSON {
		return printJSON(e, list)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	// STATE, PID and VERSION say which process (and binary) serves each
	// mount: after an upgrade, old mounts keep their old serving process.
	fmt.Fprintln(tw, "ID\tMOUNTPOINT\tARCHIVE\tSTATE\tPID\tVERSION\tREADS\tFETCHED\tERRORS\tLAST ERROR")
	for _, m := range list {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%d\t%s\t%d\t%s\n", cell(m.ID), cell(m.Mountpoint), cell(m.Archive), cell(m.State),
			m.PID, cell(m.Version), m.Stats.Reads, humanBytes(m.Stats.BytesFetched), m.Stats.ReadErrors, lastError(m.Stats, time.Now()))
	}
	return tw.Flush()
}

// cell is s as one table cell: quoted Go-style when it holds anything that
// would break the table or hide in a terminal (newlines, tabs, spaces,
// control characters, invalid UTF-8), or starts with a quote (so that a
// quoted cell always means an escaped one). Paths are chosen by API
// clients, so they can hold anything.
func cell(s string) string {
	if strings.HasPrefix(s, `"`) || !utf8.ValidString(s) || strings.IndexFunc(s, func(r rune) bool {
		return r == ' ' || !unicode.IsPrint(r)
	}) >= 0 {
		return strconv.Quote(s)
	}
	return s
}
