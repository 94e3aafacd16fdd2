package mount

import (
	"context"
	"io"
)

// fileReaderAt is implemented by layer readers that want to know the extent
// of the file a read belongs to (to read ahead within it) and can stop when
// the kernel interrupts the request. fetcher's layer readers do.
type fileReaderAt interface {
	ReadAtFile(ctx context.Context, p []byte, off, fileEnd int64) (int, error)
}

// readFile reads p at off of layer r, for a file whose bytes end at fileEnd
// in the layer.
func readFile(ctx context.Context, r io.ReaderAt, p []byte, off, fileEnd int64) (int, error) {
	if fr, ok := r.(fileReaderAt); ok {
		return fr.ReadAtFile(ctx, p, off, fileEnd)
	}
	return r.ReadAt(p, off)
}
