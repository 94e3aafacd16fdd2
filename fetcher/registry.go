package fetcher

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/clipd/clipd/internal/countio"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// registryBlob is a blob at /v2/<repo>/blobs/<digest>.
type registryBlob struct {
	f      *Fetcher
	repo   name.Repository
	digest string
	stats  *counters

	mu   sync.Mutex
	size int64 // <= 0 until known
	// failed holds the ranges whose fetch gave up a moment ago
	// (failmemo.go).
	failed map[rangeKey]recentFailure
}

func (b *registryBlob) Digest() string { return b.digest }
func (b *registryBlob) Close() error   { return nil }

func (b *registryBlob) url() string {
	return fmt.Sprintf("%s://%s/v2/%s/blobs/%s", b.repo.Registry.Scheme(), b.repo.RegistryStr(), b.repo.RepositoryStr(), b.digest)
}

func (b *registryBlob) knownSize() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.size
}

func (b *registryBlob) learnSize(n int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.size <= 0 {
		b.size = n
	}
}

// Size asks the registry (HEAD) when the index did not record the size.
func (b *registryBlob) Size(ctx context.Context) (int64, error) {
	if n := b.knownSize(); n > 0 {
		return n, nil
	}
	bud := newBudget(ctx, b.f.opts.fetchTimeout())
	defer bud.stop()
	err := b.retry(bud.ctx, "size", nil, func(ctx context.Context) error {
		resp, err := b.do(ctx, http.MethodHead, "", nil)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return statusErr(resp)
		}
		if resp.ContentLength < 0 {
			return errors.New("registry sent no Content-Length")
		}
		b.learnSize(resp.ContentLength)
		return nil
	})
	if err != nil {
		return 0, err
	}
	return b.knownSize(), nil
}

// Open streams the whole blob. Failures before the body starts are
// retried; a body that breaks later, or goes silent for the attempt
// timeout, fails the caller's read, and the next read fetches again.
func (b *registryBlob) Open(ctx context.Context) (io.ReadCloser, error) {
	// The budget lives as long as the body: every byte renews it.
	bud := newBudget(ctx, b.f.opts.fetchTimeout())
	release, err := b.f.acquire(bud.ctx, b.digest)
	if err != nil {
		bud.stop()
		return nil, err
	}
	var body io.ReadCloser
	err = b.retry(bud.ctx, "", nil, func(ctx context.Context) error {
		resp, err := b.do(ctx, http.MethodGet, "", bud.progress)
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK {
			resp.Body.Close()
			return statusErr(resp)
		}
		if n := b.knownSize(); n > 0 && resp.ContentLength >= 0 && resp.ContentLength != n {
			resp.Body.Close()
			return fmt.Errorf("registry sent %d bytes, the index says %d", resp.ContentLength, n)
		}
		body = resp.Body
		return nil
	})
	if err != nil {
		release()
		bud.stop()
		return nil, err
	}
	done := sync.OnceFunc(func() { release(); bud.stop() })
	return &countingBody{Reader: countio.Reader{R: body, N: &b.stats.bytesFetched}, body: body, release: done}, nil
}

// countingBody counts what is read and gives the fetch slot back on Close.
type countingBody struct {
	countio.Reader
	body    io.Closer
	release func()
}

func (c *countingBody) Close() error {
	err := c.body.Close()
	c.release()
	return err
}

// ReadRange fetches n bytes at off with "Range: bytes=off-(off+n-1)". The
// registry must answer 206 with a matching Content-Range: a 200 (the whole
// blob) is an error rather than a silent download of the whole layer for
// every read. The body is read inside the retry loop, so a connection that
// breaks or stalls mid-body is retried too, resuming after the last byte
// received: the caller verifies what it assembles (spans carry SHA-256
// digests), so the bytes of a broken attempt are kept, never fetched twice.
// The fetch fails once fetch_timeout passes without a byte arriving.
func (b *registryBlob) ReadRange(ctx context.Context, off, n int64) (io.ReadCloser, error) {
	if err := b.checkRange(off, n); err != nil {
		return nil, err
	}
	buf := make([]byte, n)
	if err := b.ReadRangeInto(ctx, off, buf, nil); err != nil {
		return nil, err
	}
	return io.NopCloser(bytes.NewReader(buf)), nil
}

