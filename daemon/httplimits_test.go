package daemon

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clipd/clipd/api"
)

// TestHTTPLimitsDefaults: a server built without limits gets the Default
// bounds, and no write timeout (it would cut a long mount).
func TestHTTPLimitsDefaults(t *testing.T) {
	h := newHarness(t)
	srv, err := NewServer(Options{Config: h.cfg, Mounter: h.fm})
	if err != nil {
		t.Fatal(err)
	}
	hs := srv.httpServer(srv.httpLimits)
	if hs.ReadHeaderTimeout != DefaultReadHeaderTimeout || hs.IdleTimeout != DefaultIdleTimeout ||
		hs.MaxHeaderBytes != DefaultMaxHeaderBytes || hs.ReadTimeout != DefaultReadTimeout || hs.WriteTimeout != 0 {
		t.Errorf("http.Server: ReadHeaderTimeout %s IdleTimeout %s MaxHeaderBytes %d ReadTimeout %s WriteTimeout %s",
			hs.ReadHeaderTimeout, hs.IdleTimeout, hs.MaxHeaderBytes, hs.ReadTimeout, hs.WriteTimeout)
	}
	if srv.httpLimits.MaxConns != DefaultMaxConns {
		t.Errorf("limits: %+v", srv.httpLimits)
	}
	for _, d := range []time.Duration{DefaultReadHeaderTimeout, DefaultReadTimeout, DefaultIdleTimeout} {
		if d <= 0 || d > time.Minute+time.Second {
			t.Errorf("default bound %s: want a positive bound of at most a minute", d)
		}
	}
}

