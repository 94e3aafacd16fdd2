package fetcher

import (
	"context"
	"sync"

	"github.com/clipd/clipd/index"
)

// FileReaderAt is implemented by the layer readers OpenLayers returns. The
// mount calls it with the end of the file being read (an offset in the
// layer), so that the spans the file goes on into are fetched in the
// background: when a file's read misses the cache, its next spans (up to
// readAheadSpans spans, readAheadBytes bytes) are fetched at once, each
// with its own request, in parallel; a reader that then goes on
// sequentially keeps that window ahead of it; any other read that ends in
// span k of a file going on into span k+1 fetches that span.
type FileReaderAt interface {
	ReadAtFile(ctx context.Context, p []byte, off, fileEnd int64) (int, error)
}

var _ FileReaderAt = (*layerReader)(nil)

const (
	// readAheadSpans and readAheadBytes bound the window read ahead of a
	// file's reader.
	readAheadSpans = 8
	readAheadBytes = 8 << 20
	// maxReadAheads bounds the read-ahead fetches in flight per Fetcher;
	// a read that would need more reads less ahead. Each takes a fetch
	// slot behind demand reads (gate.go).
	maxReadAheads = 8
)

// readAhead is the read-ahead state of one layer reader.
type readAhead struct {
	mu       sync.Mutex
	last     int          // span last read ahead from this reader, -1 none
	upto     int          // last span of the window read ahead, -1 none
	inFlight map[int]bool // spans being read ahead
}

func (l *layerReader) ReadAtFile(ctx context.Context, p []byte, off, fileEnd int64) (int, error) {
	n, missed, err := l.read(ctx, p, off)
	if n > 0 {
		l.readAheadAfter(off+int64(n), fileEnd, missed)
	}
	return n, err
}

// readAheadAfter starts the fetches of the spans after the one holding
// byte end-1, when the file (ending at fileEnd) continues into them. Reads
// in one span trigger this once, unless they miss: no syscall on the hot
// path.
func (l *layerReader) readAheadAfter(end, fileEnd int64, missed bool) {
	x := l.spans()
	store := l.set.f.store
	if x == nil || store == nil || end >= min(fileEnd, x.USize) {
		return
	}
	k := x.Find(end-1) + 1
	if k >= len(x.Spans) || x.Spans[k].UOff >= fileEnd {
		return
	}
	ra := &l.ahead
	ra.mu.Lock()
	if ra.last == k && !missed {
		ra.mu.Unlock()
		return
	}
	// A miss opens a window; a reader going on from the span it read
	// ahead last keeps the window open; any other read fetches one span.
	from, to := k, k+1
	switch {
	case missed:
		to = k + readAheadSpans
	case ra.last == k-1 && ra.upto >= k:
		// Only the spans the window gains need starting.
		from, to = ra.upto+1, k+readAheadSpans
	}
	ra.last = k
	if ra.inFlight == nil {
		ra.inFlight = map[int]bool{}
	}
	var spans []int
	for i := from; i < min(to, len(x.Spans)) && x.Spans[i].UOff < fileEnd; i++ {
		s := x.Spans[i]
		if oversized(x, s) || x.Spans[i].UOff+s.USize-x.Spans[k].UOff > readAheadBytes {
			// A span that streams is too large to read ahead, and the
			// window ends at readAheadBytes.
			break
		}
		ra.upto = i
		// A span of the plan of a replay that is fetching comes with
		// it, in the plan's order: reading it ahead as well would only
		// split the link between more requests.
		if !ra.inFlight[i] && !(l.set.replaying.Load() && l.set.predicts(l.n, i, i)) {
			ra.inFlight[i] = true
			spans = append(spans, i)
		}
	}
	ra.mu.Unlock()
	for n, i := range spans {
		if !l.startReadAhead(x, i) {
			// Too many read-aheads in flight: the rest of the window
			// is left to demand reads.
			ra.mu.Lock()
			for _, j := range spans[n:] {
				delete(ra.inFlight, j)
			}
			ra.upto = min(ra.upto, i-1)
			ra.mu.Unlock()
			return
		}
	}
}

// startReadAhead fetches span i of x in the background, unless the
// Fetcher has maxReadAheads read-aheads in flight. It runs in the layer
// set's context: closing the mount cancels it.
func (l *layerReader) startReadAhead(x *index.SpanIndex, i int) bool {
	select {
	case l.set.f.ahead <- struct{}{}:
	default:
		return false
	}
	go func() {
		defer func() { <-l.set.f.ahead }()
		defer func() {
			l.ahead.mu.Lock()
			delete(l.ahead.inFlight, i)
			l.ahead.mu.Unlock()
		}()
		if l.set.f.store.Has(l.spanKey(x, i)) {
			return
		}
		if !l.set.predicts(l.n, i, i) {
			// A prefetch yields to this read-ahead unless its replay
			// has the span in its plan (predicts).
			defer l.set.f.slots.readingAhead()()
		}
		err := l.set.f.background(l.set.ctx, func(ctx context.Context) error {
			fresh, err := l.fetchMissing(ctx, x, i, i, false)
			l.set.stats.readAheads.Add(int64(len(fresh)))
			return err
		})
		if err != nil {
			l.set.f.log.Debug("read-ahead failed", "layer", l.layer.Digest, "span", i, "error", err)
		}
	}()
	return true
}
