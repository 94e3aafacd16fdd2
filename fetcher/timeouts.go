package fetcher

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"time"
)

// DefaultFetchTimeout is the default of Options.FetchTimeout
// (registry.fetch_timeout).
const DefaultFetchTimeout = 30 * time.Second

// maxAttemptTimeout bounds how long one request waits for its response
// headers (connect, TLS, token exchange included) and how long its body may
// go without a byte. A stalled connection then turns into a retry, on a new
// connection, well inside the fetch's budget.
const maxAttemptTimeout = 10 * time.Second

// fetchTimeout is how long a fetch may go without progress, retries
// included, before it fails.
func (o Options) fetchTimeout() time.Duration {
	if o.FetchTimeout <= 0 {
		return DefaultFetchTimeout
	}
	return o.FetchTimeout
}

// attemptTimeout leaves room for at least three attempts in the budget, so
// that a short fetch_timeout still retries once a connection stalls.
func (o Options) attemptTimeout() time.Duration {
	return min(maxAttemptTimeout, max(o.fetchTimeout()/3, 500*time.Millisecond))
}

// lockWait bounds how long a process waits for a span another process is
// fetching while that fetch receives nothing, before it fetches the span
// itself: a stuck fetch elsewhere must not take this process's budget.
func (o Options) lockWait() time.Duration {
	return min(2*time.Second, o.fetchTimeout()/4)
}

// errStalled marks a request that got no response, or no body bytes, within
// the attempt timeout.
var errStalled = errors.New("registry stalled")

// budgetError is the cause of a fetch abandoned for want of progress.
type budgetError struct{ d time.Duration }

func (e *budgetError) Error() string {
	return fmt.Sprintf("no progress for %s (registry.fetch_timeout)", e.d)
}

// budget is the deadline of one fetch, retries included. Every byte that
// arrives renews it: a slow registry that keeps sending completes, while a
// stalled one fails the fetch fetch_timeout after its last byte.
type budget struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
	d      time.Duration
	t      *time.Timer
	hook   func() // from the context (withProgressHook), or nil
}

func newBudget(parent context.Context, d time.Duration) *budget {
	ctx, cancel := context.WithCancelCause(parent)
	b := &budget{ctx: ctx, cancel: cancel, d: d}
	b.hook, _ = parent.Value(progressHookKey{}).(func())
	b.t = time.AfterFunc(d, func() { cancel(&budgetError{d}) })
	return b
}

// progress renews the budget. Once it ran out, the fetch stays failed.
func (b *budget) progress() {
	if b.ctx.Err() == nil {
		b.t.Reset(b.d)
	}
	if b.hook != nil {
		b.hook()
	}
}

type progressHookKey struct{}

// withProgressHook returns ctx carrying fn, which the fetches made under ctx
// call as bytes arrive, at most once per every: the cache lock holder tells
// waiting processes that its fetch is alive.
func withProgressHook(ctx context.Context, every time.Duration, fn func()) context.Context {
	var last atomic.Int64
	return context.WithValue(ctx, progressHookKey{}, func() {
		now := time.Now().UnixNano()
		if prev := last.Load(); now-prev >= int64(every) && last.CompareAndSwap(prev, now) {
			fn()
		}
	})
}

// stop ends the budget when the fetch is over.
func (b *budget) stop() {
	b.t.Stop()
	b.cancel(nil)
}

// giveUpErr names why a fetch ended: its budget, or the caller's own
// cancellation.
func giveUpErr(ctx context.Context) error {
	if c := context.Cause(ctx); c != nil {
		var be *budgetError
		if errors.As(c, &be) {
			return c
		}
	}
	return ctx.Err()
}

// do sends one request bounded by the attempt timeout: the response headers
// must arrive within it, and then the body may not go silent for longer.
// onProgress (may be nil) is called for every read that returned bytes.
// Closing the body stops the timer.
func (b *registryBlob) do(ctx context.Context, method, rng string, onProgress func()) (*http.Response, error) {
	d := b.f.opts.attemptTimeout()
	actx, cancel := context.WithCancelCause(ctx)
	var headers atomic.Bool
	t := time.AfterFunc(d, func() {
		if headers.Load() {
			cancel(fmt.Errorf("%w: no body bytes for %s", errStalled, d))
		} else {
			cancel(fmt.Errorf("%w: no response within %s", errStalled, d))
		}
	})
	resp, err := b.send(actx, method, rng)
	if err != nil {
		t.Stop()
		cause := context.Cause(actx)
		cancel(nil)
		if errors.Is(cause, errStalled) {
			return nil, transient{cause}
		}
		return nil, err
	}
	headers.Store(true)
	t.Reset(d)
	resp.Body = &idleBody{rc: resp.Body, ctx: actx, t: t, d: d, cancel: cancel, onProgress: onProgress}
	return resp, nil
}

// idleBody cancels its request when no byte arrives for d, so that a body
// that stops mid-way fails instead of blocking the read.
type idleBody struct {
	rc         io.ReadCloser
	ctx        context.Context
	t          *time.Timer
	d          time.Duration
	cancel     context.CancelCauseFunc
	onProgress func()
}

func (b *idleBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if n > 0 {
		b.t.Reset(b.d)
		if b.onProgress != nil {
			b.onProgress()
		}
	}
	if err != nil && err != io.EOF {
		if c := context.Cause(b.ctx); errors.Is(c, errStalled) {
			return n, transient{c}
		}
	}
	return n, err
}

func (b *idleBody) Close() error {
	b.t.Stop()
	err := b.rc.Close()
	b.cancel(nil)
	return err
}
