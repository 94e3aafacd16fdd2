package fetcher

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/clipd/clipd/cache"
	"github.com/clipd/clipd/index"
)

// Prefetcher is implemented by the Layers OpenLayers returns.
type Prefetcher interface {
	// Prefetch fetches the spans of plan (in plan order, adjacent spans of
	// one layer coalesced into one Range request up to a bound) with a
	// bounded number of parallel requests, skipping spans already cached,
	// storing them in the cache. Demand reads always go ahead of prefetch
	// requests waiting for a fetch slot, and no prefetch request starts
	// while a demand read's or a read-ahead's request is in flight or
	// waiting. It returns when every span is
	// fetched/failed or ctx ends or the layers are closed (unmount). Spans
	// of layers whose span index is unknown at this time (index built by
	// streaming) and out-of-range refs are skipped (counted as skipped).
	Prefetch(ctx context.Context, plan []SpanRef) error
}

// maxPrefetchRequest bounds the compressed bytes of one prefetch request:
// large enough that a request's round trip is small beside its transfer
// (2 MiB take 80 ms at 200 Mbit/s, four 20 ms round trips), small enough
// that several run in parallel, and that a demand read arriving while they
// are in flight (a prefetch starts no request beside demand or read-ahead,
// but lets those in flight finish) shares the link with at most a few of them, and does
// not wait long on the store lock of a span being prefetched.
const maxPrefetchRequest = 2 << 20

// prefetchJob is one request of a prefetch: spans lo..hi of a layer.
type prefetchJob struct {
	l      *layerReader
	x      *index.SpanIndex
	lo, hi int
}

// Prefetch implements Prefetcher. Its requests go through the same path as
// a demand read's misses (fetchMissing): verified before they are stored,
// deduplicated with concurrent reads of the same spans in this process and
// in others sharing the store.
func (s *layerSet) Prefetch(ctx context.Context, plan []SpanRef) error {
	st := &s.stats
	st.prefetchPlanned.Add(int64(len(plan)))
	if s.f.store == nil {
		st.prefetchSkipped.Add(int64(len(plan)))
		return errors.New("prefetch: no cache to fetch into")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Closing the layers (unmount) ends the prefetch too.
	defer context.AfterFunc(s.ctx, cancel)()
	start := time.Now()
	jobs := s.planJobs(plan)
	// A prefetch takes at most half of what the store may hold: a plan
	// larger than the cache must not evict its own first spans (nor all
	// of what other mounts use) for its last ones.
	allowance := s.f.store.Stats().Limit / 2
	var reserved atomic.Int64
	var (
		next    atomic.Int64
		run     prefetchRun
		failed  atomic.Int64
		errOnce sync.Once
		first   error
	)
	pctx := withPrefetchRun(ctx, &run)
	var wg sync.WaitGroup
	for range min(s.f.opts.prefetchParallel(), len(jobs)) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(jobs) || pctx.Err() != nil {
					return
				}
				if reserved.Add(jobs[i].bytes()) > allowance {
					run.noRoom.Store(true)
					cancel()
					return
				}
				if err := s.prefetchJob(pctx, jobs[i]); err != nil && pctx.Err() == nil {
					failed.Add(1)
					errOnce.Do(func() { first = err })
					s.f.log.Debug("prefetch failed", "layer", jobs[i].l.layer.Digest, "spans", fmt.Sprintf("%d-%d", jobs[i].lo, jobs[i].hi), "error", err)
				}
				if run.noRoom.Load() {
					// The store is full of what this host needs more:
					// stop rather than evict it for guesses.
					cancel()
					return
				}
			}
		})
	}
	wg.Wait()
	s.f.log.Debug("prefetch ended", "requests", len(jobs), "failed", failed.Load(), "duration", time.Since(start).Round(time.Millisecond))
	switch {
	case run.noRoom.Load():
		return fmt.Errorf("prefetch: stopped, the cache has no room for more (a prefetch may take %d bytes): %w", allowance, cache.ErrNoSpace)
	case ctx.Err() != nil:
		if s.ctx.Err() != nil {
			return fmt.Errorf("prefetch: layers closed: %w", ctx.Err())
		}
		return fmt.Errorf("prefetch: %w", ctx.Err())
	case first != nil:
		return fmt.Errorf("prefetch: %d of %d requests failed, first: %w", failed.Load(), len(jobs), first)
	}
	return nil
}

