package main

import (
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/clipd/clipd/daemon"
	"github.com/clipd/clipd/fetcher"
	"github.com/clipd/clipd/index"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

func cmdIndex(e *env, args []string) error {
	flags := newFlags(e, "index", "index SOURCE [-o OUT.clip] [--push] [--to REF] [--span-size 1MiB] [--platform linux/amd64]\n\n"+
		"SOURCE is a registry reference (HOST/REPO:TAG or HOST/REPO@sha256:...) or oci-layout:DIR[:TAG].\n"+
		"Registries listed in registry.insecure of the config are spoken to over plain HTTP.")
	out := flags.String("o", "", "the .clip file to write (required unless --push or --to)")
	push := flags.Bool("push", false, "publish the index in the image's repository, attached to the platform manifest")
	to := flags.String("to", "", "copy the image to this reference first (only missing blobs, same manifest digest),\nindex it from the source's bytes and publish the index there (implies --push)")
	spanFlag := flags.String("span-size", "1MiB", "uncompressed bytes between decompression checkpoints (the unit of fetch,\nverification and caching), 256KiB to 64MiB")
	platformFlag := flags.String("platform", fetcher.DefaultPlatform().String(), "platform to pick from a multi-platform image (OS/ARCH[/VARIANT])")
	pos, err := parse(flags, args, 1, 1)
	if err != nil {
		return err
	}
	if *out == "" && !*push && *to == "" {
		return errors.New("index: -o OUT.clip is required (or --push, --to)")
	}
	span, err := daemon.ParseSize(*spanFlag)
	if err != nil {
		return fmt.Errorf("--span-size: %w", err)
	}
	if span < index.MinSpanSize || span > index.MaxSpanSize {
		return fmt.Errorf("--span-size %s: must be between %s and %s", *spanFlag, daemon.Size(index.MinSpanSize), daemon.Size(index.MaxSpanSize))
	}
	platform, err := v1.ParsePlatform(*platformFlag)
	if err != nil {
		return fmt.Errorf("--platform %q: %w", *platformFlag, err)
	}
	cfg, err := e.global.loadConfig()
	if err != nil {
		return err
	}

	start := time.Now()
	fopts := fetcher.Options{Insecure: cfg.Registry.Insecure}
	img, src, err := fetcher.ResolveImage(e.ctx, pos[0], platform, fopts)
	if err != nil {
		return fmt.Errorf("resolve %s: %w", pos[0], err)
	}
	pub, err := preparePublish(e, img, &src, pos[0], *push, *to, fopts)
	if err != nil {
		return err
	}
	a, err := index.Build(e.ctx, img, index.BuildOptions{Source: src, SpanSize: int64(span), Progress: func(p index.Progress) {
		if p.Done {
			fmt.Fprintf(e.stderr, "layer %d/%d %s: %d entries\n", p.Layer, p.Layers, shortDigest(p.Digest), p.Entries)
		} else {
			fmt.Fprintf(e.stderr, "layer %d/%d %s: indexing\n", p.Layer, p.Layers, shortDigest(p.Digest))
		}
	}})
	if err != nil {
		return fmt.Errorf("index %s: %w", pos[0], err)
	}
	if *out != "" {
		if err := index.WriteFile(*out, a); err != nil {
			return err
		}
	}
	if pub != nil {
		if err := pub.publish(e, a, int64(span)); err != nil {
			return err
		}
	}
	var files int
	var layerBytes int64
	for _, n := range a.Nodes {
		if n.Attr.Mode&syscall.S_IFMT == syscall.S_IFREG {
			files++
		}
	}
	for _, l := range a.Layers {
		layerBytes += l.Size
	}
	what := *out
	if what == "" {
		what = "index"
	}
	fmt.Fprintf(e.stdout, "wrote %s: %d files, %d layers, %s of layers, %.1fs\n",
		what, files, len(a.Layers), humanBytes(layerBytes), time.Since(start).Seconds())
	return nil
}

func shortDigest(d string) string {
	if len(d) > 19 {
		return d[:19]
	}
	return d
}
