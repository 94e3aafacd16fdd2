package fetcher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/clipd/clipd/cache"
	"github.com/clipd/clipd/zran"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"golang.org/x/sync/singleflight"
)

// Fetcher is shared by every mount of a process: it holds the cache, the
// authenticated transports, and deduplicates concurrent fetches of the same
// blob.
type Fetcher struct {
	store *cache.Store
	opts  Options
	log   *slog.Logger
	group singleflight.Group
	// flights are the spans being fetched by this process (flights.go).
	flights flights
	// slots bounds registry requests in flight, so that a burst of reads
	// (or a slow registry) cannot open unbounded connections, and serves
	// demand reads before background fetches (gate.go).
	slots *gate
	// ahead bounds read-ahead fetches in flight.
	ahead chan struct{}
	// serialMisses makes a read fetch all its missing spans with one
	// request, as before parallel misses (benchmarks compare the two).
	serialMisses bool
	host         hostStats
	// faults logs retries and failures of registry fetches, rate-limited
	// per layer.
	faults *faultLog
	// decoder decodes every span of the process, reusing its zstd
	// decoders.
	decoder func() (*zran.SpanDecoder, error)
	// credTTL is how long resolved credentials are reused
	// (credrefresh.go).
	credTTL time.Duration

	mu         sync.Mutex
	transports map[string]http.RoundTripper // by repository
	detected   map[string]string            // compression by layer digest
	streams    map[string]*spanStream       // oversized spans being streamed, by span key
}

// New returns a Fetcher that keeps what it fetches in store.
func New(store *cache.Store, opts Options) *Fetcher {
	return &Fetcher{
		store:      store,
		opts:       opts,
		log:        opts.logger(),
		faults:     newFaultLog(opts.logger()),
		slots:      newGate(opts.maxFetches()),
		ahead:      make(chan struct{}, maxReadAheads),
		transports: map[string]http.RoundTripper{},
		detected:   map[string]string{},
		streams:    map[string]*spanStream{},
		decoder:    sync.OnceValues(zran.NewSpanDecoder),
		credTTL:    DefaultCredentialTTL,
	}
}

// transport returns the authenticated transport for repo, creating it (a
// ping and maybe a token exchange) on first use. A failure is not
// remembered: the next request tries again.
func (f *Fetcher) transport(ctx context.Context, repo name.Repository) (http.RoundTripper, error) {
	key := repo.Name()
	f.mu.Lock()
	rt := f.transports[key]
	f.mu.Unlock()
	if rt != nil {
		return rt, nil
	}
	var auth authn.Authenticator
	fresh, err := newFreshAuth(f.opts.keychain(), repo, f.credTTL)
	if err == nil {
		auth = fresh
		if a, _ := fresh.current(); a == authn.Anonymous {
			// Keeps go-containerregistry's anonymous paths (no
			// Authorization header, its "no credentials" hint).
			auth = authn.Anonymous
		}
	}
	if err != nil {
		return nil, fmt.Errorf("credentials for %s: %w", repo.RegistryStr(), err)
	}
	rt, err = transport.NewWithContext(ctx, repo.Registry, auth, f.opts.transport(), []string{repo.Scope(transport.PullScope)})
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", repo.RegistryStr(), err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if old := f.transports[key]; old != nil {
		return old, nil
	}
	f.transports[key] = rt
	return rt, nil
}

func (f *Fetcher) knownCompression(digest string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.detected[digest]
}

func (f *Fetcher) rememberCompression(digest, c string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.detected[digest] = c
}

// acquire takes a fetch slot for a request, waiting while MaxFetches
// requests are in flight; the returned func gives it back. A request of a
// background fetch uses the slot the fetch took (gate.go); any other is a
// demand read's, served before waiting background fetches.
func (f *Fetcher) acquire(ctx context.Context, digest string) (func(), error) {
	if slotHeld(ctx) {
		return func() {}, nil
	}
	release, err := f.slots.acquire(ctx, false)
	if err != nil {
		return nil, fmt.Errorf("fetch layer %s: waiting for a fetch slot: %w", short(digest), err)
	}
	return release, nil
}

// background runs fn, a fetch nobody is waiting for (prefetch,
// read-ahead), once the gate gives it a slot behind every demand read; the
// requests fn makes use that slot.
func (f *Fetcher) background(ctx context.Context, fn func(ctx context.Context) error) error {
	release, err := f.slots.acquire(ctx, true)
	if err != nil {
		return err
	}
	defer release()
	return fn(withHeldSlot(ctx))
}

// prefetching runs fn like background, but takes its slot only while no
// request of the workload (demand read, read-ahead) is in flight or waiting
// (gate.acquireIdle): a prefetch request never starts beside one.
// A replay the workload has confirmed (replayConfirmed) stops yielding: its
// spans are the ones the workload is about to read.
func (f *Fetcher) prefetching(ctx context.Context, fn func(ctx context.Context) error) error {
	if replayConfirmed(ctx) {
		return f.background(ctx, fn)
	}
	release, err := f.slots.acquireIdle(ctx)
	if err != nil {
		return err
	}
	defer release()
	return fn(withHeldSlot(ctx))
}

func isCtxErr(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}
