package fetcher

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// DefaultHostBackoff is how long a registry host that failed (connection
// error, timeout, 5xx) is passed over before it is tried again.
const DefaultHostBackoff = 30 * time.Second

// mirrorTransport sends the reads (GET and HEAD) meant for a registry to
// the hosts hosts.toml lists for it, in order, the registry's server last:
// a connection error, a timeout or a 5xx moves to the next host and the
// host that failed is passed over for a while, so that a dead mirror costs
// one failed request, not one per span. A 404 moves on too (a mirror that
// does not hold the content) without marking the host. Writes go to the
// registry as asked.
//
// It sits below go-containerregistry's authenticating transport, which
// sees the registry's own URL: the ping, the token and the Authorization
// header are the registry's, and a host that answers 401 passes that
// challenge up to it like the registry would.
type mirrorTransport struct {
	hosts *HostsConfig
	base  http.RoundTripper
	log   *slog.Logger
}

// hostState is what a HostsConfig learns as it is used, shared by every
// transport made from it: which hosts failed a moment ago, and the
// transports of hosts with TLS settings of their own.
type hostState struct {
	backoff time.Duration
	now     func() time.Time

	mu     sync.Mutex
	down   map[string]time.Time // host URL -> passed over until
	perTLS map[*RegistryHost]http.RoundTripper
}

func (m *mirrorTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Method != http.MethodGet && req.Method != http.MethodHead {
		return m.base.RoundTrip(req)
	}
	rest, ok := strings.CutPrefix(req.URL.Path, "/v2")
	if !ok {
		return m.base.RoundTrip(req)
	}
	cands := m.candidates(req.URL, needed(rest))
	if len(cands) == 0 {
		return m.base.RoundTrip(req)
	}
	var (
		resp *http.Response
		err  error
	)
	for i, h := range cands {
		last := i == len(cands)-1
		r := req.Clone(req.Context())
		r.URL.Scheme = h.URL.Scheme
		r.URL.Host = h.URL.Host
		r.URL.Path = h.URL.Path + rest
		r.URL.RawPath = ""
		r.Host = ""
		for k, vs := range h.Header {
			for _, v := range vs {
				r.Header.Add(k, v)
			}
		}
		start := m.hosts.state.now()
		resp, err = m.transportFor(h).RoundTrip(r)
		if err != nil && req.Context().Err() != nil {
			// The attempt's own timeout (timeouts.go) ended a host that
			// did not answer: pass it over, so that the retry goes to the
			// next host. Otherwise the caller gave up: not the host's fault.
			if cause := context.Cause(req.Context()); errors.Is(cause, errStalled) {
				m.markDown(h)
				m.hosts.state.log(m.log, h, rest, m.hosts.state.now().Sub(start), cause)
			}
			return nil, err
		}
		switch {
		case err != nil || resp.StatusCode >= 500:
			m.markDown(h)
			why := "status " + statusText(resp)
			if err != nil {
				why = err.Error()
			}
			if !last {
				m.hosts.state.log(m.log, h, rest, m.hosts.state.now().Sub(start), errors.New(why))
			}
		case resp.StatusCode == http.StatusNotFound && !last:
			m.log.Debug("registry host has no such content, trying the next", "host", h.URL.Host, "path", rest)
		default:
			m.markUp(h)
			resp.Body = &hostBody{ReadCloser: resp.Body, ctx: req.Context(), m: m, h: h, path: rest, start: start, last: last}
			return resp, nil
		}
		if last {
			break
		}
		if resp != nil {
			// Drain a little so that the connection can be reused.
			io.CopyN(io.Discard, resp.Body, 4096)
			resp.Body.Close()
		}
	}
	return resp, err
}

