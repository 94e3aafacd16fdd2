package fetcher

import (
	"context"
	"sync"
)

// FileReaderAt is implemented by the layer readers OpenLayers returns. The
// mount calls it with the end of the file being read (an offset in the
// layer): when the read ends in span k and the file goes on into span k+1,
// that span is fetched in the background, so that a sequential reader finds
// it in the cache.
type FileReaderAt interface {
	ReadAtFile(ctx context.Context, p []byte, off, fileEnd int64) (int, error)
}

var _ FileReaderAt = (*layerReader)(nil)

// maxReadAheads bounds the read-ahead fetches in flight per Fetcher; a read
// that would need more just does not read ahead.
const maxReadAheads = 2

// readAhead is the read-ahead state of one layer reader.
type readAhead struct {
	mu       sync.Mutex
	last     int          // span last read ahead from this reader, -1 none
	inFlight map[int]bool // spans being read ahead
}

func (l *layerReader) ReadAtFile(ctx context.Context, p []byte, off, fileEnd int64) (int, error) {
	n, err := l.ReadAtContext(ctx, p, off)
	if n > 0 {
		l.readAheadAfter(off+int64(n), fileEnd)
	}
	return n, err
}

// readAheadAfter starts the fetch of the span after the one holding byte
// end-1, when the file (ending at fileEnd) continues into it. Reads in one
// span trigger this once: no syscall on the hot path.
func (l *layerReader) readAheadAfter(end, fileEnd int64) {
	x := l.spans()
	store := l.set.f.store
	if x == nil || store == nil || end >= min(fileEnd, x.USize) {
		return
	}
	k := x.Find(end-1) + 1
	if k >= len(x.Spans) || x.Spans[k].UOff >= fileEnd {
		return
	}
	if x.Spans[k].USize > 2*x.SpanSize {
		return // a span that streams: too large to read ahead
	}
	ra := &l.ahead
	ra.mu.Lock()
	if ra.last == k || ra.inFlight[k] {
		ra.mu.Unlock()
		return
	}
	ra.last = k
	if ra.inFlight == nil {
		ra.inFlight = map[int]bool{}
	}
	ra.inFlight[k] = true
	ra.mu.Unlock()
	done := func() {
		ra.mu.Lock()
		delete(ra.inFlight, k)
		ra.mu.Unlock()
	}
	select {
	case l.set.f.ahead <- struct{}{}:
	default:
		done()
		return
	}
	go func() {
		defer func() { <-l.set.f.ahead }()
		defer done()
		if store.Has(l.spanKey(x, k)) {
			return
		}
		// The layer set's context: closing the mount cancels it.
		fresh, err := l.fetchMissing(l.set.ctx, x, k, k, false)
		if err != nil {
			l.set.f.log.Debug("read-ahead failed", "layer", l.layer.Digest, "span", k, "error", err)
			return
		}
		l.set.stats.readAheads.Add(int64(len(fresh)))
	}()
}
