package index

import (
	"archive/tar"
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/clipd/clipd/internal/countio"
	"github.com/clipd/clipd/zran"
)

// BuildOptions tune Build.
type BuildOptions struct {
	// Source is recorded in the archive so that mounts know where to fetch.
	Source Source
	// Progress, when set, is called as each layer starts and ends.
	Progress func(p Progress)
	// SpanSize is the uncompressed distance between decompression
	// checkpoints; 0 means DefaultSpanSize.
	SpanSize int64
}

// DefaultSpanSize is the span size of decompression indexes: the unit of
// fetch, verification and caching. The cold-start sweep (bench/README.md,
// "Span size") chose 1 MiB: a cold python import moves 46% fewer bytes
// than with 4 MiB spans and is no slower; the index costs about 12 MiB per
// GiB of uncompressed layer (a zstd-compressed 32 KiB window per span).
const DefaultSpanSize = 1 << 20

// Span sizes outside these bounds are refused: smaller spans bloat the index
// (a 32 KiB window each), larger ones make a small read fetch a lot.
const (
	MinSpanSize = 256 << 10
	MaxSpanSize = 64 << 20
)

// Progress reports indexing of one layer.
type Progress struct {
	Layer, Layers int    // 1-based layer number and total
	Digest        string // layer digest
	Done          bool   // false when the layer starts, true when it is indexed
	Entries       int    // tar entries seen in this layer (when Done)
}

// Build indexes img: it streams each layer once, applies the layers in order
// with OCI semantics and returns the merged tree.
func Build(ctx context.Context, img v1.Image, opts BuildOptions) (*Archive, error) {
	layers, err := img.Layers()
	if err != nil {
		return nil, fmt.Errorf("build index: list layers: %w", err)
	}
	if opts.SpanSize == 0 {
		opts.SpanSize = DefaultSpanSize
	}
	if opts.SpanSize < MinSpanSize || opts.SpanSize > MaxSpanSize {
		return nil, fmt.Errorf("build index: span size %d outside %d-%d", opts.SpanSize, MinSpanSize, MaxSpanSize)
	}
	a := &Archive{Format: 2, Source: opts.Source, Extension: 1}
	t := newTree()
	for i, l := range layers {
		info, err := describeLayer(l)
		if err != nil {
			return nil, fmt.Errorf("build index: layer %d: %w", i+1, err)
		}
		if opts.Progress != nil {
			opts.Progress(Progress{Layer: i + 1, Layers: len(layers), Digest: info.Digest})
		}
		n, err := indexLayer(ctx, l, i, &info, t, opts.SpanSize)
		if err != nil {
			return nil, fmt.Errorf("build index: layer %d (%s): %w", i+1, info.Digest, err)
		}
		slog.Debug("indexed layer", "layer", i+1, "digest", info.Digest, "compression", info.Compression, "entries", n)
		a.Layers = append(a.Layers, info)
		if opts.Progress != nil {
			opts.Progress(Progress{Layer: i + 1, Layers: len(layers), Digest: info.Digest, Done: true, Entries: n})
		}
	}
	a.Nodes = t.nodes()
	if a.Image, err = imageInfo(img); err != nil {
		return nil, fmt.Errorf("build index: %w", err)
	}
	return a, nil
}

func describeLayer(l v1.Layer) (Layer, error) {
	d, err := l.Digest()
	if err != nil {
		return Layer{}, fmt.Errorf("digest: %w", err)
	}
	mt, err := l.MediaType()
	if err != nil {
		return Layer{}, fmt.Errorf("media type of %s: %w", d, err)
	}
	size, err := l.Size()
	if err != nil {
		return Layer{}, fmt.Errorf("size of %s: %w", d, err)
	}
	return Layer{Digest: d.String(), MediaType: string(mt), Size: size}, nil
}

// indexLayer streams layer l once, fills in its compression, DiffID and
// decompression index and applies its entries to t. It returns the number of
// tar entries.
func indexLayer(ctx context.Context, l v1.Layer, idx int, info *Layer, t *tree, spanSize int64) (int, error) {
	rc, err := l.Compressed()
	if err != nil {
		return 0, fmt.Errorf("open blob: %w", err)
	}
	defer rc.Close()
	zr, err := zran.NewIndexReader(&ctxReader{ctx: ctx, r: rc}, spanSize)
	if err != nil {
		return 0, err
	}
	defer zr.Close()
	info.Compression = zr.Compression()

	// The hash sits below the buffer so it sees big reads; the counter sits
	// above it, between the buffer and tar.Reader, which reads exact 512-byte
	// blocks: after Next the count is the offset of the entry's data.
	h := sha256.New()
	br := bufio.NewReaderSize(io.TeeReader(zr, h), 1<<20)
	cr := countio.NewReader(br)
	tr := tar.NewReader(cr)
	n := 0
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return n, fmt.Errorf("read tar entry %d: %w", n+1, err)
		}
		n++
		if hdr.Typeflag == tar.TypeXGlobalHeader {
			continue // PAX global headers carry no file
		}
		if err := t.apply(hdr, idx, cr.Count()); err != nil {
			return n, fmt.Errorf("%s: %w", cleanPath(hdr.Name), err)
		}
	}
	// The DiffID covers the whole stream, including the end-of-archive
	// blocks and any padding after them.
	if _, err := io.Copy(io.Discard, br); err != nil {
		return n, fmt.Errorf("read layer tail: %w", err)
	}
	info.DiffID = "sha256:" + hex.EncodeToString(h.Sum(nil))
	li, err := zr.Index()
	if err != nil {
		return n, err
	}
	if info.Spans, err = NewSpanIndex(li); err != nil {
		return n, fmt.Errorf("decompression index: %w", err)
	}
	return n, nil
}

func imageInfo(img v1.Image) (*ImageInfo, error) {
	d, err := img.Digest()
	if err != nil {
		return nil, fmt.Errorf("image digest: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("image config %s: %w", d, err)
	}
	return &ImageInfo{
		Digest:       d.String(),
		Architecture: cf.Architecture,
		OS:           cf.OS,
		Env:          cf.Config.Env,
		Cmd:          cf.Config.Cmd,
		Entrypoint:   cf.Config.Entrypoint,
		WorkingDir:   cf.Config.WorkingDir,
		User:         cf.Config.User,
	}, nil
}

// ctxReader stops a blob stream once ctx is done, so a cancelled index build
// stops within one read.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
