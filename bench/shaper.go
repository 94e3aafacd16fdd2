package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Profile is an emulated network between a node and its registry.
type Profile struct {
	Name string
	// RTT is added once per HTTP request and once per new TCP connection
	// (the handshake), so the first request on a connection costs 2 RTT.
	RTT time.Duration
	// Bandwidth caps the bytes sent to clients, in bits per second, shared
	// by every connection (one link). 0 means unlimited.
	Bandwidth int64
}

// Profiles returns the network profiles of the benchmark: lan, region, far.
func Profiles() []Profile {
	return []Profile{
		{Name: "lan", RTT: 1 * time.Millisecond, Bandwidth: 1_000_000_000},
		{Name: "region", RTT: 20 * time.Millisecond, Bandwidth: 200_000_000},
		{Name: "far", RTT: 80 * time.Millisecond, Bandwidth: 50_000_000},
	}
}

// ProfileByName finds one of Profiles.
func ProfileByName(name string) (Profile, bool) {
	for _, p := range Profiles() {
		if p.Name == name {
			return p, true
		}
	}
	return Profile{}, false
}

// Transfer returns how long sending n bytes takes at the profile's bandwidth.
func (p Profile) Transfer(n int64) time.Duration {
	if p.Bandwidth <= 0 || n <= 0 {
		return 0
	}
	return time.Duration(float64(n) * 8 / float64(p.Bandwidth) * float64(time.Second))
}

// Counts are what went through a Shaper since its last Reset.
type Counts struct {
	Requests  int64 // HTTP requests received
	Bytes     int64 // response body bytes sent to clients
	BlobBytes int64 // of Bytes, those of /v2/.../blobs/... responses
	Conns     int64 // TCP connections accepted
}

// Shaper is an HTTP reverse proxy in front of a registry that emulates a
// network Profile: it delays every request and every new connection by the
// RTT and paces response bodies through one token bucket. It listens on
// 127.0.0.1; clients use Addr as the registry host.
type Shaper struct {
	Addr string

	srv *http.Server
	ln  net.Listener

	mu      sync.Mutex
	profile Profile
	next    time.Time // the link is busy until then (virtual clock of the bucket)
	conns   map[net.Conn]struct{}

	requests, bytes, blobBytes, accepted atomic.Int64
}

// chunk is the unit of pacing: small enough that a 50 Mbit/s link does not
// stall a reader for long, large enough to keep the proxy's overhead low.
const chunk = 16 << 10

// The bucket's depth: the larger of burstBytes at the link's rate and
// minBurst.
const (
	burstBytes = 64 << 10
	minBurst   = 5 * time.Millisecond
)

// StartShaper proxies to the registry at upstream ("host:port") with no
// shaping until SetProfile is called. Close stops it.
func StartShaper(upstream string) (*Shaper, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("shaper: listen: %w", err)
	}
	s := &Shaper{Addr: ln.Addr().String(), conns: map[net.Conn]struct{}{}}
	s.ln = &shapedListener{Listener: ln, s: s}
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: upstream})
	// The upstream hop is loopback and must not add its own limits.
	rp.Transport = &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}
	// A client that hangs up mid-body (a cancelled read) is not news.
	rp.ErrorLog = log.New(io.Discard, "", 0)
	s.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			s.requests.Add(1)
			if d := s.Profile().RTT; d > 0 {
				if err := sleepCtx(r.Context(), d); err != nil {
					return
				}
			}
			blob := strings.HasPrefix(r.URL.Path, "/v2/") && strings.Contains(r.URL.Path, "/blobs/")
			rp.ServeHTTP(&pacedWriter{ResponseWriter: w, ctx: r.Context(), s: s, blob: blob}, r)
		}),
		ConnState: s.track,
	}
	go func() { _ = s.srv.Serve(s.ln) }()
	return s, nil
}

// SetProfile changes the emulated network for the requests that follow.
func (s *Shaper) SetProfile(p Profile) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.profile = p
}

// Profile returns the current profile.
func (s *Shaper) Profile() Profile {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.profile
}

// Counts returns the figures since the last Reset.
func (s *Shaper) Counts() Counts {
	return Counts{Requests: s.requests.Load(), Bytes: s.bytes.Load(), BlobBytes: s.blobBytes.Load(), Conns: s.accepted.Load()}
}

// Reset zeroes the counters and closes every client connection, so that the
// next contender pays for its own connections instead of reusing another's.
// Call it only between runs: it cuts requests in flight.
func (s *Shaper) Reset() {
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.conns = map[net.Conn]struct{}{}
	s.next = time.Time{}
	s.mu.Unlock()
	s.requests.Store(0)
	s.bytes.Store(0)
	s.blobBytes.Store(0)
	s.accepted.Store(0)
}

// Close stops the proxy.
func (s *Shaper) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		return s.srv.Close()
	}
	return err
}

func (s *Shaper) track(c net.Conn, st http.ConnState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch st {
	case http.StateNew:
		s.conns[c] = struct{}{}
	case http.StateClosed, http.StateHijacked:
		delete(s.conns, c)
	}
}

// pace blocks until n more bytes fit through the link: the bucket is a
// virtual clock of when the link is free, so oversleeping one chunk is made
// up by the next and the long-run rate stays at the cap.
func (s *Shaper) pace(ctx context.Context, n int) error {
	s.mu.Lock()
	bw := s.profile.Bandwidth
	if bw <= 0 {
		s.mu.Unlock()
		return nil
	}
	now := time.Now()
	// An idle link banks at most burstDepth of credit: enough that a
	// sleeper woken late (timer slack, a loaded machine) does not lose
	// link time, too little to matter for the emulated latency.
	depth := max(s.profile.Transfer(burstBytes), minBurst)
	if s.next.Before(now.Add(-depth)) {
		s.next = now.Add(-depth)
	}
	s.next = s.next.Add(s.profile.Transfer(int64(n)))
	wait := s.next.Sub(now)
	s.mu.Unlock()
	return sleepCtx(ctx, wait)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// pacedWriter sends a response body through the bucket and counts it.
type pacedWriter struct {
	http.ResponseWriter
	ctx  context.Context
	s    *Shaper
	blob bool
}

func (w *pacedWriter) Write(p []byte) (int, error) {
	var done int
	for len(p) > 0 {
		n := min(len(p), chunk)
		if err := w.s.pace(w.ctx, n); err != nil {
			return done, err
		}
		m, err := w.ResponseWriter.Write(p[:n])
		done += m
		w.s.bytes.Add(int64(m))
		if w.blob {
			w.s.blobBytes.Add(int64(m))
		}
		if err != nil {
			return done, err
		}
		p = p[n:]
	}
	return done, nil
}

// Unwrap lets http.ResponseController (used by the reverse proxy to flush)
// reach the real writer.
func (w *pacedWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// shapedListener delays the first read of every accepted connection by the
// RTT: the client cannot send before the handshake's round trip.
type shapedListener struct {
	net.Listener
	s *Shaper
}

func (l *shapedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.s.accepted.Add(1)
	return &shapedConn{Conn: c, rtt: l.s.Profile().RTT}, nil
}

type shapedConn struct {
	net.Conn
	rtt  time.Duration
	once sync.Once
}

func (c *shapedConn) Read(p []byte) (int, error) {
	c.once.Do(func() { time.Sleep(c.rtt) })
	return c.Conn.Read(p)
}
