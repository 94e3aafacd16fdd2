package zran

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
)

// Compression names how a layer blob is compressed.
const (
	Gzip = "gzip"
	Zstd = "zstd"
	None = "none"
)

var (
	gzipMagic = []byte{0x1f, 0x8b}
	zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}
)

// Detect names the compression of a stream from its first bytes. Media types
// lie often enough (docker v2 types say gzip for uncompressed layers) that the
// bytes are the authority.
func Detect(head []byte) string {
	switch {
	case bytes.HasPrefix(head, gzipMagic):
		return Gzip
	case bytes.HasPrefix(head, zstdMagic):
		return Zstd
	default:
		return None
	}
}

// NewReader returns the uncompressed stream of r and the compression it found.
func NewReader(r io.Reader) (io.ReadCloser, string, error) {
	br := bufio.NewReaderSize(r, 1<<16)
	head, err := br.Peek(4)
	if err != nil && err != io.EOF {
		return nil, "", fmt.Errorf("detect compression: %w", err)
	}
	c := Detect(head)
	rc, err := Decompress(br, c)
	return rc, c, err
}

// Decompress returns the uncompressed stream of r compressed as c.
func Decompress(r io.Reader, c string) (io.ReadCloser, error) {
	switch c {
	case Gzip:
		zr, err := gzip.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("open gzip stream: %w", err)
		}
		return zr, nil
	case Zstd:
		zr, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(false))
		if err != nil {
			return nil, fmt.Errorf("open zstd stream: %w", err)
		}
		return zr.IOReadCloser(), nil
	case None:
		return io.NopCloser(r), nil
	default:
		return nil, fmt.Errorf("unknown compression %q", c)
	}
}