func (b *registryBlob) checkRange(off, n int64) error {
	if off < 0 || n <= 0 {
		return fmt.Errorf("fetch layer %s: invalid range at %d of %d bytes", short(b.digest), off, n)
	}
	if size := b.knownSize(); size > 0 && off+n > size {
		return fmt.Errorf("fetch layer %s: range %d-%d outside blob of %d bytes", short(b.digest), off, off+n-1, size)
	}
	return nil
}

// ReadRangeInto is ReadRange into dst (len(dst) bytes at off), calling
// arrived (when not nil) with how many bytes of dst have arrived each time
// more did: a caller may use dst[:n] while the rest arrives.
func (b *registryBlob) ReadRangeInto(ctx context.Context, off int64, dst []byte, arrived func(n int64)) error {
	n := int64(len(dst))
	if err := b.checkRange(off, n); err != nil {
		return err
	}
	if err := b.recentlyFailed(off, n); err != nil {
		return err
	}
	bud := newBudget(ctx, b.f.opts.fetchTimeout())
	defer bud.stop()
	release, err := b.f.acquire(bud.ctx, b.digest)
	if err != nil {
		return err
	}
	defer release()
	return b.readRangeInto(bud, off, dst, arrived)
}

// readRangeInto fills dst from off with retries, within bud, holding a
// fetch slot.
func (b *registryBlob) readRangeInto(bud *budget, off int64, dst []byte, arrived func(n int64)) error {
	n := int64(len(dst))
	what := fmt.Sprintf("range %d-%d", off, off+n-1)
	var got int64
	err := b.retry(bud.ctx, what, func() int64 { return got }, func(ctx context.Context) error {
		var progress func(int64)
		if arrived != nil {
			progress = func(k int64) { arrived(got + k) }
		}
		k, err := b.readRangeOnce(ctx, off+got, dst[got:], bud, progress)
		got += k
		return err
	})
	if err != nil {
		var gaveUp *fetchGaveUp
		if errors.As(err, &gaveUp) {
			b.noteFailed(off, n, err)
		}
		return err
	}
	return nil
}

// readRangeOnce makes one request for len(dst) bytes at off and returns
// how many of them it received, even when it fails; arrived (when not
// nil) hears how many have arrived as they do.
func (b *registryBlob) readRangeOnce(ctx context.Context, off int64, dst []byte, bud *budget, arrived func(int64)) (int64, error) {
	n := int64(len(dst))
	resp, err := b.do(ctx, http.MethodGet, fmt.Sprintf("bytes=%d-%d", off, off+n-1), bud.progress)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusPartialContent:
		if err := b.checkContentRange(resp.Header.Get("Content-Range"), off, n); err != nil {
			return 0, err
		}
	case http.StatusOK:
		// The whole blob, from its first byte: what a pull-through cache
		// answers while it does not hold the blob yet. The range is read
		// as it passes and the rest of the stream is dropped, so the first
		// read costs the bytes up to its end, not a failure.
		if err := b.skipToRange(resp, off, n); err != nil {
			return 0, err
		}
	default:
		return 0, statusErr(resp)
	}
	var k int
	for k < len(dst) && err == nil {
		var m int
		m, err = resp.Body.Read(dst[k:])
		k += m
		b.stats.bytesFetched.Add(int64(m))
		if m > 0 && arrived != nil {
			arrived(int64(k))
		}
	}
	if k == len(dst) {
		return int64(k), nil // an io.EOF with the last bytes is no failure
	}
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return int64(k), transient{fmt.Errorf("read body after %d of %d bytes: %w", k, n, err)}
}