// planJobs turns plan into requests, in order of the plan: a span is added
// to a request of its layer that ends just before it or starts just after
// it, while the request stays under maxPrefetchRequest. Spans that cannot or
// need not be fetched are counted skipped.
func (s *layerSet) planJobs(plan []SpanRef) []*prefetchJob {
	var (
		jobs   []*prefetchJob
		seen   = make(map[SpanRef]bool, len(plan))
		ends   = map[SpanRef]*prefetchJob{} // by layer and last span
		starts = map[SpanRef]*prefetchJob{} // by layer and first span
		skip   int64
	)
	for _, r := range plan {
		if r.Layer < 0 || r.Layer >= len(s.readers) || seen[r] {
			skip++
			continue
		}
		seen[r] = true
		l := s.readers[r.Layer]
		x, i := l.spans(), r.Span
		if x == nil || i < 0 || i >= len(x.Spans) || oversized(x, x.Spans[i]) || s.f.store.Has(l.spanKey(x, i)) {
			skip++
			continue
		}
		if j := ends[SpanRef{r.Layer, i - 1}]; j != nil && x.Spans[i].CEnd-x.Spans[j.lo].COff <= maxPrefetchRequest {
			delete(ends, SpanRef{r.Layer, j.hi})
			j.hi = i
			ends[r] = j
			// The span may join this request to the one after it.
			if k := starts[SpanRef{r.Layer, i + 1}]; k != nil && x.Spans[k.hi].CEnd-x.Spans[j.lo].COff <= maxPrefetchRequest {
				delete(ends, r)
				delete(starts, SpanRef{r.Layer, k.lo})
				j.hi, k.lo = k.hi, -1
				ends[SpanRef{r.Layer, j.hi}] = j
			}
			continue
		}
		if j := starts[SpanRef{r.Layer, i + 1}]; j != nil && x.Spans[j.hi].CEnd-x.Spans[i].COff <= maxPrefetchRequest {
			delete(starts, SpanRef{r.Layer, j.lo})
			j.lo = i
			starts[r] = j
			continue
		}
		j := &prefetchJob{l: l, x: x, lo: i, hi: i}
		jobs = append(jobs, j)
		ends[r], starts[r] = j, j
	}
	s.stats.prefetchSkipped.Add(skip)
	// Requests merged into an earlier one are gone.
	return slices.DeleteFunc(jobs, func(j *prefetchJob) bool { return j.lo < 0 })
}

// bytes is how many bytes the spans of j take in the store.
func (j *prefetchJob) bytes() int64 {
	return j.x.Spans[j.hi].UOff + j.x.Spans[j.hi].USize - j.x.Spans[j.lo].UOff
}

// prefetchJob fetches the spans of j still missing, once the gate gives it
// a slot behind every demand read, at a moment no demand read's or
// read-ahead's request is in flight.
func (s *layerSet) prefetchJob(ctx context.Context, j *prefetchJob) error {
	return s.f.prefetching(ctx, func(ctx context.Context) error {
		l, x := j.l, j.x
		// Demand reads may have fetched the ends of the range while this
		// job waited.
		lo, hi := j.lo, j.hi
		for lo <= hi && s.f.store.Has(l.spanKey(x, lo)) {
			lo++
		}
		for hi >= lo && s.f.store.Has(l.spanKey(x, hi)) {
			hi--
		}
		if lo > hi {
			return nil
		}
		// Spans are counted fetched as fetchSpans stores them
		// (storeSpan): only those this prefetch fetched, not those a
		// demand read it joined fetched.
		_, err := l.fetchMissing(ctx, x, lo, hi, false)
		return err
	})
}

// prefetchRun marks the context of a prefetch's fetches.
type prefetchRun struct {
	noRoom atomic.Bool // the store refused a span for lack of room
}

type prefetchRunKey struct{}

func withPrefetchRun(ctx context.Context, run *prefetchRun) context.Context {
	return context.WithValue(ctx, prefetchRunKey{}, run)
}

// storeSpan puts span i of x, fetched under ctx, in the store. A span a
// prefetch fetched is marked prefetched before it is visible in the store,
// so that a demand read that finds it there counts it used; a span the
// store refuses for lack of room stops the prefetch.
func (l *layerReader) storeSpan(ctx context.Context, store *cache.Store, x *index.SpanIndex, i int, data []byte) error {
	run, _ := ctx.Value(prefetchRunKey{}).(*prefetchRun)
	var b *spanBits
	if run != nil {
		b = spanBitsOf(&l.prefetched, x)
		b.set(i)
	}
	_, err := store.Put(l.spanKey(x, i), bytes.NewReader(data))
	switch {
	case run == nil:
	case err == nil:
		l.set.stats.prefetchFetched.Add(1)
	default:
		b.clear(i)
		if errors.Is(err, cache.ErrNoSpace) {
			run.noRoom.Store(true)
		}
	}
	return err
}
