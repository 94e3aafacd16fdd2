package fetcher

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/clipd/clipd/internal/countio"
)

// Blob is one stored blob, readable whole or by range.
type Blob interface {
	// Digest is the blob's digest, "sha256:...".
	Digest() string
	// Size returns the size of the blob, asking its source when the index
	// did not record it.
	Size(ctx context.Context) (int64, error)
	// Open streams the whole blob.
	Open(ctx context.Context) (io.ReadCloser, error)
	// ReadRange streams n bytes from off; fewer bytes is an error.
	ReadRange(ctx context.Context, off, n int64) (io.ReadCloser, error)
	Close() error
}

// fileBlob is a blob in a local file: a layout's blobs/<alg>/<hex>, or the
// file of a v1 archive.
type fileBlob struct {
	digest string
	f      *os.File
	size   int64
	stats  *counters
}

// openLayoutBlob opens DIR/blobs/<alg>/<hex> with open (nil: os.Open).
func openLayoutBlob(dir, digest string, open OpenFunc, stats *counters) (*fileBlob, error) {
	alg, hex, ok := strings.Cut(digest, ":")
	if !ok || alg == "" || hex == "" || strings.ContainsAny(digest, "/\\") || strings.Contains(digest, "..") {
		return nil, fmt.Errorf("open layer %s: malformed digest", digest)
	}
	return openFileBlobWith(filepath.Join(dir, "blobs", alg, hex), digest, open, stats)
}

func openFileBlob(path, digest string, stats *counters) (*fileBlob, error) {
	return openFileBlobWith(path, digest, nil, stats)
}

func openFileBlobWith(path, digest string, open OpenFunc, stats *counters) (*fileBlob, error) {
	if open == nil {
		open = os.Open
	}
	f, err := open(path)
	if err != nil {
		return nil, fmt.Errorf("open layer %s: %w", short(digest), err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open layer %s: %w", short(digest), err)
	}
	return &fileBlob{digest: digest, f: f, size: fi.Size(), stats: stats}, nil
}

func (b *fileBlob) Digest() string                      { return b.digest }
func (b *fileBlob) Size(context.Context) (int64, error) { return b.size, nil }
func (b *fileBlob) Close() error                        { return b.f.Close() }
func (b *fileBlob) Open(context.Context) (io.ReadCloser, error) {
	b.stats.requests.Add(1)
	return io.NopCloser(&countio.Reader{R: io.NewSectionReader(b.f, 0, b.size), N: &b.stats.bytesFetched}), nil
}

func (b *fileBlob) ReadRange(_ context.Context, off, n int64) (io.ReadCloser, error) {
	if off < 0 || n < 0 || off+n > b.size {
		return nil, fmt.Errorf("fetch layer %s: range %d-%d outside blob of %d bytes", short(b.digest), off, off+n-1, b.size)
	}
	b.stats.requests.Add(1)
	return io.NopCloser(&countio.Reader{R: io.NewSectionReader(b.f, off, n), N: &b.stats.bytesFetched}), nil
}