// skipToRange reads and drops the off bytes before a range from a 200
// answer carrying the whole blob.
func (b *registryBlob) skipToRange(resp *http.Response, off, n int64) error {
	if size := b.knownSize(); size > 0 && resp.ContentLength >= 0 && resp.ContentLength != size {
		return fmt.Errorf("registry ignored the Range header and sent %d bytes, the blob has %d", resp.ContentLength, size)
	}
	if resp.ContentLength >= 0 && resp.ContentLength < off+n {
		return fmt.Errorf("registry ignored the Range header and sent %d bytes, short of the range end %d", resp.ContentLength, off+n)
	}
	b.f.faults.emit(slog.LevelInfo, b.digest, "registry answered a range with the whole blob, reading up to the range",
		"range_start", off, "range_bytes", n, "blob_bytes", resp.ContentLength)
	k, err := io.CopyN(io.Discard, resp.Body, off)
	b.stats.bytesFetched.Add(k)
	if err != nil {
		return transient{fmt.Errorf("skip to the range in a 200 answer after %d of %d bytes: %w", k, off, err)}
	}
	return nil
}

// checkContentRange requires "bytes off-(off+n-1)/total" and learns the
// blob's size from total when the index did not record it.
func (b *registryBlob) checkContentRange(cr string, off, n int64) error {
	bad := fmt.Errorf("Content-Range %q does not match the request", cr)
	spec, ok := strings.CutPrefix(cr, "bytes ")
	if !ok {
		return bad
	}
	rng, total, ok := strings.Cut(spec, "/")
	if !ok {
		return bad
	}
	if rng != fmt.Sprintf("%d-%d", off, off+n-1) {
		return bad
	}
	if total == "*" {
		return nil
	}
	t, err := strconv.ParseInt(total, 10, 64)
	if err != nil || t < off+n {
		return bad
	}
	if size := b.knownSize(); size > 0 && t != size {
		return fmt.Errorf("Content-Range %q: blob has %d bytes, the index says %d", cr, t, size)
	}
	b.learnSize(t)
	return nil
}

// send makes one request through the repository's authenticated transport.
func (b *registryBlob) send(ctx context.Context, method, rng string) (*http.Response, error) {
	rt, err := b.f.transport(ctx, b.repo)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, method, b.url(), nil)
	if err != nil {
		return nil, err
	}
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	b.stats.requests.Add(1)
	// A client, not the bare transport, so that redirects to blob storage
	// are followed (they keep the Range header).
	resp, err := (&http.Client{Transport: rt}).Do(req)
	if err != nil {
		return nil, transient{err}
	}
	return resp, nil
}

