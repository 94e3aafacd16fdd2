package fetcher

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/clipd/clipd/zran"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// Stats count what one set of layer readers (one mount) did, or, from
// Fetcher.Stats, every set of the process.
type Stats struct {
	BytesFetched   int64 // bytes received from the blob source
	Requests       int64 // blob requests made (each retry counts)
	CacheHits      int64 // span reads served from the cache
	CacheMisses    int64 // span reads that needed a fetch (or waited for one)
	BytesFromCache int64 // bytes read from the cache
	ReadAheads     int64 // spans fetched ahead of reads
	Reads          int64 // ReadAt calls
	// Prefetch (prefetch.go): spans a plan named, spans prefetch fetched,
	// prefetched spans a demand read touched later, prefetched spans no
	// demand read touched (yet): fetched - used, and plan spans skipped
	// (cached already, unknown or out of range, repeated).
	PrefetchPlanned int64
	PrefetchFetched int64
	PrefetchUsed    int64
	PrefetchWasted  int64
	PrefetchSkipped int64
	// PrefetchCancelled counts replays (Replayer) cancelled because the
	// workload left their plan.
	PrefetchCancelled int64
}

// Add returns the sum of s and o.
func (s Stats) Add(o Stats) Stats {
	return Stats{
		BytesFetched:   s.BytesFetched + o.BytesFetched,
		Requests:       s.Requests + o.Requests,
		CacheHits:      s.CacheHits + o.CacheHits,
		CacheMisses:    s.CacheMisses + o.CacheMisses,
		BytesFromCache: s.BytesFromCache + o.BytesFromCache,
		ReadAheads:     s.ReadAheads + o.ReadAheads,
		Reads:          s.Reads + o.Reads,

		PrefetchPlanned: s.PrefetchPlanned + o.PrefetchPlanned,
		PrefetchFetched: s.PrefetchFetched + o.PrefetchFetched,
		PrefetchUsed:    s.PrefetchUsed + o.PrefetchUsed,
		PrefetchWasted:  s.PrefetchWasted + o.PrefetchWasted,
		PrefetchSkipped: s.PrefetchSkipped + o.PrefetchSkipped,

		PrefetchCancelled: s.PrefetchCancelled + o.PrefetchCancelled,
	}
}

type counters struct {
	bytesFetched, requests, cacheHits, cacheMisses, bytesFromCache, readAheads, reads atomic.Int64

	prefetchPlanned, prefetchFetched, prefetchUsed, prefetchSkipped, prefetchCancelled atomic.Int64
}

func (c *counters) snapshot() Stats {
	// Used before fetched: a span is counted fetched before it can be
	// used, so wasted never goes negative between the two loads.
	used := c.prefetchUsed.Load()
	fetched := c.prefetchFetched.Load()
	return Stats{
		BytesFetched:   c.bytesFetched.Load(),
		Requests:       c.requests.Load(),
		CacheHits:      c.cacheHits.Load(),
		CacheMisses:    c.cacheMisses.Load(),
		BytesFromCache: c.bytesFromCache.Load(),
		ReadAheads:     c.readAheads.Load(),
		Reads:          c.reads.Load(),

		PrefetchPlanned: c.prefetchPlanned.Load(),
		PrefetchFetched: fetched,
		PrefetchUsed:    used,
		PrefetchWasted:  max(0, fetched-used),
		PrefetchSkipped: c.prefetchSkipped.Load(),

		PrefetchCancelled: c.prefetchCancelled.Load(),
	}
}

// Observer is told of every span fetch from a registry, so that a serving
// process can keep latency histograms and error counters by registry host.
// Its methods are called concurrently and must not block.
type Observer interface {
	// SpanFetch reports one ranged fetch of a blob (its retries included):
	// how long it took and how it ended (nil: the bytes arrived).
	SpanFetch(host string, d time.Duration, err error)
	// FetchError reports a fetch that went wrong without failing the
	// read yet, e.g. bytes that failed verification and are fetched again;
	// kind is one of the ErrorKind answers.
	FetchError(host, kind string)
}

// Kinds of fetch errors, as ErrorKind names them.
const (
	KindTimeout  = "timeout"  // no answer, or no bytes, in time
	KindRefused  = "refused"  // connection refused
	KindReset    = "reset"    // connection reset or body cut short
	KindStatus5x = "5xx"      // the registry answered 5xx
	KindStatus4x = "4xx"      // 4xx (401, 403, 404, 429...)
	KindDigest   = "digest"   // bytes that failed verification
	KindCanceled = "canceled" // the reader gave up (interrupted read)
	KindOther    = "other"
)

// ErrorKind sorts a fetch error into one of the Kind constants, for metrics
// and figures.
func ErrorKind(err error) string {
	var se *httpStatusError
	var te *transport.Error
	var ne net.Error
	code := 0
	switch {
	case errors.As(err, &se):
		code = se.code
	case errors.As(err, &te):
		code = te.StatusCode
	}
	switch {
	case code >= 500:
		return KindStatus5x
	case code >= 400:
		return KindStatus4x
	case errors.Is(err, zran.ErrDigest), strings.Contains(err.Error(), "digest mismatch"):
		return KindDigest
	case errors.Is(err, context.Canceled):
		return KindCanceled
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.As(err, &ne) && ne.Timeout():
		return KindTimeout
	case errors.Is(err, syscall.ECONNREFUSED):
		return KindRefused
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, io.EOF):
		return KindReset
	}
	return KindOther
}

// observedBlob reports the ranged reads of a registry blob to an Observer.
// It wraps the blob at the outermost call, so that whatever the blob does
// inside (retries, resumption) counts as one fetch.
type observedBlob struct {
	Blob
	host string
	obs  Observer
}

func (b *observedBlob) ReadRange(ctx context.Context, off, n int64) (io.ReadCloser, error) {
	start := time.Now()
	rc, err := b.Blob.ReadRange(ctx, off, n)
	b.obs.SpanFetch(b.host, time.Since(start), err)
	return rc, err
}

func (b *observedBlob) ReadRangeInto(ctx context.Context, off int64, dst []byte, arrived func(n int64)) error {
	start := time.Now()
	err := b.Blob.(rangeIntoReader).ReadRangeInto(ctx, off, dst, arrived)
	b.obs.SpanFetch(b.host, time.Since(start), err)
	return err
}

// observed wraps the registry blob b for f's Observer, if any.
func (f *Fetcher) observed(b *registryBlob, err error) (Blob, error) {
	if err != nil {
		return nil, err
	}
	if f.opts.Observer == nil {
		return b, nil
	}
	return &observedBlob{Blob: b, host: b.repo.RegistryStr(), obs: f.opts.Observer}, nil
}

// fetchError tells f's Observer of a fetch error the reader does not see.
func (f *Fetcher) fetchError(b Blob, err error) {
	if ob, ok := b.(*observedBlob); ok {
		ob.obs.FetchError(ob.host, ErrorKind(err))
	}
}
