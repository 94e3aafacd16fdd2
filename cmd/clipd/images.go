package main

import (
	"fmt"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/clipd/clipd/api"
)

// isImageRef tells an image reference from an archive path in clipd mount:
// a path that exists, starts like a path or ends in .clip is an archive;
// otherwise a name whose first component is a registry host
// (HOST.DOMAIN, HOST:PORT or localhost) is a reference.
func isImageRef(arg string) bool {
	if _, err := os.Stat(arg); err == nil {
		return false
	}
	if strings.HasPrefix(arg, "/") || strings.HasPrefix(arg, ".") || strings.HasSuffix(arg, ".clip") {
		return false
	}
	host, _, ok := strings.Cut(arg, "/")
	return ok && (strings.ContainsAny(host, ".:") || host == "localhost")
}

// mountImage asks the daemon to mount an image by reference.
func mountImage(e *env, c *api.Client, ref, mp, platform string, req api.CreateMount) error {
	req.Image, req.Platform, req.Mountpoint = ref, platform, mp
	mi, err := c.Mount(e.ctx, req)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stderr, "mounted %s (manifest %s, index from the %s)\n", ref, mi.ManifestDigest, indexSourceWords(mi.IndexSource))
	fmt.Fprintln(e.stdout, mi.ID)
	return nil
}

func indexSourceWords(s string) string {
	switch s {
	case "built":
		return "image's layers, built by streaming them"
	case "":
		return "daemon"
	}
	return s
}

func cmdPull(e *env, args []string) error {
	flags := newFlags(e, "pull", "pull REF [--platform linux/amd64]\n\n"+
		"Stages the index of image REF in the daemon's index store (store, then the registry's\n"+
		"index artifact, then a build by streaming when index.build_missing), without mounting it.")
	platform := flags.String("platform", "", "platform to pick from a multi-platform image (default: the daemon's)")
	pos, err := parse(flags, args, 1, 1)
	if err != nil {
		return err
	}
	c, err := e.global.client()
	if err != nil {
		return err
	}
	var si api.StoredIndex
	if err := c.Do(e.ctx, http.MethodPost, "/v1/images", api.PullImage{Image: pos[0], Platform: *platform}, &si); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "%s %s: index %s from the %s\n", pos[0], si.ManifestDigest, humanBytes(si.Size), indexSourceWords(si.IndexSource))
	return nil
}

func cmdImages(e *env, args []string) error {
	flags := newFlags(e, "images", "images [--json] | images prune\n\n"+
		"Lists the daemon's index store (indexes of images mounted or pulled by reference), or removes\n"+
		"every index no mount uses.")
	asJSON := flags.Bool("json", false, "print JSON")
	pos, err := parse(flags, args, 0, 1)
	if err != nil {
		return err
	}
	c, err := e.global.client()
	if err != nil {
		return err
	}
	var list []api.StoredIndex
	switch {
	case len(pos) == 1 && pos[0] == "prune":
		if err := c.Do(e.ctx, http.MethodPost, "/v1/images/prune", nil, &list); err != nil {
			return err
		}
		var n int64
		for _, si := range list {
			n += si.Size
		}
		fmt.Fprintf(e.stdout, "removed %d indexes, %s\n", len(list), humanBytes(n))
		return nil
	case len(pos) == 1:
		return fmt.Errorf("images: unknown subcommand %q (only prune)", pos[0])
	}
	if err := c.Do(e.ctx, http.MethodGet, "/v1/images", nil, &list); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(e, list)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "IMAGE\tMANIFEST\tSIZE\tSOURCE\tMOUNTS")
	for _, si := range list {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\n", quoteField(si.Image), shortDigest(si.ManifestDigest), humanBytes(si.Size), si.IndexSource, len(si.Mounts))
	}
	return tw.Flush()
}

// quoteField keeps a stored name (from a registry reference) on one line.
func quoteField(s string) string {
	if strings.ContainsAny(s, "\t\n\r ") {
		return fmt.Sprintf("%q", s)
	}
	return s
}