// retry runs op until it succeeds, fails for good, its retries are spent
// or ctx (the fetch's budget) ends. An attempt that made progress (moved,
// when not nil, grew) does not count against the retries: a connection
// that keeps breaking while bytes keep arriving is resumed until the range
// is complete. The first retry of a fetch is logged at WARN and the end of
// a fetch that failed at ERROR, rate-limited per layer. Errors name the
// layer and what was asked for.
func (b *registryBlob) retry(ctx context.Context, what string, moved func() int64, op func(context.Context) error) error {
	opts := b.f.opts
	prefix := "fetch layer " + short(b.digest) + ": "
	if what != "" {
		prefix += what + ": "
	}
	start := time.Now()
	var (
		err       error
		tries     int
		failures  int // in a row, without progress
		lastMoved int64
	)
	giveUp := func(err error) error {
		b.f.faults.emit(slog.LevelError, b.digest, "registry fetch failed", "what", what, "tries", tries,
			"elapsed", time.Since(start).Round(time.Millisecond), "error", err)
		// A fetch that gave up after retrying is remembered for a moment
		// (failmemo.go); an error not worth retrying (404) is cheap to
		// ask again.
		var be *budgetError
		if retryable(err) || errors.As(err, &be) {
			return &fetchGaveUp{err}
		}
		return err
	}
	for {
		tries++
		if err = op(ctx); err == nil {
			return nil
		}
		if ctx.Err() != nil {
			cause := giveUpErr(ctx)
			var be *budgetError
			if !errors.As(cause, &be) {
				// The caller gave up (an interrupted read): not a fault.
				return fmt.Errorf("%s%w", prefix, ctx.Err())
			}
			return giveUp(fmt.Errorf("%s%w: last error: %w", prefix, cause, err))
		}
		progressed := false
		if moved != nil {
			if m := moved(); m > lastMoved {
				lastMoved, failures, progressed = m, 0, true
			}
		}
		if !retryable(err) || failures >= opts.retries() {
			break
		}
		// A connection that broke after delivering bytes is resumed at
		// once: the registry is answering.
		wait := opts.backoff(failures)
		if progressed {
			wait = 0
		}
		if ra := retryAfter(err); ra > wait {
			wait = ra
		}
		if tries == 1 {
			b.f.faults.emit(slog.LevelWarn, b.digest, "registry fetch failed, retrying", "what", what, "wait", wait, "error", err)
		} else {
			b.f.log.Debug("retry blob request", "layer", b.digest, "what", what, "try", tries, "wait", wait, "err", err)
		}
		failures++
		// A Retry-After beyond the budget ends the fetch at the budget.
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			cause := giveUpErr(ctx)
			var be *budgetError
			if !errors.As(cause, &be) {
				return fmt.Errorf("%s%w", prefix, ctx.Err())
			}
			return giveUp(fmt.Errorf("%s%w: last error: %w", prefix, cause, err))
		case <-t.C:
		}
	}
	if retryable(err) {
		return giveUp(fmt.Errorf("%s%w (after %d retries)", prefix, err, tries-1))
	}
	return giveUp(fmt.Errorf("%s%w", prefix, err))
}

// fetchGaveUp is a fetch that failed after retrying: its budget ran out,
// or its retries were spent.
type fetchGaveUp struct{ err error }

func (e *fetchGaveUp) Error() string { return e.err.Error() }
func (e *fetchGaveUp) Unwrap() error { return e.err }

// transient marks an error worth retrying.
type transient struct{ err error }

func (t transient) Error() string { return t.err.Error() }
func (t transient) Unwrap() error { return t.err }

// httpStatusError is a response with an unexpected status.
type httpStatusError struct {
	code       int
	status     string
	retryAfter time.Duration
}

func (e *httpStatusError) Error() string { return e.status }

func statusErr(resp *http.Response) error {
	e := &httpStatusError{code: resp.StatusCode, status: resp.Status}
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 {
		e.retryAfter = min(time.Duration(s)*time.Second, 10*time.Second)
	}
	if e.status == "" {
		e.status = strconv.Itoa(resp.StatusCode)
	}
	return e
}

func retryableStatus(code int) bool {
	return code >= 500 || code == http.StatusTooManyRequests || code == http.StatusRequestTimeout
}

func retryable(err error) bool {
	var se *httpStatusError
	if errors.As(err, &se) {
		return retryableStatus(se.code)
	}
	var te *transport.Error
	if errors.As(err, &te) {
		return retryableStatus(te.StatusCode)
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		// A per-attempt timeout of a ranged read is worth retrying; the
		// caller's own cancellation is caught before this is asked.
		return errors.Is(err, context.DeadlineExceeded)
	}
	var tr transient
	var ne net.Error
	return errors.As(err, &tr) || errors.As(err, &ne) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, io.ErrUnexpectedEOF)
}

func retryAfter(err error) time.Duration {
	var se *httpStatusError
	if errors.As(err, &se) {
		return se.retryAfter
	}
	return 0
}

// short abbreviates a digest for messages: "sha256:0123456789ab…".
func short(digest string) string {
	alg, hex, ok := strings.Cut(digest, ":")
	if !ok || len(hex) <= 12 {
		return digest
	}
	return alg + ":" + hex[:12] + "…"
}
