package fetcher

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/clipd/clipd/cache"
	"github.com/clipd/clipd/index"
	"github.com/clipd/clipd/zran"
	"golang.org/x/sync/errgroup"
)

// DefaultSpanSize is the span size of decompression indexes the fetcher
// builds itself, for layers whose .clip file carries none.
const DefaultSpanSize = index.DefaultSpanSize

// spanKey is the cache entry of span i of x, a decompression index of layer
// digest. The span size is part of the key: indexes with other geometry cut
// other spans. So is a hash of everything that decides the span's bytes
// (its offsets, gzip checkpoint and the digest of its compressed bytes):
// the store is shared by every mount, and an index comes from a .clip file
// that any allowed peer may write. An index that claims a layer digest it
// does not describe (its own bytes behind a known digest, or a forged
// checkpoint before genuine bytes) caches its spans under keys of its own,
// and cannot change what another mount of that layer reads. A span with
// no digest (cut from an uncompressed layer without reading it) is taken
// as it came from its source, so origin (where the blob came from) is part
// of its key too.
func spanKey(digest string, x *index.SpanIndex, i int, origin string) string {
	s := x.Spans[i]
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%d\x00%d\x00%d\x00%d\x00%d\x00%t\x00", x.Compression, s.UOff, s.USize, s.COff, s.CEnd, s.Bits, s.Member)
	h.Write(s.Window)
	if i < len(x.Refs) {
		// A window kept in the windows blob decides the bytes as much as
		// an inline one does.
		h.Write(x.Refs[i].Digest[:])
	}
	h.Write(s.Digest[:])
	if s.Digest == ([32]byte{}) {
		fmt.Fprintf(h, "\x00%s", origin)
	}
	return fmt.Sprintf("%s/span-%d/%d-%x", digest, x.SpanSize, i, h.Sum(nil)[:12])
}

// indexKey is the cache entry of a decompression index the fetcher built by
// streaming a layer whose .clip file had none.
func indexKey(digest string) string {
	return fmt.Sprintf("%s/zindex-%d", digest, DefaultSpanSize)
}

// readSpans serves [off, off+len(p)) of the uncompressed layer through its
// spans: cached spans are read from the store (one pread each); each run of
// adjacent missing spans is fetched with one Range request, the runs in
// parallel, verified, decoded and stored. streamed says the spans were just
// fetched by streaming the layer (so not a cache hit). missed says the read
// needed a fetch. Only demand reads come here: the spans are recorded as
// touched (record.go).
func (l *layerReader) readSpans(ctx context.Context, x *index.SpanIndex, p []byte, off int64, streamed bool) (int, bool, error) {
	if off >= x.USize {
		return 0, false, io.EOF
	}
	end := min(off+int64(len(p)), x.USize)
	first, last := x.Find(off), x.Find(end-1)
	l.recordTouches(x, first, last)
	// piece is the part of p that span i serves, and where it starts in
	// the span.
	piece := func(i int) ([]byte, int64) {
		s := x.Spans[i]
		from, to := max(off, s.UOff), min(end, s.UOff+s.USize)
		return p[from-off : to-off], from - s.UOff
	}
	st := &l.set.stats
	var missing []int
	fetched := streamed
	for i := first; i <= last; i++ {
		dst, at := piece(i)
		if !l.readCached(x, i, dst, at) {
			if oversized(x, x.Spans[i]) {
				// A layer that could not be cut streams: this read waits
				// only for its own bytes (stream.go).
				st.cacheMisses.Add(1)
				fetched = true
				if _, err := l.readStreamed(ctx, x, i, dst, x.Spans[i].UOff+at); err != nil && !errors.Is(err, io.EOF) {
					return 0, true, err
				}
				continue
			}
			missing = append(missing, i)
			continue
		}
		if !streamed {
			st.bytesFromCache.Add(int64(len(dst)))
		}
	}
	// A hit is a read served from the cache alone, whatever its spans.
	if len(missing) == 0 && !fetched {
		st.cacheHits.Add(1)
	}
	st.cacheMisses.Add(int64(len(missing)))
	if err := l.fetchRuns(ctx, x, missing, piece); err != nil {
		return 0, true, err
	}
	// After the fetch: a read that waited for a prefetch of its spans was
	// served by it.
	l.countPrefetchUse(x, first, last)
	n := int(end - off)
	if n < len(p) {
		return n, fetched || len(missing) > 0, io.EOF
	}
	return n, fetched || len(missing) > 0, nil
}

