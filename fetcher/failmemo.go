package fetcher

import (
	"fmt"
	"time"
)

// recentFailure is a range whose fetch gave up (its budget or its retries
// spent on a stalled or failing registry) a moment ago.
type recentFailure struct {
	err error
	at  time.Time
}

// rangeKey names a range of a blob.
type rangeKey struct{ off, n int64 }

// failMemory is how long a range that failed is answered with the same
// error instead of being fetched again. The kernel retries a failed
// buffered read at once (the page read after the failed readahead): without
// this, a stalled (or persistently failing) registry would take twice
// fetch_timeout (or twice the retries) to turn into EIO.
// It is short, so that a read made after the registry recovered fetches.
func (o Options) failMemory() time.Duration {
	return min(2*time.Second, o.fetchTimeout()/4)
}

// recentlyFailed returns the error of a fetch of [off, off+n) that gave up
// within failMemory, or nil.
func (b *registryBlob) recentlyFailed(off, n int64) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	for k, f := range b.failed {
		if now.Sub(f.at) > b.f.opts.failMemory() {
			delete(b.failed, k)
		}
	}
	f, ok := b.failed[rangeKey{off, n}]
	if !ok {
		return nil
	}
	return fmt.Errorf("%w (gave up %s ago, not fetched again yet)", f.err, now.Sub(f.at).Round(time.Millisecond))
}

func (b *registryBlob) noteFailed(off, n int64, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.failed == nil {
		b.failed = map[rangeKey]recentFailure{}
	}
	b.failed[rangeKey{off, n}] = recentFailure{err: err, at: time.Now()}
}
