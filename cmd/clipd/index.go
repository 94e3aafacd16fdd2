package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
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
	windowsFlag := flags.String("windows", index.WindowsSeparate, "where the checkpoint windows go: separate (OUT.clip.windows, fetched lazily\nwith the spans that need them) or inline (inside OUT.clip)")
	platformFlag := flags.String("platform", fetcher.DefaultPlatform().String(), "platform to pick from a multi-platform image (OS/ARCH[/VARIANT])")
	pos, err := parse(flags, args, 1, 1)
	if err != nil {
		return err
	}
	// Everything that can fail is checked before the download, which can
	// take minutes: the command line, the config, the source's syntax, the
	// output directory and, while resolving, the platform.
	if *out == "" && !*push && *to == "" {
		return usageErrorf("index: -o OUT.clip is required (or --push, --to)")
	}
	span, err := daemon.ParseSize(*spanFlag)
	if err != nil {
		return usageErrorf("--span-size: %v", err)
	}
	if span < index.MinSpanSize || span > index.MaxSpanSize {
		return usageErrorf("--span-size %s: must be between %s and %s", *spanFlag, daemon.Size(index.MinSpanSize), daemon.Size(index.MaxSpanSize))
	}
	platform, err := v1.ParsePlatform(*platformFlag)
	if err != nil {
		return usageErrorf("--platform %q: %v", *platformFlag, err)
	}
	cfg, err := e.global.loadConfig()
	if err != nil {
		return err
	}
	source := pos[0]
	if !strings.HasPrefix(source, fetcher.LayoutPrefix) {
		if _, err := fetcher.ParseReference(source, cfg.Registry.Insecure); err != nil {
			return usageErrorf("index: source %q: %v (want HOST/REPO:TAG, HOST/REPO@sha256:... or oci-layout:DIR[:TAG])", source, err)
		}
	}
	if *out != "" {
		tmp, err := createOutput(*out)
		if err != nil {
			return err
		}
		// The probe only proves, before any download, that the output can
		// be written; WriteFileWith writes the index (and its windows)
		// atomically.
		os.Remove(tmp)
	}

	start := time.Now()
	fopts := fetcher.Options{Insecure: cfg.Registry.Insecure}
	if fopts.Hosts, err = fetcher.LoadHostsDir(cfg.Registry.ConfigPath); err != nil {
		return fmt.Errorf("registry.config_path: %w", err)
	}
	img, src, err := fetcher.ResolveImage(e.ctx, source, platform, fopts)
	if err != nil {
		return fmt.Errorf("resolve %s: %w", source, err)
	}
	pub, err := preparePublish(e, img, &src, source, *push, *to, fopts)
	if err != nil {
		return err
	}
	prog := newByteProgress(e.stderr)
	a, err := index.Build(e.ctx, progressImage{Image: img, p: prog}, index.BuildOptions{Source: src, SpanSize: int64(span), Progress: func(p index.Progress) {
		if p.Done {
			prog.println(fmt.Sprintf("layer %d/%d %s: %d entries", p.Layer, p.Layers, shortDigest(p.Digest), p.Entries))
			return
		}
		prog.println(fmt.Sprintf("layer %d/%d %s: indexing", p.Layer, p.Layers, shortDigest(p.Digest)))
		prog.start(p.Layer, p.Layers, p.Digest, layerSize(img, p.Layer-1))
	}})
	if err != nil {
		return fmt.Errorf("index %s: %w", source, err)
	}
	var written *index.Written
	if *out != "" {
		if written, err = index.WriteFileWith(*out, a, index.WriteOptions{Windows: *windowsFlag}); err != nil {
			return err
		}
	}
	if pub != nil {
		if err := pub.publish(e, a, int64(span)); err != nil {
			return err
		}
	}
	if written != nil && written.Windows != nil {
		fmt.Fprintf(e.stdout, "wrote %s: %s of checkpoint windows, %s\n", written.WindowsPath, humanBytes(written.Windows.Size), written.Windows.Digest)
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

// createOutput creates, before any download, a temporary file beside out:
// it fails now when the directory is missing or not writable, or when out
// is a directory.
func createOutput(out string) (string, error) {
	if fi, err := os.Stat(out); err == nil && fi.IsDir() {
		return "", fmt.Errorf("index: -o %s is a directory", out)
	}
	f, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".*.tmp")
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return "", fmt.Errorf("index: cannot write %s: %w", out, err)
	}
	name := f.Name()
	if err := f.Close(); err != nil {
		os.Remove(name)
		return "", fmt.Errorf("index: cannot write %s: %w", out, err)
	}
	return name, nil
}

// layerSize is the compressed size of layer i, 0 when unknown.
func layerSize(img v1.Image, i int) int64 {
	ls, err := img.Layers()
	if err != nil || i < 0 || i >= len(ls) {
		return 0
	}
	n, _ := ls[i].Size()
	return n
}

func shortDigest(d string) string {
	if len(d) > 19 {
		return d[:19]
	}
	return d
}
