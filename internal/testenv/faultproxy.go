package testenv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Fault is what a FaultProxy does to the requests of a path pattern. The
// zero Fault passes requests through. Fields combine: Rate with ResetAfter
// is a slow connection that also breaks.
type Fault struct {
	// Stall accepts the request and never answers, until the client gives
	// up or the fault changes.
	Stall bool
	// Status answers with this status (401, 404, 429, 5xx) without asking
	// the registry.
	Status int
	// RetryAfter, with Status, is sent as Retry-After (seconds).
	RetryAfter int
	// Rate, when > 0, sends the body at this many bytes per second.
	Rate int
	// ResetAfter, when > 0, cuts the connection after this many body bytes
	// of every response (the client sees the body end early).
	ResetAfter int64
	// Corrupt flips the bits of the first byte of every response body.
	Corrupt bool
	// StallAfter, when > 0, stops sending after this many body bytes of
	// every response and holds the connection open without a byte, until
	// the client gives up or the fault changes: a host that dies mid-body.
	StallAfter int64
}

// Pass, Stall, Trickle, Status, Reset and WrongBytes are the usual faults.
func Pass() Fault                   { return Fault{} }
func Stall() Fault                  { return Fault{Stall: true} }
func Trickle(bytesPerSec int) Fault { return Fault{Rate: bytesPerSec} }
func Status(code int) Fault         { return Fault{Status: code} }
func Reset(after int64) Fault       { return Fault{ResetAfter: after} }
func WrongBytes() Fault             { return Fault{Corrupt: true} }

// StallAfter sends n body bytes of every response, then nothing.
func StallAfter(n int64) Fault { return Fault{StallAfter: n} }

// FaultRequest is one request seen by a FaultProxy.
type FaultRequest struct {
	Method, Path string
	Range        string // the Range header, "" when absent
	Status       int    // the status sent, 0 for a stalled request
	Bytes        int64  // body bytes sent
}

// FaultProxy is an HTTP reverse proxy in front of a registry that injects
// faults per path pattern, and counts requests and body bytes per blob.
type FaultProxy struct {
	// Addr is "127.0.0.1:PORT", usable as a registry host.
	Addr string

	target string
	rt     *http.Transport
	bytes  atomic.Int64

	mu      sync.Mutex
	rules   []faultRule
	changed chan struct{}   // closed and replaced whenever the rules change
	log     []*FaultRequest // each logged when its answer starts, bytes counted before they are written
	stalled int
}

type faultRule struct {
	pattern string
	fault   Fault
}

// StartFaultProxy proxies to the registry at target ("host:port") until the
// test ends. Every request passes until SetFault says otherwise.
func StartFaultProxy(t testing.TB, target string) *FaultProxy {
	t.Helper()
	p := &FaultProxy{target: target, rt: &http.Transport{}, changed: make(chan struct{})}
	srv := httptest.NewServer(p)
	t.Cleanup(srv.Close)
	t.Cleanup(p.rt.CloseIdleConnections)
	// Runs before srv.Close, which waits for every handler: stalled ones
	// are let go first.
	t.Cleanup(func() {
		p.Clear()
		srv.CloseClientConnections()
	})
	p.Addr = strings.TrimPrefix(srv.URL, "http://")
	return p
}

// SetFault applies f to every request whose path contains pattern ("" is
// every path). Rules are matched in the order they were set; setting a
// pattern again replaces its rule. Requests stalled by an earlier rule are
// released (they end without an answer).
func (p *FaultProxy) SetFault(pattern string, f Fault) {
	p.mu.Lock()
	defer p.mu.Unlock()
	replaced := false
	for i := range p.rules {
		if p.rules[i].pattern == pattern {
			p.rules[i].fault, replaced = f, true
		}
	}
	if !replaced {
		p.rules = append(p.rules, faultRule{pattern, f})
	}
	p.changeLocked()
}

// Clear removes every fault: all requests pass again.
func (p *FaultProxy) Clear() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rules = nil
	p.changeLocked()
}

func (p *FaultProxy) changeLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// Bytes returns how many response body bytes the proxy sent.
func (p *FaultProxy) Bytes() int64 { return p.bytes.Load() }

// Requests returns the requests whose path contains pattern, in the order
// their answers started. A request is logged before its status is sent and
// its bytes are counted before they are written, so whatever a client has
// received is already counted when it looks.
func (p *FaultProxy) Requests(pattern string) []FaultRequest {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []FaultRequest
	for _, r := range p.log {
		if strings.Contains(r.Path, pattern) {
			out = append(out, *r)
		}
	}
	return out
}

