package mounter

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/clipd/clipd/api"
	"github.com/clipd/clipd/fetcher"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
)

// processMetrics are the figures a serving process keeps in Prometheus
// form: latency histograms and error counters by registry host. The daemon
// fetches them in text form with the mount's other figures (GET /v1/stats)
// and labels them with the mount's id on its /metrics.
type processMetrics struct {
	reg           *prometheus.Registry
	fetchSeconds  *prometheus.HistogramVec
	fetchErrors   *prometheus.CounterVec
	requestErrors *prometheus.CounterVec
	readSeconds   prometheus.Histogram
	// failedFetches counts span fetches that failed for good, for the
	// JSON figures (clipd ls) and the summary at unmount.
	failedFetches atomic.Int64
}

var _ fetcher.Observer = (*processMetrics)(nil)

func newProcessMetrics() *processMetrics {
	m := &processMetrics{
		reg: prometheus.NewRegistry(),
		fetchSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "clipd_span_fetch_duration_seconds",
			Help:    "Time to fetch a range of spans from a registry, retries included.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"host"}),
		fetchErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clipd_span_fetch_errors_total",
			Help: "Span fetches that failed (after their retries), and spans whose bytes failed verification, by kind.",
		}, []string{"host", "kind"}),
		requestErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clipd_registry_request_errors_total",
			Help: "Blob requests to a registry that failed, each try counted (retried ones too), by kind.",
		}, []string{"host", "kind"}),
		readSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "clipd_fuse_read_duration_seconds",
			Help:    "Time to answer a read request of the kernel.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
	}
	m.reg.MustRegister(m.fetchSeconds, m.fetchErrors, m.requestErrors, m.readSeconds)
	return m
}

// SpanFetch implements fetcher.Observer.
func (m *processMetrics) SpanFetch(host string, d time.Duration, err error) {
	m.fetchSeconds.WithLabelValues(host).Observe(d.Seconds())
	if err != nil {
		kind := fetcher.ErrorKind(err)
		// A reader that gave up (an interrupted read) is no failure of
		// the mount; the counter still shows it by kind.
		if kind != fetcher.KindCanceled {
			m.failedFetches.Add(1)
		}
		m.fetchErrors.WithLabelValues(host, kind).Inc()
	}
}

// FetchError implements fetcher.Observer.
func (m *processMetrics) FetchError(host, kind string) {
	m.fetchErrors.WithLabelValues(host, kind).Inc()
}

// observeRead is the mount's mount.ReadObserver. Interrupted reads are
// the reader's doing and are left out of the latency.
func (m *processMetrics) observeRead(d time.Duration, errno syscall.Errno) {
	if errno != syscall.EINTR {
		m.readSeconds.Observe(d.Seconds())
	}
}

// text is the exposition of these figures in the Prometheus text format.
func (m *processMetrics) text() (string, error) {
	fams, err := m.reg.Gather()
	if err != nil {
		return "", err
	}
	var b bytes.Buffer
	enc := expfmt.NewEncoder(&b, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, f := range fams {
		if err := enc.Encode(f); err != nil {
			return "", err
		}
	}
	return b.String(), nil
}

// transport counts the failed tries of blob requests under the fetcher's
// retries, which hide them from the reader: a registry answering 5xx half
// the time shows here before any read fails.
func (m *processMetrics) transport(next http.RoundTripper) http.RoundTripper {
	if next == nil {
		next = fetcher.DefaultTransport()
	}
	return &countingTransport{next: next, m: m}
}

type countingTransport struct {
	next http.RoundTripper
	m    *processMetrics
}

func (t *countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(req)
	// Only blob requests: a registry's ping and token exchange answer 401
	// as part of their protocol.
	if !strings.Contains(req.URL.Path, "/blobs/") {
		return resp, err
	}
	host := req.URL.Host
	switch {
	case err != nil:
		t.failed(req.Context(), host, err)
	case resp.StatusCode >= 500:
		t.m.requestErrors.WithLabelValues(host, fetcher.KindStatus5x).Inc()
	case resp.StatusCode >= 400:
		t.m.requestErrors.WithLabelValues(host, fetcher.KindStatus4x).Inc()
	default:
		resp.Body = &countingBody{ReadCloser: resp.Body, t: t, ctx: req.Context(), host: host}
	}
	return resp, err
}

// failed counts a failed try, unless the reader gave up (not the
// registry's fault).
func (t *countingTransport) failed(ctx context.Context, host string, err error) {
	if errors.Is(ctx.Err(), context.Canceled) {
		return
	}
	t.m.requestErrors.WithLabelValues(host, fetcher.ErrorKind(err)).Inc()
}

// countingBody counts a body that breaks off (a reset, a stall) once.
type countingBody struct {
	io.ReadCloser
	t       *countingTransport
	ctx     context.Context
	host    string
	counted bool
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF && !b.counted {
		b.counted = true
		b.t.failed(b.ctx, b.host, err)
	}
	return n, err
}

// logSummary writes the one line that sums up a filesystem's life, once it
// is unmounted.
func (m *Filesystem) logSummary() {
	st, k := m.Stats(), m.fs.Stats()
	attrs := []any{"mountpoint", m.fs.Mountpoint(), "duration", time.Since(m.started).Round(time.Millisecond),
		"reads", st.Reads, "bytes_read", st.BytesRead, "requests", st.Requests, "bytes_fetched", st.BytesFetched,
		"cache_hits", st.CacheHits, "cache_misses", st.CacheMisses, "read_errors", st.ReadErrors, "fetch_errors", st.FetchErrors}
	if !k.FirstRead.IsZero() {
		attrs = append(attrs, "first_byte", k.FirstRead.Sub(m.started).Round(time.Millisecond))
	}
	if st.PrefetchPlanned > 0 {
		attrs = append(attrs, "prefetch_planned", st.PrefetchPlanned, "prefetch_fetched", st.PrefetchFetched,
			"prefetch_used", st.PrefetchUsed, "prefetch_wasted", st.PrefetchWasted)
	}
	if end, ok := m.replayEnd.Load().(string); ok {
		// waiting: never started (no read touched the profile);
		// diverged: cancelled (prefetch_cancelled).
		attrs = append(attrs, "replay", end, "prefetch_cancelled", m.layers.Stats().PrefetchCancelled)
	}
	if st.ReadErrors > 0 {
		attrs = append(attrs, "last_error", st.LastError)
		m.log.Warn("mount ended", attrs...)
		return
	}
	m.log.Info("mount ended", attrs...)
}

// controlStats is the answer of GET /v1/stats: the mount's figures and its
// Prometheus exposition (Metrics; empty from a serving process of an older
// clipd, whose answer is the figures alone).
type controlStats struct {
	api.MountStats
	Metrics string `json:"metrics,omitempty"`
}

func (m *Filesystem) controlStats() controlStats {
	cs := controlStats{MountStats: m.Stats()}
	text, err := m.metrics.text()
	if err != nil {
		m.log.Warn("gather metrics", "err", err)
	}
	cs.Metrics = text
	return cs
}

// Metrics is the Prometheus exposition the serving process gave with its
// latest figures (daemon.MetricsSource).
func (p *procMount) Metrics() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.lastMetrics
}
