package fetcher

import (
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
)

// Options configure registry access.
type Options struct {
	// Insecure lists host[:port] spoken to over plain HTTP besides localhost.
	Insecure []string
	// Keychain resolves credentials; nil means authn.DefaultKeychain
	// (docker config.json).
	Keychain authn.Keychain
	// Transport is the base HTTP transport; nil means http.DefaultTransport.
	Transport http.RoundTripper
	Logger    *slog.Logger
	// Retries is how many times a blob request is retried after a 5xx, a
	// 429 or a connection error; 0 means 4, negative means never.
	Retries int
	// RetryBackoff is the wait before the first retry, doubled each time
	// (capped at 5s); 0 means 200ms.
	RetryBackoff time.Duration
	// FetchTimeout is how long a fetch may go without receiving a byte,
	// retries included, before the read fails (registry.fetch_timeout): the
	// time from a stalled registry to EIO. 0 means DefaultFetchTimeout.
	FetchTimeout time.Duration
	// MaxFetches bounds the registry requests in flight at once for the
	// whole Fetcher (every mount it serves); 0 means DefaultMaxFetches.
	MaxFetches int
	// Hosts, when set, sends the reads of the registries it configures to
	// their mirrors first, with failover (registry.config_path, hosts.toml;
	// mirrors.go).
	Hosts *HostsConfig
	// Observer, when set, is told of every span fetch (stats.go).
	Observer Observer
	// PrefetchParallel bounds the requests one Prefetch has in flight
	// (prefetch.go); 0 means DefaultPrefetchParallel. Prefetch requests
	// also never hold more than three quarters of MaxFetches slots, and
	// demand reads go before them for a free slot (gate.go).
	PrefetchParallel int
}

// DefaultPrefetchParallel is the default bound of one Prefetch's requests
// in flight.
const DefaultPrefetchParallel = 4

func (o Options) prefetchParallel() int {
	if o.PrefetchParallel <= 0 {
		return DefaultPrefetchParallel
	}
	return o.PrefetchParallel
}

// DefaultMaxFetches is the default bound of concurrent registry requests.
const DefaultMaxFetches = 8

func (o Options) maxFetches() int {
	if o.MaxFetches <= 0 {
		return DefaultMaxFetches
	}
	return o.MaxFetches
}

func (o Options) keychain() authn.Keychain {
	if o.Keychain != nil {
		return o.Keychain
	}
	return authn.DefaultKeychain
}

// DefaultTransport is the transport of a Fetcher whose Options name none:
// http.DefaultTransport's settings, but keeping an idle connection per
// host for every fetch slot. http.DefaultTransport keeps 2: after a burst
// of parallel span requests (a replay's, a read's parallel misses, its
// read-aheads) every request past the second dials again, a round trip
// more for each on a link with latency.
var DefaultTransport = sync.OnceValue(func() http.RoundTripper {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = 64
	return t
})

func (o Options) transport() http.RoundTripper {
	base := o.Transport
	if base == nil {
		base = DefaultTransport()
	}
	if o.Hosts != nil {
		return &mirrorTransport{hosts: o.Hosts, base: base, log: o.logger()}
	}
	return base
}

func (o Options) logger() *slog.Logger {
	if o.Logger != nil {
		return o.Logger
	}
	return slog.Default()
}

func (o Options) retries() int {
	switch {
	case o.Retries < 0:
		return 0
	case o.Retries == 0:
		return 4
	}
	return o.Retries
}

func (o Options) backoff(attempt int) time.Duration {
	d := o.RetryBackoff
	if d <= 0 {
		d = 200 * time.Millisecond
	}
	for range attempt {
		d *= 2
		if d >= 5*time.Second {
			return 5 * time.Second
		}
	}
	return d
}
