package fetcher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"

	"github.com/clipd/clipd/cache"
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

	mu         sync.Mutex
	transports map[string]http.RoundTripper // by repository
	detected   map[string]string            // compression by layer digest
}

// New returns a Fetcher that keeps what it fetches in store.
func New(store *cache.Store, opts Options) *Fetcher {
	return &Fetcher{
		store:      store,
		opts:       opts,
		log:        opts.logger(),
		transports: map[string]http.RoundTripper{},
		detected:   map[string]string{},
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
	auth, err := f.opts.keychain().Resolve(repo)
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

func isCtxErr(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}
