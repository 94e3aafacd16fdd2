package fetcher

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// A flight is the fetch of one span by one goroutine of this process. Every
// other reader of the span in this process (a demand read, a read-ahead, a
// prefetch request over a range that holds it) joins the flight instead of
// fetching the span again or waiting on the store's lock: the store's lock
// is a file lock that a waiter polls (cache.Store.AcquireWithin), which
// would add up to its back-off to every read of a span a prefetch request
// is bringing. A flight ends as soon as its span is decoded (or found in
// the store), not when the rest of its request arrives.
type spanFlight struct {
	done chan struct{}
	// Set before done is closed: data is the decoded span when the
	// leader decoded it (nil when it found the span in the store), err
	// why the leader has no span.
	data []byte
	err  error
}

// flights are the spans being fetched by this process, by span key.
type flights struct {
	mu sync.Mutex
	m  map[string]*spanFlight
}

// claim returns, for each key, either a new flight that the caller leads
// (own[i]; the caller must end it: land) or the flight of another
// goroutine to join (other[i]).
func (fs *flights) claim(keys []string) (own, other []*spanFlight) {
	own, other = make([]*spanFlight, len(keys)), make([]*spanFlight, len(keys))
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.m == nil {
		fs.m = map[string]*spanFlight{}
	}
	for i, k := range keys {
		if f := fs.m[k]; f != nil {
			other[i] = f
			continue
		}
		f := &spanFlight{done: make(chan struct{})}
		fs.m[k] = f
		own[i] = f
	}
	return own, other
}

// land ends flight f of key with data (nil: the span is in the store) or
// err; later calls for f do nothing.
func (fs *flights) land(key string, f *spanFlight, data []byte, err error) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.m[key] != f {
		return // landed already
	}
	delete(fs.m, key)
	f.data, f.err = data, err
	close(f.done)
}

// errFlightAbandoned ends the flights a fetch led but did not bring (it
// failed before them, or stopped early).
var errFlightAbandoned = errors.New("the fetch of the span ended without it")

// wait waits for f to land, or for ctx.
func (f *spanFlight) wait(ctx context.Context) ([]byte, error) {
	select {
	case <-f.done:
		return f.data, f.err
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for a fetch of the span: %w", ctx.Err())
	}
}
