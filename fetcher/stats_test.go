package fetcher

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/clipd/clipd/internal/testenv"
	"github.com/clipd/clipd/zran"
)

func TestErrorKind(t *testing.T) {
	for _, c := range []struct {
		err  error
		want string
	}{
		{fmt.Errorf("fetch layer x: %w (after 4 retries)", &httpStatusError{code: 503, status: "503 Service Unavailable"}), KindStatus5x},
		{fmt.Errorf("fetch layer x: %w", &httpStatusError{code: 404, status: "404 Not Found"}), KindStatus4x},
		{fmt.Errorf("fetch layer x: %w", &httpStatusError{code: 429, status: "429 Too Many Requests"}), KindStatus4x},
		{fmt.Errorf("fetch layer x: %w", transient{fmt.Errorf("read body: %w", syscall.ECONNRESET)}), KindReset},
		{transient{fmt.Errorf("read body: %w", io.ErrUnexpectedEOF)}, KindReset},
		{fmt.Errorf("dial: %w", syscall.ECONNREFUSED), KindRefused},
		{fmt.Errorf("fetch layer x: %w", context.DeadlineExceeded), KindTimeout},
		{fmt.Errorf("fetch layer x: %w", context.Canceled), KindCanceled},
		{fmt.Errorf("read layer x: span 3: %w", zran.ErrDigest), KindDigest},
		{errors.New("fetch layer x: digest mismatch: blob hashes to sha256:..."), KindDigest},
		{errors.New("registry ignored the Range header"), KindOther},
	} {
		if got := ErrorKind(c.err); got != c.want {
			t.Errorf("ErrorKind(%v) = %s, want %s", c.err, got, c.want)
		}
	}
}

// recorder is an Observer that keeps what it is told.
type recorder struct {
	mu      sync.Mutex
	fetches []error
	hosts   map[string]bool
	kinds   []string
}

func (r *recorder) SpanFetch(host string, d time.Duration, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.hosts[host] = true
	r.fetches = append(r.fetches, err)
}

func (r *recorder) FetchError(host, kind string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.kinds = append(r.kinds, kind)
}

// TestObserverSeesSpanFetches: every ranged fetch from a registry is
// reported once with its host and outcome, retries included in it; bytes
// that fail verification are reported as a digest error.
func TestObserverSeesSpanFetches(t *testing.T) {
	e := newEnv(t)
	rec := &recorder{hosts: map[string]bool{}}
	f, _ := newFetcher(t, t.TempDir(), Options{Retries: 1, RetryBackoff: 10 * time.Millisecond, Observer: rec})
	ls := openLayers(t, f, e.fix.archive(e.src))
	if _, err := ls.ReaderAt(0).ReadAt(make([]byte, 100), 0); err != nil {
		t.Fatal(err)
	}
	e.proxy.SetFail(func(r *http.Request) int {
		if testenv.BlobDigest(r.URL.Path) != "" {
			return http.StatusBadGateway
		}
		return 0
	})
	if _, err := ls.ReaderAt(0).ReadAt(make([]byte, 100), int64(len(e.fix.layers[0].tar))-200); err == nil {
		t.Fatal("read with the registry failing succeeded")
	}
	e.proxy.SetFail(nil)
	rec.mu.Lock()
	defer rec.mu.Unlock()
	// The first read may fetch ahead too: successes, then one failure.
	n := len(rec.fetches)
	if n < 2 || rec.fetches[0] != nil || rec.fetches[n-1] == nil || ErrorKind(rec.fetches[n-1]) != KindStatus5x ||
		!rec.hosts[e.proxy.Addr] || len(rec.hosts) != 1 {
		t.Errorf("observed fetches %v from %v, want successes then one 5xx failure from %s", rec.fetches, rec.hosts, e.proxy.Addr)
	}
	for _, err := range rec.fetches[1 : n-1] {
		if err != nil {
			t.Errorf("a fetch before the registry failed was reported failed: %v", err)
		}
	}
}
