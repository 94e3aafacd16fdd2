package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/clipd/clipd/fetcher"
	"github.com/clipd/clipd/index"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// publisher publishes an index beside its image (clipd index --push/--to).
type publisher struct {
	repo    name.Repository
	ref     string
	subject v1.Descriptor
	size    int64 // compressed bytes of the image's layers
	opts    fetcher.Options
}

// preparePublish copies the image to --to when asked, and points src (the
// Source recorded in the index) at the repository the index is published
// in: a layout-built index must fetch from the registry copy.
func preparePublish(e *env, img v1.Image, src *index.Source, source string, push bool, to string, opts fetcher.Options) (*publisher, error) {
	if !push && to == "" {
		return nil, nil
	}
	target := to
	if target == "" {
		if strings.HasPrefix(source, fetcher.LayoutPrefix) {
			return nil, errors.New("index: --push publishes beside a registry image; for an OCI layout, name the registry copy with --to HOST/REPO:TAG")
		}
		target = source
	}
	ref, err := fetcher.ParseReference(target, opts.Insecure)
	if err != nil {
		return nil, fmt.Errorf("index: %s: %w", target, err)
	}
	subject, err := fetcher.SubjectOf(img)
	if err != nil {
		return nil, fmt.Errorf("index %s: %w", source, err)
	}
	if to != "" {
		if err := fetcher.CopyImage(e.ctx, img, ref, opts); err != nil {
			return nil, err
		}
		fmt.Fprintf(e.stderr, "copied %s to %s (manifest %s)\n", source, to, subject.Digest)
		*src = index.Source{Registry: ref.Context().RegistryStr(), Repository: ref.Context().RepositoryStr(),
			Reference: ref.Identifier(), Manifest: subject.Digest.String()}
	}
	var size int64
	layers, err := img.Layers()
	if err != nil {
		return nil, fmt.Errorf("index %s: layers: %w", source, err)
	}
	for _, l := range layers {
		n, err := l.Size()
		if err != nil {
			return nil, fmt.Errorf("index %s: layer size: %w", source, err)
		}
		size += n
	}
	return &publisher{repo: ref.Context(), ref: target, subject: subject, size: size, opts: opts}, nil
}

// publish encodes a as clipd writes it and publishes it.
func (p *publisher) publish(e *env, a *index.Archive, span int64) error {
	dir, err := os.MkdirTemp("", "clipd-index-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	// The windows go in a layer of their own, read by range with the spans
	// that need them, so that what a node fetches before its first read is
	// the tree and the offsets alone.
	tmp := filepath.Join(dir, "index.clip")
	written, err := index.WriteFileWith(tmp, a, index.WriteOptions{Windows: index.WindowsSeparate})
	if err != nil {
		return err
	}
	b, err := os.ReadFile(tmp)
	if err != nil {
		return err
	}
	var windows []byte
	if written.WindowsPath != "" {
		if windows, err = os.ReadFile(written.WindowsPath); err != nil {
			return err
		}
	}
	h, upfront, err := fetcher.PublishIndex(e.ctx, p.repo, p.subject, b, windows,
		fetcher.IndexAnnotations(a.Extension, p.subject.Digest.String(), span), p.opts)
	if err != nil {
		return err
	}
	share := 0.0
	if p.size > 0 {
		share = 100 * float64(upfront) / float64(p.size)
	}
	fmt.Fprintf(e.stdout, "published index %s@%s: %s fetched up front, %.2f%% of the image's %s of compressed layers (windows: %s, read by range); attached to %s\n",
		p.repo, h, humanBytes(upfront), share, humanBytes(p.size), humanBytes(int64(len(windows))), p.subject.Digest)
	return nil
}