// hostBody watches a body a host is sending: a host that stalls (the
// attempt's inactivity timeout, timeouts.go) or cuts the connection part-way
// through is passed over like one that failed before its headers, so that
// the fetch's resumed request goes to the next host rather than back to the
// one that just failed. The caller's own cancellation, or closing the body
// early, is not the host's fault.
type hostBody struct {
	io.ReadCloser
	ctx   context.Context
	m     *mirrorTransport
	h     *RegistryHost
	path  string
	start time.Time
	last  bool // no host after it: nothing to log about trying the next
	once  sync.Once
}

func (b *hostBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF {
		if b.ctx.Err() == nil || errors.Is(context.Cause(b.ctx), errStalled) {
			b.once.Do(func() {
				b.m.markDown(b.h)
				if b.last {
					return
				}
				cause := err
				if c := context.Cause(b.ctx); errors.Is(c, errStalled) {
					cause = c
				}
				b.m.hosts.state.log(b.m.log, b.h, b.path, b.m.hosts.state.now().Sub(b.start), fmt.Errorf("body broke: %w", cause))
			})
		}
	}
	return n, err
}

func (st *hostState) log(log *slog.Logger, h *RegistryHost, path string, elapsed time.Duration, err error) {
	log.Warn("registry host failed, trying the next", "host", h.URL.Host, "path", path,
		"elapsed", elapsed.Round(time.Millisecond), "error", err, "passed_over_for", st.backoff)
}

func statusText(resp *http.Response) string {
	if resp == nil {
		return ""
	}
	return resp.Status
}

// needed is the capability a request of the registry API (the path after
// /v2) needs: resolving a tag, or pulling anything named by digest.
func needed(rest string) string {
	if i := strings.LastIndex(rest, "/manifests/"); i >= 0 && !strings.Contains(rest[i:], ":") {
		return CapResolve
	}
	return CapPull
}

// candidates are the hosts able to serve the request, in order, the hosts
// in their back-off after the others: when every host failed a moment
// ago, they are all tried again rather than failing without a request.
func (m *mirrorTransport) candidates(u *url.URL, capability string) []*RegistryHost {
	registry := u.Host
	hs := m.hosts.Hosts(registry)
	if len(hs) == 0 {
		return nil
	}
	now := m.hosts.state.now()
	m.hosts.state.mu.Lock()
	defer m.hosts.state.mu.Unlock()
	var up, down []*RegistryHost
	for _, h := range hs {
		if !h.Can(capability) {
			continue
		}
		if until, ok := m.hosts.state.down[h.URL.String()]; ok && now.Before(until) {
			down = append(down, h)
			continue
		}
		up = append(up, h)
	}
	if len(m.hosts.byRegistry[registry]) == 0 {
		// _default lists mirrors only: the registry itself comes last.
		up = append(up, &RegistryHost{URL: &url.URL{Scheme: u.Scheme, Host: registry, Path: "/v2"}, Capabilities: []string{capability}})
	}
	return append(up, down...)
}

func (m *mirrorTransport) markDown(h *RegistryHost) {
	m.hosts.state.mu.Lock()
	defer m.hosts.state.mu.Unlock()
	m.hosts.state.down[h.URL.String()] = m.hosts.state.now().Add(m.hosts.state.backoff)
}

func (m *mirrorTransport) markUp(h *RegistryHost) {
	m.hosts.state.mu.Lock()
	defer m.hosts.state.mu.Unlock()
	delete(m.hosts.state.down, h.URL.String())
}

// transportFor is the base transport, or a clone of it with the host's
// TLS settings.
func (m *mirrorTransport) transportFor(h *RegistryHost) http.RoundTripper {
	if h.TLS == nil {
		return m.base
	}
	m.hosts.state.mu.Lock()
	defer m.hosts.state.mu.Unlock()
	if rt := m.hosts.state.perTLS[h]; rt != nil {
		return rt
	}
	var t *http.Transport
	if bt, ok := m.base.(*http.Transport); ok {
		t = bt.Clone()
	} else {
		t = http.DefaultTransport.(*http.Transport).Clone()
	}
	t.TLSClientConfig = h.TLS.Clone()
	m.hosts.state.perTLS[h] = t
	return t
}
