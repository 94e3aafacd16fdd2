package index

import (
	"fmt"
	"io"
	"os"

	"github.com/klauspost/compress/zstd"
)

// A .clip file must stay readable by clip, so its node list is a plain gob
// (1.3 MB for the 8,240 entries of debian-python, mostly layer digests and
// paths repeated per entry). It compresses about tenfold, so an index
// travels compressed: CompressClip is what a publisher stores in the
// registry (ClipZstdMediaType) and DecompressClip what a node writes back
// to disk before opening it. The node's bytes up front are the compressed
// .clip; the windows follow lazily (windows.go).

// ClipZstdMediaType is the media type of a zstd-compressed .clip blob.
const ClipZstdMediaType = "application/vnd.clipd.index.clip.v1+zstd"

// maxClipBytes bounds what DecompressClip writes: a .clip holds at most its
// header, sections and extension (doc.go).
const maxClipBytes = 1<<10 + MaxIndexBytes + MaxStorageInfoBytes + MaxExtensionBytes

// CompressClip writes the zstd compression of the .clip read from src.
func CompressClip(dst io.Writer, src io.Reader) error {
	enc, err := zstd.NewWriter(dst, zstd.WithEncoderLevel(zstd.SpeedBestCompression), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return fmt.Errorf("compress .clip: %w", err)
	}
	if _, err := io.Copy(enc, src); err != nil {
		enc.Close()
		return fmt.Errorf("compress .clip: %w", err)
	}
	if err := enc.Close(); err != nil {
		return fmt.Errorf("compress .clip: %w", err)
	}
	return nil
}

// DecompressClip writes the .clip that CompressClip compressed into src,
// refusing output past the largest .clip Open accepts (a hostile blob could
// otherwise expand without end).
func DecompressClip(dst io.Writer, src io.Reader) (int64, error) {
	dec, err := zstd.NewReader(src, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(64<<20))
	if err != nil {
		return 0, fmt.Errorf("decompress .clip: %w", err)
	}
	defer dec.Close()
	n, err := io.Copy(dst, io.LimitReader(dec, maxClipBytes+1))
	if err != nil {
		return n, fmt.Errorf("decompress .clip: %w", err)
	}
	if n > maxClipBytes {
		return n, fmt.Errorf("decompress .clip: more than %d bytes", int64(maxClipBytes))
	}
	return n, nil
}

// CompressedSize is the size of the .clip at path once CompressClip has
// compressed it: the bytes a node downloads before a mount is ready.
func CompressedSize(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var c countWriter
	if err := CompressClip(&c, f); err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return int64(c), nil
}

type countWriter int64

func (c *countWriter) Write(p []byte) (int, error) {
	*c += countWriter(len(p))
	return len(p), nil
}