func dialAPI(t *testing.T, h *harness) net.Conn {
	t.Helper()
	c, err := net.Dial("unix", h.cfg.Daemon.Socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// closedWithin reads c until the server closes it; still open after d
// fails t. It returns what the server sent.
func closedWithin(t *testing.T, what string, c net.Conn, d time.Duration) string {
	t.Helper()
	start := time.Now()
	c.SetReadDeadline(start.Add(d))
	b, err := io.ReadAll(c)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("%s: connection still open after %s", what, d)
	} else {
		t.Logf("%s: closed by the server after %s", what, time.Since(start).Round(time.Millisecond))
	}
	return string(b)
}

// TestSlowClientsDropped: connections that send headers slowly, stall in
// or trickle a body, sit idle after a request, or never send anything are
// closed by the server within its bounds, while a normal client is served
// meanwhile.
func TestSlowClientsDropped(t *testing.T) {
	const bound = 300 * time.Millisecond
	h := newHarness(t)
	h.limits = HTTPLimits{ReadHeaderTimeout: bound, ReadTimeout: bound, IdleTimeout: bound}
	h.start()

	silent := dialAPI(t, h)
	slowHeaders := dialAPI(t, h)
	if _, err := io.WriteString(slowHeaders, "GET /v1/health HTTP/1.1\r\nHost: clipd\r\n"); err != nil {
		t.Fatal(err)
	}
	partialBody := dialAPI(t, h)
	if _, err := io.WriteString(partialBody, "POST /v1/mounts HTTP/1.1\r\nHost: clipd\r\nContent-Type: application/json\r\n"+
		"Content-Length: 1000\r\n\r\n{\"archive\": "); err != nil {
		t.Fatal(err)
	}
	trickle := dialAPI(t, h)
	if _, err := io.WriteString(trickle, "POST /v1/mounts HTTP/1.1\r\nHost: clipd\r\nContent-Length: 100000\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		// One byte every 20ms: every read succeeds, the body never ends.
		for {
			if _, err := trickle.Write([]byte(" ")); err != nil {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	idle := dialAPI(t, h)
	if _, err := io.WriteString(idle, "GET /v1/health HTTP/1.1\r\nHost: clipd\r\n\r\n"); err != nil {
		t.Fatal(err)
	}

	// A normal client is served while those are held.
	for range 3 {
		if _, err := h.client.List(context.Background()); err != nil {
			t.Fatalf("normal client while slow ones are held: %v", err)
		}
	}

	// Hard upper bound: the server's bound plus generous slack for a loaded
	// machine, far below "held forever".
	const within = bound + 4*time.Second
	closedWithin(t, "silent connection", silent, within)
	closedWithin(t, "slow headers", slowHeaders, within)
	if got := closedWithin(t, "partial body", partialBody, within); !strings.Contains(got, "400 Bad Request") {
		t.Errorf("partial body: server sent %q, want a 400 before closing", got)
	}
	closedWithin(t, "trickled body", trickle, within)
	trickle.Close()
	wg.Wait()
	if got := closedWithin(t, "idle after a request", idle, within); !strings.Contains(got, "200 OK") {
		t.Errorf("idle connection: server sent %q, want the answer to its request", got)
	}
	if _, err := h.client.Health(context.Background()); err != nil {
		t.Errorf("normal client after the slow ones: %v", err)
	}
	h.fm.mu.Lock()
	calls := len(h.fm.reqs)
	h.fm.mu.Unlock()
	if calls != 0 {
		t.Errorf("%d mounts made from incomplete requests", calls)
	}
}

// TestLongMountOutlivesReadBounds: a mount that takes longer than every
// read bound still completes and is answered (the bounds are on reading the
// request, not on the handler).
func TestLongMountOutlivesReadBounds(t *testing.T) {
	const bound = 100 * time.Millisecond
	h := newHarness(t)
	h.limits = HTTPLimits{ReadHeaderTimeout: bound, ReadTimeout: bound, IdleTimeout: bound}
	h.fm.delay = 6 * bound
	h.start()
	start := time.Now()
	mi := h.mount(h.mp("slow"))
	if took := time.Since(start); took < h.fm.delay || mi.State != api.MountActive {
		t.Fatalf("mount answered after %s (delay %s): %+v", took, h.fm.delay, mi)
	}
	if _, err := h.client.Unmount(context.Background(), mi.ID, false); err != nil {
		t.Fatalf("unmount: %v", err)
	}
}

// TestMaxConns: with every connection slot held, a new client waits (it is
// not served); when a slot frees, it is.
func TestMaxConns(t *testing.T) {
	h := newHarness(t)
	h.limits = HTTPLimits{MaxConns: 2}
	h.start()
	// The harness's client keeps its connection alive: free that slot.
	h.client.CloseIdleConnections()
	held := []net.Conn{dialAPI(t, h), dialAPI(t, h)}
	// Wait until both are accepted: each answers a request.
	for _, c := range held {
		if _, err := io.WriteString(c, "GET /v1/health HTTP/1.1\r\nHost: clipd\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 12)
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "HTTP/1.1 200" {
			t.Fatalf("held connection: %q %v", buf, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := api.NewClient(h.cfg.Daemon.Socket).Health(ctx); err == nil {
		t.Fatal("a third connection was served while both slots were held")
	}
	held[0].Close()
	ctx2, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel2()
	if _, err := api.NewClient(h.cfg.Daemon.Socket).Health(ctx2); err != nil {
		t.Fatalf("after a slot freed: %v", err)
	}
}

// TestHeaderBytesCapped: a header block beyond the cap is refused (431),
// not buffered.
func TestHeaderBytesCapped(t *testing.T) {
	h := newHarness(t).start()
	c := dialAPI(t, h)
	go io.WriteString(c, "GET /v1/health HTTP/1.1\r\nHost: clipd\r\nX-Pad: "+strings.Repeat("a", 2*DefaultMaxHeaderBytes)+"\r\n\r\n")
	if got := closedWithin(t, "oversized headers", c, 5*time.Second); !strings.HasPrefix(got, "HTTP/1.1 431") {
		t.Errorf("oversized headers: server sent %q, want 431", got)
	}
	if _, err := h.client.Health(context.Background()); err != nil {
		t.Errorf("normal client: %v", err)
	}
}
