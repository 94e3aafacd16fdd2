package daemon

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// Bounds of the API socket's HTTP server. Clients are local (the CLI, a
// container runtime) and send a few hundred bytes per call; any process that
// can connect, even one the uid check refuses afterwards, must not be able
// to hold connections, goroutines or memory for as long as it likes.
const (
	// DefaultReadHeaderTimeout bounds reading a request's headers (and a new
	// connection's wait for its first request). A local client sends them
	// at once; this is slack for a loaded node.
	DefaultReadHeaderTimeout = 10 * time.Second
	// DefaultReadTimeout bounds reading a whole request, headers and body
	// (bodies are a few hundred bytes), so a body sent slowly or not at
	// all is cut. It does not limit the handler: net/http lifts the
	// deadline once the body is read, so a mount that takes longer is
	// still answered.
	DefaultReadTimeout = 20 * time.Second
	// DefaultIdleTimeout closes a kept-alive connection with no request:
	// clients open a new one in microseconds over a Unix socket.
	DefaultIdleTimeout = 60 * time.Second
	// DefaultMaxHeaderBytes caps a request's header block; API calls send
	// a few hundred bytes (net/http's default is 1 MiB).
	DefaultMaxHeaderBytes = 64 << 10
	// DefaultMaxConns caps the connections served at once; more wait in the
	// socket's backlog until one closes. Each is bounded in time by the
	// timeouts above, so a flood delays the API rather than exhausting the
	// daemon's file descriptors and memory. Normal use (a runtime starting
	// pods, the CLI, the watchdog) needs a few dozen.
	DefaultMaxConns = 512
)

// There is no write timeout on purpose: it runs from the end of the
// request's headers through the handler, and a mount or a graceful unmount
// may take longer than any sensible bound; its answer must still go out.
// The request body's size is bounded by decodeBody.

// HTTPLimits bound what a client of the API socket can hold; a zero field
// means its Default value.
type HTTPLimits struct {
	ReadHeaderTimeout time.Duration
	ReadTimeout       time.Duration
	IdleTimeout       time.Duration
	MaxHeaderBytes    int
	MaxConns          int
}

func (l HTTPLimits) withDefaults() HTTPLimits {
	def := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&l.ReadHeaderTimeout, DefaultReadHeaderTimeout)
	def(&l.ReadTimeout, DefaultReadTimeout)
	def(&l.IdleTimeout, DefaultIdleTimeout)
	if l.MaxHeaderBytes <= 0 {
		l.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if l.MaxConns <= 0 {
		l.MaxConns = DefaultMaxConns
	}
	return l
}

// httpServer is the API server on the socket, with the bounds of lim.
func (s *Server) httpServer(lim HTTPLimits) *http.Server {
	return &http.Server{
		Handler: s.Handler(),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if lc, ok := c.(*limitedConn); ok {
				c = lc.Conn // peer credentials come from the socket itself
			}
			return peerContext(ctx, c)
		},
		ReadHeaderTimeout: lim.ReadHeaderTimeout,
		ReadTimeout:       lim.ReadTimeout,
		IdleTimeout:       lim.IdleTimeout,
		MaxHeaderBytes:    lim.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
}

// limitListener accepts at most n connections at once: Accept waits for
// one to close.
type limitListener struct {
	net.Listener
	slots chan struct{}
	done  chan struct{}
	once  sync.Once
}

func newLimitListener(ln net.Listener, n int) *limitListener {
	return &limitListener{Listener: ln, slots: make(chan struct{}, n), done: make(chan struct{})}
}

func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.slots <- struct{}{}:
	case <-l.done:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.slots
		return nil, err
	}
	return &limitedConn{Conn: c, release: func() { <-l.slots }}, nil
}

func (l *limitListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return l.Listener.Close()
}

type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