// fetchRuns fetches the spans missing (ascending) and copies their pieces
// into the read's buffer. Spans that are not adjacent are fetched by
// separate requests in parallel: one request over the spans between would
// move bytes the read already has, and one request after another would add
// up their round trips.
func (l *layerReader) fetchRuns(ctx context.Context, x *index.SpanIndex, missing []int, piece func(int) ([]byte, int64)) error {
	if len(missing) == 0 {
		return nil
	}
	var runs [][]int
	for i, start := 1, 0; i <= len(missing); i++ {
		if i == len(missing) || (missing[i] != missing[i-1]+1 && !l.set.f.serialMisses) {
			runs = append(runs, missing[start:i])
			start = i
		}
	}
	if len(runs) == 1 {
		return l.fetchRun(ctx, x, runs[0], piece)
	}
	g, gctx := errgroup.WithContext(ctx)
	for _, run := range runs {
		// Each run writes its own pieces of the buffer.
		g.Go(func() error { return l.fetchRun(gctx, x, run, piece) })
	}
	return g.Wait()
}

// fetchRun fetches spans run[0]..run[len(run)-1] with one request and
// copies the pieces of those in run into the read's buffer.
func (l *layerReader) fetchRun(ctx context.Context, x *index.SpanIndex, run []int, piece func(int) ([]byte, int64)) error {
	if l.set.predicts(l.n, run[0], run[len(run)-1]) {
		ctx = withPredicted(ctx)
	}
	// A span found in the store by the fetch may be evicted before this
	// read gets to it; after two such losses the fetch hands the bytes over
	// itself.
	for attempt := 0; len(run) > 0; attempt++ {
		fresh, err := l.fetchMissing(ctx, x, run[0], run[len(run)-1], attempt >= 2)
		if err != nil {
			return err
		}
		still := run[:0]
		for _, i := range run {
			dst, at := piece(i)
			if data, ok := fresh[i]; ok {
				copy(dst, data[at:])
			} else if !l.readCached(x, i, dst, at) {
				still = append(still, i)
			}
		}
		run = still
	}
	return nil
}

// readCached fills dst from span i in the store, starting at offset at of
// the span. Any failure is a miss: the span is fetched again (a corrupt
// entry has been removed by the store).
func (l *layerReader) readCached(x *index.SpanIndex, i int, dst []byte, at int64) bool {
	store := l.set.f.store
	if store == nil {
		return false
	}
	n, err := store.ReadAt(l.spanKey(x, i), dst, at)
	if n == len(dst) {
		return true
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, cache.ErrCorrupt) {
		l.set.f.log.Warn("cache read failed, fetching the span again", "layer", l.layer.Digest, "span", i, "error", err)
	}
	return false
}

