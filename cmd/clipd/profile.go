package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/clipd/clipd/api"
	"github.com/clipd/clipd/profile"
)

const profileHelp = `usage: clipd profile ls [--json] | show IMAGE|REF | rm IMAGE|REF | push REF [--platform P]

Prefetch profiles: per image, the spans that its mounts read in their first
prefetch.record_seconds, which later mounts of the image fetch at once
(README "Prefetch profiles"). They live in daemon.state_dir/profiles.

  ls      list the stored profiles (an unusable file is listed with why)
  show    print the profile of IMAGE (sha256:...), or of the image a mount
          serves (REF: an image reference, mount id or mountpoint of a mount)
  rm      remove a profile: the next mount of the image records afresh
  push    publish this node's profile of REF in the registry, attached to
          REF's platform manifest beside its index (README "Publishing
          prefetch profiles")
`

func cmdProfile(e *env, args []string) error {
	sub, rest := subcommand(args)
	switch sub {
	case "ls":
		return cmdProfileLs(e, rest)
	case "show":
		return cmdProfileShow(e, rest)
	case "rm":
		return cmdProfileRm(e, rest)
	case "push":
		return cmdProfilePush(e, rest)
	case "help":
		fmt.Fprint(e.stdout, profileHelp)
		return nil
	case "":
		if slices.ContainsFunc(rest, func(a string) bool { return a == "--help" || a == "-h" || a == "-help" }) {
			fmt.Fprint(e.stdout, profileHelp)
			return nil
		}
		return usageErrorf("profile: want a subcommand: ls, show, rm or push (see 'clipd profile --help')")
	}
	return usageErrorf("profile: unknown subcommand %q (want ls, show, rm or push)", sub)
}

// subcommand finds the subcommand in args, which global flags may precede
// (clipd profile --socket S ls), and returns it with the other arguments;
// "" when there is none.
func subcommand(args []string) (string, []string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			return "", args
		case strings.HasPrefix(a, "-"):
			name := strings.TrimLeft(a, "-")
			if (name == "socket" || name == "config") && i+1 < len(args) {
				i++ // its value
			}
		default:
			return a, append(slices.Clip(args[:i]), args[i+1:]...)
		}
	}
	return "", args
}

func cmdProfileLs(e *env, args []string) error {
	flags := newFlags(e, "profile ls", "profile ls [--json]")
	asJSON := flags.Bool("json", false, "print JSON")
	if _, err := parse(flags, args, 0, 0); err != nil {
		return err
	}
	c, err := e.global.client()
	if err != nil {
		return err
	}
	list, err := c.Profiles(e.ctx)
	if err != nil {
		return daemonErr(err)
	}
	if *asJSON {
		return printJSON(e, list)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "IMAGE\tLAYERS\tSPANS\tRECORDINGS\tUPDATED\tSIZE\tERROR")
	for _, p := range list {
		updated := "-"
		if !p.Updated.IsZero() {
			updated = p.Updated.Local().Format(time.DateTime)
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\t%s\t%s\n", p.Image, p.Layers, p.Spans, p.Recordings, updated, humanBytes(p.Size), cell(p.Error))
	}
	return tw.Flush()
}

func cmdProfileShow(e *env, args []string) error {
	flags := newFlags(e, "profile show", "profile show IMAGE|REF\n\n"+
		"Prints the profile as JSON: per layer, its digest, the geometry of the index it was recorded\n"+
		"against and its spans in the order mounts first read them (at_ms: mean time after the mount).")
	c, image, err := profileArg(e, flags, args)
	if err != nil {
		return err
	}
	raw, err := c.Profile(e.ctx, image)
	if err != nil {
		return daemonErr(err)
	}
	var out bytes.Buffer
	if err := json.Indent(&out, raw, "", "  "); err != nil {
		return fmt.Errorf("profile of %s: %w", image, err)
	}
	out.WriteByte('\n')
	_, err = e.stdout.Write(out.Bytes())
	return err
}

func cmdProfileRm(e *env, args []string) error {
	flags := newFlags(e, "profile rm", "profile rm IMAGE|REF")
	c, image, err := profileArg(e, flags, args)
	if err != nil {
		return err
	}
	if err := c.RemoveProfile(e.ctx, image); err != nil {
		return daemonErr(err)
	}
	fmt.Fprintf(e.stdout, "removed the prefetch profile of %s\n", image)
	return nil
}

// profileArg parses the one IMAGE|REF argument of a profile subcommand and
// returns a client and the profile key it names (profileKey).
func profileArg(e *env, flags *cmdFlags, args []string) (*api.Client, string, error) {
	pos, err := parse(flags, args, 1, 1)
	if err != nil {
		return nil, "", err
	}
	c, err := e.global.client()
	if err != nil {
		return nil, "", err
	}
	image, err := profileKey(e, c, pos[0])
	return c, image, err
}

// profileKey turns arg into a profile key: a digest as is; otherwise the
// manifest digest of the mount arg names (its image reference, id or
// mountpoint). A local .clip with no manifest digest is keyed by the
// file's digest, which only `clipd profile ls` shows.
func profileKey(e *env, c *api.Client, arg string) (string, error) {
	if profile.ValidImage(arg) {
		return arg, nil
	}
	list, err := c.List(e.ctx)
	if err != nil {
		return "", daemonErr(err)
	}
	for _, m := range list {
		if m.ImageRef != arg && m.ID != arg && m.Mountpoint != arg {
			continue
		}
		if d := m.ManifestDigest; profile.ValidImage(d) {
			return d, nil
		}
		if img, ok := m.Image.(map[string]any); ok {
			if d, _ := img["digest"].(string); profile.ValidImage(d) {
				return d, nil
			}
		}
		return "", fmt.Errorf("profile: mount %s serves no image with a manifest digest; name the profile by its digest (clipd profile ls)", m.ID)
	}
	return "", usageErrorf("profile: %q is neither a digest (sha256:...) nor the image reference, id or mountpoint of a mount", arg)
}
