package fetcher

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/clipd/clipd/index"
)

// SpanRef names span Span of the decompression index of layer Layer (an
// index into index.Archive.Layers).
type SpanRef struct{ Layer, Span int }

// Touch is a span first read by a demand read (a FUSE read; not
// read-ahead, not prefetch), At after the layers were opened.
type Touch struct {
	SpanRef
	At time.Duration
}

// Recorder is implemented by the Layers OpenLayers returns: what a
// container read at its start, to be fetched ahead of the next cold start
// of the image (a prefetch profile).
type Recorder interface {
	// Touches returns the spans demand reads have touched (hit or miss)
	// since the layers were opened, in order of first touch, each once.
	// Recording stops after the first MaxTouches touches or after
	// StopRecording.
	Touches() []Touch
	StopRecording()
}

// MaxTouches bounds the touches a Recorder keeps (16 MiB of them).
const MaxTouches = 1 << 20

var (
	_ Recorder   = (*layerSet)(nil)
	_ Prefetcher = (*layerSet)(nil)
)

// recording is the Recorder state of a layer set. Which spans were touched
// is kept per layer in a bitmap (spanBits), so that a read of spans already
// touched costs an atomic load per span and takes no lock.
type recording struct {
	start   time.Time
	stopped atomic.Bool

	mu      sync.Mutex
	touches []Touch
	// watch, when set, is told of every first touch, recording stopped
	// or not (a replay watching the workload, replay.go); watched says
	// it is set without taking mu.
	watch   func(SpanRef)
	watched atomic.Bool
}

// setWatch makes fn (nil: none) hear of every first touch from now on and
// returns the touches recorded before: together they are every first touch
// since the layers were opened, while recording ran. fn is called on the
// read path: it must not block.
func (r *recording) setWatch(fn func(SpanRef)) []Touch {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.watch = fn
	r.watched.Store(fn != nil)
	return append([]Touch(nil), r.touches...)
}

func (s *layerSet) Touches() []Touch {
	r := &s.rec
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Touch(nil), r.touches...)
}

func (s *layerSet) StopRecording() { s.rec.stopped.Store(true) }

// recordTouches notes spans first..last of x as read on demand.
func (l *layerReader) recordTouches(x *index.SpanIndex, first, last int) {
	r := &l.set.rec
	if r.stopped.Load() && !r.watched.Load() {
		return
	}
	b := spanBitsOf(&l.touched, x)
	for i := first; i <= last; i++ {
		if !b.set(i) {
			continue
		}
		at := time.Since(r.start)
		r.mu.Lock()
		if !r.stopped.Load() {
			if len(r.touches) < MaxTouches {
				r.touches = append(r.touches, Touch{SpanRef{l.n, i}, at})
			}
			if len(r.touches) >= MaxTouches {
				r.stopped.Store(true)
			}
		}
		watch := r.watch
		r.mu.Unlock()
		if watch != nil {
			watch(SpanRef{l.n, i})
		}
	}
}

// countPrefetchUse counts the spans first..last of x that prefetch fetched
// and no demand read had touched yet: the prefetch was of use.
func (l *layerReader) countPrefetchUse(x *index.SpanIndex, first, last int) {
	b := l.prefetched.Load()
	if b == nil {
		return // nothing of this layer was prefetched
	}
	for i := first; i <= last; i++ {
		if b.clear(i) {
			l.set.stats.prefetchUsed.Add(1)
		}
	}
}

// spanBits is one bit per span of a layer's index.
type spanBits []atomic.Uint64

// spanBitsOf returns the bitmap in p, making it for x's spans the first
// time. A layer's index, once known, never changes.
func spanBitsOf(p *atomic.Pointer[spanBits], x *index.SpanIndex) *spanBits {
	if b := p.Load(); b != nil {
		return b
	}
	b := make(spanBits, (len(x.Spans)+63)/64)
	if p.CompareAndSwap(nil, &b) {
		return &b
	}
	return p.Load()
}

// set sets bit i and reports whether this call did (it was clear).
func (b *spanBits) set(i int) bool {
	if i < 0 || i/64 >= len(*b) {
		return false
	}
	w, m := &(*b)[i/64], uint64(1)<<(i%64)
	if w.Load()&m != 0 {
		return false
	}
	return w.Or(m)&m == 0
}

// clear clears bit i and reports whether this call did (it was set).
func (b *spanBits) clear(i int) bool {
	if i < 0 || i/64 >= len(*b) {
		return false
	}
	w, m := &(*b)[i/64], uint64(1)<<(i%64)
	if w.Load()&m == 0 {
		return false
	}
	return w.And(^m)&m != 0
}