// BytesTo returns the body bytes sent for paths containing pattern.
func (p *FaultProxy) BytesTo(pattern string) int64 {
	var n int64
	for _, r := range p.Requests(pattern) {
		n += r.Bytes
	}
	return n
}

// Stalled returns how many requests the proxy has stalled so far.
func (p *FaultProxy) Stalled() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stalled
}

// ResetCounts forgets the requests and bytes counted so far.
func (p *FaultProxy) ResetCounts() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.log, p.stalled = nil, 0
	p.bytes.Store(0)
}

func (p *FaultProxy) fault(path string) (Fault, <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, r := range p.rules {
		if strings.Contains(path, r.pattern) {
			return r.fault, p.changed
		}
	}
	return Fault{}, p.changed
}

// note logs r with the status about to be sent; the returned entry's
// bytes are counted by sent.
func (p *FaultProxy) note(r *http.Request, status int) *FaultRequest {
	e := &FaultRequest{Method: r.Method, Path: r.URL.Path, Range: r.Header.Get("Range"), Status: status}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.log = append(p.log, e)
	return e
}

// sent counts n body bytes of e; negative n takes back bytes that could
// not be written.
func (p *FaultProxy) sent(e *FaultRequest, n int64) {
	p.mu.Lock()
	e.Bytes += n
	p.mu.Unlock()
	p.bytes.Add(n)
}

func (p *FaultProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f, changed := p.fault(r.URL.Path)
	switch {
	case f.Stall:
		p.mu.Lock()
		p.stalled++
		p.mu.Unlock()
		p.note(r, 0)
		select {
		case <-r.Context().Done():
		case <-changed:
		}
		// Never an answer: the connection is cut.
		panic(http.ErrAbortHandler)
	case f.Status != 0:
		if f.RetryAfter > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(f.RetryAfter))
		}
		if f.Status == http.StatusUnauthorized {
			w.Header().Set("WWW-Authenticate", `Basic realm="fault proxy"`)
		}
		p.note(r, f.Status)
		http.Error(w, http.StatusText(f.Status), f.Status)
		return
	}
	out := r.Clone(r.Context())
	out.RequestURI = ""
	out.URL.Scheme, out.URL.Host, out.Host = "http", p.target, p.target
	resp, err := p.rt.RoundTrip(out)
	if err != nil {
		p.note(r, http.StatusBadGateway)
		http.Error(w, fmt.Sprintf("fault proxy: %v", err), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	e := p.note(r, resp.StatusCode)
	w.WriteHeader(resp.StatusCode)
	if err := p.copyBody(r.Context(), w, resp.Body, f, changed, e); err != nil {
		panic(http.ErrAbortHandler) // the client sees the body end early
	}
}

// errCut ends a body on purpose.
var errCut = errors.New("connection cut by the fault proxy")

// copyBody sends body to w under f: at f.Rate, cut after f.ResetAfter
// bytes, first byte flipped. A change of the rules ends a trickle's pacing
// (the rest passes at full speed) but not a reset already under way.
func (p *FaultProxy) copyBody(ctx context.Context, w http.ResponseWriter, body io.Reader, f Fault, changed <-chan struct{}, e *FaultRequest) error {
	flusher, _ := w.(http.Flusher)
	chunk := 32 << 10
	tick := time.Duration(0)
	if f.Rate > 0 {
		// Ten writes a second, so that the client sees a steady trickle.
		chunk = max(f.Rate/10, 1)
		tick = time.Second * time.Duration(chunk) / time.Duration(f.Rate)
	}
	buf := make([]byte, chunk)
	var sent int64
	for {
		want := len(buf)
		if f.StallAfter > 0 {
			left := f.StallAfter - sent
			if left <= 0 {
				if flusher != nil {
					flusher.Flush()
				}
				p.mu.Lock()
				p.stalled++
				p.mu.Unlock()
				select {
				case <-ctx.Done():
				case <-changed:
				}
				return errCut
			}
			want = int(min(int64(want), left))
		}
		if f.ResetAfter > 0 {
			left := f.ResetAfter - sent
			if left <= 0 {
				if flusher != nil {
					flusher.Flush()
				}
				return errCut
			}
			want = int(min(int64(want), left))
		}
		k, rerr := body.Read(buf[:want])
		if k > 0 {
			if f.Corrupt && sent == 0 {
				buf[0] ^= 0xff
			}
			p.sent(e, int64(k))
			if n, err := w.Write(buf[:k]); err != nil {
				p.sent(e, int64(n-k))
				return err
			}
			if flusher != nil {
				flusher.Flush()
			}
			sent += int64(k)
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
		if tick > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-changed:
				tick = 0
			case <-time.After(tick):
			}
		}
	}
}