// fetchMissing makes sure spans lo..hi are in the store (or fetched) and
// returns the ones it has decoded (so that this read need not read them
// back). Concurrent readers of the same spans share one fetch per span in
// this process (flights.go) and across processes (the store's lock): the
// spans of lo..hi another goroutine is fetching are joined, the others are
// fetched, each run of adjacent ones with one request, the runs in
// parallel. force fetches and returns every span of the range whatever the
// store holds or others fetch.
func (l *layerReader) fetchMissing(ctx context.Context, x *index.SpanIndex, lo, hi int, force bool) (map[int][]byte, error) {
	if force {
		return l.fetchSpans(ctx, x, lo, hi, nil, nil)
	}
	fl := &l.set.f.flights
	keys := make([]string, 0, hi-lo+1)
	for i := lo; i <= hi; i++ {
		keys = append(keys, l.spanKey(x, i))
	}
	own, other := fl.claim(keys)
	out := make(map[int][]byte, hi-lo+1)
	var mu sync.Mutex
	landed := func(i int, data []byte) {
		fl.land(keys[i-lo], own[i-lo], data, nil)
		if data != nil {
			mu.Lock()
			out[i] = data
			mu.Unlock()
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	for next := lo; next <= hi; {
		if own[next-lo] == nil {
			next++
			continue
		}
		a, b := next, next
		for b < hi && own[b+1-lo] != nil {
			b++
		}
		next = b + 1
		g.Go(func() error {
			err := l.lockAndFetch(gctx, x, a, b, landed)
			if err == nil {
				err = errFlightAbandoned
			}
			// Whatever the fetch did not bring fails its joiners (a
			// joiner whose own context is alive retries a cancelled one).
			for i := a; i <= b; i++ {
				fl.land(keys[i-lo], own[i-lo], nil, err)
			}
			if err == errFlightAbandoned {
				return nil
			}
			return err
		})
	}
	var retry []int
	var joinErr error
	for k, f := range other {
		if f == nil {
			continue
		}
		data, err := f.wait(ctx)
		switch {
		case err == nil:
			if data != nil {
				mu.Lock()
				out[lo+k] = data
				mu.Unlock()
			}
		case ctx.Err() == nil && (isCtxErr(err) || errors.Is(err, errFlightAbandoned)):
			// The goroutine that led this fetch gave up; this one has not.
			retry = append(retry, lo+k)
		case joinErr == nil:
			joinErr = err
		}
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	if joinErr != nil {
		return nil, joinErr
	}
	for k := 0; k < len(retry); {
		j := k
		for j+1 < len(retry) && retry[j+1] == retry[j]+1 {
			j++
		}
		again, err := l.fetchMissing(ctx, x, retry[k], retry[j], false)
		if err != nil {
			return nil, err
		}
		for i, data := range again {
			out[i] = data
		}
		k = j + 1
	}
	return out, nil
}

// lockAndFetch takes the store's lock on spans lo..hi, so that another
// process missing them waits for this fetch instead of repeating it, then
// fetches the spans still missing, calling landed for each span as soon as
// it is in the store (data nil: another process stored it meanwhile) or
// decoded. A process waits for another's fetch only while that fetch
// receives bytes: once it has received nothing for Options.lockWait, this
// process fetches the spans itself, so that a fetch stuck elsewhere never
// blocks this mount. The spans another process stored meanwhile are left
// open in the store for the reader's ReadAt.
func (l *layerReader) lockAndFetch(ctx context.Context, x *index.SpanIndex, lo, hi int, landed func(i int, data []byte)) error {
	store := l.set.f.store
	if store == nil {
		_, err := l.fetchSpans(ctx, x, lo, hi, nil, landed)
		return err
	}
	keys := make([]string, 0, hi-lo+1)
	for i := lo; i <= hi; i++ {
		keys = append(keys, l.spanKey(x, i))
	}
	wait := l.set.f.opts.lockWait()
	missing, release, err := store.AcquireWithin(ctx, wait, keys...)
	if err != nil {
		return fmt.Errorf("read layer %s: %w", short(l.layer.Digest), err)
	}
	defer release()
	// Waiting processes give up on this fetch only once it stops receiving.
	ctx = withProgressHook(ctx, wait/4, func() { store.Touch(keys...) })
	need := make(map[int]bool, len(missing))
	for _, j := range missing {
		need[lo+j] = true
	}
	for i := lo; i <= hi; i++ {
		if !need[i] {
			landed(i, nil) // another process fetched it meanwhile
		}
	}
	if len(missing) == 0 {
		return nil
	}
	_, err = l.fetchSpans(ctx, x, lo+missing[0], lo+missing[len(missing)-1], need, landed)
	return err
}

// fetchSpans fetches the compressed bytes of spans lo..hi with one Range
// request, then verifies, decodes and stores each span in only (every span
// when only is nil), calling landed (when not nil) for each once it is
// stored. A span whose bytes fail verification is fetched once more on its
// own; bad bytes are never stored. A span the store cannot take (no room,
// unwritable directory) is still returned: reads are served uncached.
func (l *layerReader) fetchSpans(ctx context.Context, x *index.SpanIndex, lo, hi int, only map[int]bool, landed func(i int, data []byte)) (map[int][]byte, error) {
	start := time.Now()
	base := x.Spans[lo].COff
	// The windows these spans start from, when they are kept apart, are
	// fetched at the same time as the spans.
	// Without its windows the spans are useless: a failure to get them
	// stops the span transfer too.
	var windows map[int][]byte
	werr := make(chan error, 1)
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if x.External() {
		go func() {
			var err error
			windows, err = l.fetchWindows(ctx, x, lo, hi, only)
			if err != nil {
				cancel()
			}
			werr <- err
		}()
	} else {
		werr <- nil
	}
	// Each span is decoded, stored and landed as soon as its bytes are
	// in, while the rest of the range arrives: a read waiting for the
	// first span of a long prefetch request waits for that span only.
	rng := l.startRange(sctx, base, x.Spans[hi].CEnd-base)
	defer rng.stop()
	if err := <-werr; err != nil {
		return nil, err // the cause, rather than the cancellation it made
	}
	out := make(map[int][]byte, hi-lo+1)
	for i := lo; i <= hi; i++ {
		if only != nil && !only[i] {
			continue
		}
		s, err := l.span(x, i, windows[i])
		if err != nil {
			return nil, err
		}
		if err := rng.wait(s.CEnd - base); err != nil {
			return nil, err
		}
		data, err := l.decode(x, s, rng.buf[s.COff-base:s.CEnd-base])
		if errors.Is(err, zran.ErrDigest) {
			l.set.f.fetchError(l.blob, err)
			l.set.f.log.Warn("span failed verification, fetching it again", "layer", l.layer.Digest, "span", i, "error", err)
			again, ferr := l.fetchRange(ctx, s.COff, s.CEnd-s.COff)
			if ferr != nil {
				return nil, ferr
			}
			data, err = l.decode(x, s, again)
		}
		if err != nil {
			l.set.f.log.Error("span unusable", "layer", l.layer.Digest, "span", i, "error", err)
			return nil, fmt.Errorf("read layer %s: span %d: %w", short(l.layer.Digest), i, err)
		}
		if store := l.set.f.store; store != nil {
			// The store logs the first failure of a run; serving matters
			// more than caching.
			if err := l.storeSpan(ctx, store, x, i, data); err != nil {
				l.set.f.log.Debug("could not cache span", "layer", l.layer.Digest, "span", i, "error", err)
			}
		}
		out[i] = data
		if landed != nil {
			landed(i, data)
		}
	}
	l.set.f.log.Debug("fetched spans", "layer", l.layer.Digest, "spans", fmt.Sprintf("%d-%d", lo, hi),
		"bytes", x.Spans[hi].CEnd-base, "duration", time.Since(start).Round(time.Microsecond))
	return out, nil
}

// rangeIntoReader is implemented by blobs that can hand the bytes of a
// range over as they arrive (registry blobs).
type rangeIntoReader interface {
	ReadRangeInto(ctx context.Context, off int64, dst []byte, arrived func(n int64)) error
}

// rangeFetch is a range of a blob being fetched in the background into buf.
type rangeFetch struct {
	buf     []byte
	arrived atomic.Int64  // bytes of buf in; stored after they are written
	more    chan struct{} // a token when arrived grew
	done    chan struct{} // closed when the fetch ended, after err is set
	err     error
	cancel  context.CancelFunc
}

// startRange starts fetching n bytes at off of the layer's blob.
func (l *layerReader) startRange(ctx context.Context, off, n int64) *rangeFetch {
	ctx, cancel := context.WithCancel(ctx)
	r := &rangeFetch{more: make(chan struct{}, 1), done: make(chan struct{}), cancel: cancel}
	ri, streams := l.blob.(rangeIntoReader)
	if streams {
		r.buf = make([]byte, n)
	}
	go func() {
		defer close(r.done)
		if !streams {
			if r.buf, r.err = l.fetchRange(ctx, off, n); r.err == nil {
				r.arrived.Store(n)
			}
			return
		}
		r.err = ri.ReadRangeInto(ctx, off, r.buf, func(k int64) {
			r.arrived.Store(k)
			select {
			case r.more <- struct{}{}:
			default:
			}
		})
	}()
	return r
}

// wait returns once the first n bytes of the range are in buf, or the
// fetch failed.
func (r *rangeFetch) wait(n int64) error {
	for r.arrived.Load() < n {
		select {
		case <-r.more:
		case <-r.done:
			if r.arrived.Load() >= n {
				return nil
			}
			if r.err != nil {
				return r.err
			}
			return io.ErrUnexpectedEOF
		}
	}
	return nil
}

// stop cancels the fetch if it still runs and waits for its end.
func (r *rangeFetch) stop() {
	r.cancel()
	<-r.done
}

// span returns span i of x with its window expanded: the inline one, or
// window, the verified bytes fetchWindows returned for an external one.
func (l *layerReader) span(x *index.SpanIndex, i int, window []byte) (zran.Span, error) {
	d, err := l.set.f.decoder()
	if err != nil {
		return zran.Span{}, fmt.Errorf("read layer %s: %w", short(l.layer.Digest), err)
	}
	s, err := x.ExpandSpan(i, d, window)
	if err != nil {
		return s, fmt.Errorf("read layer %s: %w", short(l.layer.Digest), err)
	}
	return s, nil
}

// decode verifies and decodes span s from its compressed bytes. The spans
// plainIndex cut carry no digest: their bytes are taken as they came.
func (l *layerReader) decode(x *index.SpanIndex, s zran.Span, compressed []byte) ([]byte, error) {
	if x.Compression == zran.None && s.Digest == ([32]byte{}) {
		return bytes.Clone(compressed), nil
	}
	d, err := l.set.f.decoder()
	if err != nil {
		return nil, err
	}
	return d.Decode(x.Compression, s, compressed)
}

func (l *layerReader) fetchRange(ctx context.Context, off, n int64) ([]byte, error) {
	rc, err := l.blob.ReadRange(ctx, off, n)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	buf := make([]byte, n)
	if _, err := io.ReadFull(rc, buf); err != nil {
		return nil, fmt.Errorf("fetch layer %s: range %d-%d: %w", short(l.layer.Digest), off, off+n-1, err)
	}
	return buf, nil
}

// streamedIndex returns the decompression index of a layer whose .clip file
// has none: from the store when this host built it before, otherwise by
// streaming the whole blob once (verifying its digest), storing every span
// on the way. Later reads, and later mounts, are lazy.
func (l *layerReader) streamedIndex(ctx context.Context) (*index.SpanIndex, error) {
	key := indexKey(l.layer.Digest)
	for {
		ch := l.set.f.group.DoChan(key, func() (any, error) {
			if x, err := l.loadIndex(key); err == nil {
				return x, nil
			}
			return l.buildIndex(ctx, key)
		})
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("read layer %s: %w", short(l.layer.Digest), ctx.Err())
		case r := <-ch:
			if r.Err != nil && r.Shared && isCtxErr(r.Err) && ctx.Err() == nil {
				continue
			}
			if r.Err != nil {
				return nil, r.Err
			}
			return r.Val.(*index.SpanIndex), nil
		}
	}
}

func (l *layerReader) loadIndex(key string) (*index.SpanIndex, error) {
	if l.set.f.store == nil {
		return nil, errNoCache
	}
	e, err := l.set.f.store.Get(key)
	if err != nil {
		return nil, err
	}
	defer e.Close()
	b, err := io.ReadAll(io.LimitReader(e.Reader(), 1<<30))
	if err != nil {
		return nil, err
	}
	var x index.SpanIndex
	if err := x.UnmarshalBinary(b); err != nil {
		return nil, fmt.Errorf("cached index of layer %s: %w", short(l.layer.Digest), err)
	}
	return &x, nil
}

var errNoCache = errors.New("no cache")

func (l *layerReader) buildIndex(ctx context.Context, key string) (*index.SpanIndex, error) {
	if l.set.f.store == nil {
		return nil, fmt.Errorf("read layer %s: a compressed layer without a decompression index needs a cache", short(l.layer.Digest))
	}
	digest := l.layer.Digest
	alg, want, _ := strings.Cut(digest, ":")
	if alg != "sha256" {
		return nil, fmt.Errorf("fetch layer %s: unsupported digest algorithm %q", short(digest), alg)
	}
	start := time.Now()
	body, err := l.blob.Open(ctx)
	if err != nil {
		return nil, err
	}
	defer body.Close()
	h := sha256.New()
	ir, err := zran.NewIndexReader(io.TeeReader(body, h), DefaultSpanSize)
	if err != nil {
		return nil, fmt.Errorf("fetch layer %s: %w", short(digest), err)
	}
	defer ir.Close()
	// The uncompressed layer goes to a scratch file in the store's
	// directory; spans are cut from it once the digest is known good.
	tmp, err := os.CreateTemp(l.set.f.store.Dir(), ".stream-*")
	if err != nil {
		return nil, fmt.Errorf("fetch layer %s: %w", short(digest), err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	if _, err := io.Copy(tmp, ir); err != nil {
		return nil, fmt.Errorf("fetch layer %s: %w", short(digest), err)
	}
	if _, err := io.Copy(h, body); err != nil { // bytes after the compressed stream
		return nil, fmt.Errorf("fetch layer %s: %w", short(digest), err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		return nil, fmt.Errorf("fetch layer %s: digest mismatch: blob hashes to sha256:%s", short(digest), got)
	}
	li, err := ir.Index()
	if err != nil {
		return nil, err
	}
	x, err := index.NewSpanIndex(li)
	if err != nil {
		return nil, err
	}
	for i, s := range x.Spans {
		// A span the store refuses is fetched lazily later: the index is
		// what this stream must yield.
		if _, err := l.set.f.store.Put(l.spanKey(x, i), io.NewSectionReader(tmp, s.UOff, s.USize)); err != nil {
			l.set.f.log.Debug("could not cache span", "layer", digest, "span", i, "error", err)
		}
	}
	b, err := x.MarshalBinary()
	if err != nil {
		return nil, err
	}
	if _, err := l.set.f.store.Put(key, bytes.NewReader(b)); err != nil {
		l.set.f.log.Debug("could not cache decompression index", "layer", digest, "error", err)
	}
	l.set.f.rememberCompression(digest, li.Compression)
	l.set.f.log.Info("indexed layer while streaming it", "layer", digest, "compression", li.Compression,
		"bytes", li.CSize, "uncompressed", li.USize, "spans", len(x.Spans), "duration", time.Since(start).Round(time.Millisecond))
	return x, nil
}
