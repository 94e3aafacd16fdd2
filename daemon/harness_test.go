package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clipd/clipd/api"
	"github.com/clipd/clipd/internal/testenv"
	"golang.org/x/sys/unix"
)

// fakeMounter is the unit seam of the daemon: real mounts are covered by
// the e2e suite. It records what the daemon asks for.
type fakeMounter struct {
	mu      sync.Mutex
	reqs    []MountRequest
	mounted map[string]*fakeMounted // by mountpoint
	fail    error                   // returned by the next Mount calls
	delay   time.Duration
	busy    bool     // new mounts refuse a graceful unmount
	wedged  bool     // new mounts answer Stats only when its ctx ends
	restart []string // what Reload says needs a restart
}

func (f *fakeMounter) Mount(ctx context.Context, req MountRequest) (Mounted, error) {
	f.mu.Lock()
	f.reqs = append(f.reqs, req)
	fail, delay, busy, wedged := f.fail, f.delay, f.busy, f.wedged
	f.mu.Unlock()
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if fail != nil {
		return nil, fail
	}
	m := &fakeMounted{req: req, done: make(chan struct{}), busy: busy, wedged: wedged,
		stats: api.MountStats{BytesFetched: 4096, CacheHits: 3, Reads: 7, BytesRead: 1234, Requests: 2}}
	f.mu.Lock()
	if f.mounted == nil {
		f.mounted = map[string]*fakeMounted{}
	}
	f.mounted[req.Mountpoint] = m
	f.mu.Unlock()
	return m, nil
}

// Adopt finds no serving process: adopting is survivingMounter's part.
func (f *fakeMounter) Adopt(context.Context, StateEntry) (Mounted, error) {
	return nil, fmt.Errorf("%w: the fake mounter serves nothing after a restart", ErrServingProcessGone)
}

func (f *fakeMounter) Reload(Config) (applied, restart []string) { return nil, f.restart }

// HostStats adds up every mount made, unmounted ones included.
func (f *fakeMounter) HostStats() api.MountStats {
	f.mu.Lock()
	defer f.mu.Unlock()
	var total api.MountStats
	for _, m := range f.mounted {
		total = total.Add(m.stats)
	}
	return total
}

func (f *fakeMounter) get(mp string) *fakeMounted {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mounted[mp]
}

type fakeMounted struct {
	req    MountRequest
	stats  api.MountStats
	done   chan struct{}
	wedged bool
	// statsCalls counts Stats calls: a wedged serving process is asked
	// with a deadline, once per listing or scrape.
	statsCalls atomic.Int64

	mu      sync.Mutex
	busy    bool
	calls   []bool // force flag of each Unmount call
	stopped bool
}

func (m *fakeMounted) Unmount(_ context.Context, force bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls = append(m.calls, force)
	if m.busy && !force {
		return fmt.Errorf("unmount %s: %w", m.req.Mountpoint, unix.EBUSY)
	}
	m.close()
	return nil
}

// close is what a filesystem going away looks like; m.mu held.
func (m *fakeMounted) close() {
	if !m.stopped {
		m.stopped = true
		close(m.done)
	}
}

func (m *fakeMounted) vanish() {
	m.mu.Lock()
	m.close()
	m.mu.Unlock()
}

func (m *fakeMounted) unmountCalls() []bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]bool(nil), m.calls...)
}

func (m *fakeMounted) Stats(ctx context.Context) api.MountStats {
	m.statsCalls.Add(1)
	if m.wedged {
		<-ctx.Done() // a call without a deadline hangs the test
	}
	return m.stats
}

func (m *fakeMounted) Done() <-chan struct{} { return m.done }

// Process is the test process: the fake serves its mounts itself.
func (m *fakeMounted) Process() ServingProcess { return ServingProcess{PID: os.Getpid()} }
func (m *fakeMounted) Release()                {}
func (m *fakeMounted) Err() error              { return nil }
func (m *fakeMounted) Image() any {
	return map[string]any{"format": 2, "layers": 3, "archive": filepath.Base(m.req.Archive)}
}

type harness struct {
	t       *testing.T
	dir     string
	root    string // the mount root
	archive string // an existing archive file
	cfg     Config
	fm      *fakeMounter
	client  *api.Client
	logs    *testenv.SyncBuffer
	cancel  context.CancelFunc
	errc    chan error
	limits  HTTPLimits // of the API socket; zero means the defaults
}

// newHarness prepares a config in a fresh directory; mutate may change it
// before start.
func newHarness(t *testing.T) *harness {
	t.Helper()
	// Short path: a socket path must fit in 108 bytes.
	dir, err := os.MkdirTemp("", "clipd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	h := &harness{t: t, dir: dir, root: filepath.Join(dir, "mnt"), fm: &fakeMounter{}, logs: &testenv.SyncBuffer{}}
	h.cfg = DefaultConfig()
	h.cfg.Daemon.Socket = filepath.Join(dir, "run", "clipd.sock")
	h.cfg.Daemon.StateDir = filepath.Join(dir, "state")
	h.cfg.Daemon.MountRoots = []string{h.root}
	h.cfg.Cache.Dir = filepath.Join(dir, "cache")
	h.archive = filepath.Join(dir, "image.clip")
	if err := os.WriteFile(h.archive, []byte("clip"), 0o644); err != nil {
		t.Fatal(err)
	}
	return h
}

func (h *harness) start() *harness {
	h.t.Helper()
	srv, err := NewServer(Options{Config: h.cfg, Mounter: h.fm, UnmountTimeout: 500 * time.Millisecond, HTTPLimits: h.limits,
		Logger: slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel, h.errc = cancel, make(chan error, 1)
	go func() { h.errc <- srv.Serve(ctx) }()
	h.client = api.NewClient(h.cfg.Daemon.Socket)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := h.client.Health(context.Background()); err == nil {
			break
		} else if time.Now().After(deadline) {
			h.t.Fatalf("daemon did not come up: %v\nlogs:\n%s", err, h.logs)
		}
		select {
		case err := <-h.errc:
			h.t.Fatalf("Serve returned early: %v\nlogs:\n%s", err, h.logs)
		case <-time.After(10 * time.Millisecond):
		}
	}
	h.t.Cleanup(func() { h.stop() })
	return h
}

// stop cancels Serve and returns its result (once).
func (h *harness) stop() error {
	if h.cancel == nil {
		return nil
	}
	h.cancel()
	h.cancel = nil
	select {
	case err := <-h.errc:
		return err
	case <-time.After(10 * time.Second):
		h.t.Fatal("Serve did not return after cancel")
		return nil
	}
}

func (h *harness) mp(name string) string { return filepath.Join(h.root, name) }

func (h *harness) mount(mp string) *api.MountInfo {
	h.t.Helper()
	mi, err := h.client.Mount(context.Background(), api.CreateMount{Archive: h.archive, Mountpoint: mp})
	if err != nil {
		h.t.Fatalf("mount %s: %v", mp, err)
	}
	return mi
}

func (h *harness) state() []StateEntry {
	h.t.Helper()
	st, err := ReadState(h.cfg.Daemon.StateDir)
	if err != nil {
		h.t.Fatal(err)
	}
	return st
}

// waitFor polls cond for up to 5s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func wantAPIError(t *testing.T, err error, status int, code, msg string) {
	t.Helper()
	var ae *api.Error
	if !errors.As(err, &ae) {
		t.Fatalf("want API error %d %s, got %v", status, code, err)
	}
	if ae.Status != status || (code != "" && ae.Code != code) || !strings.Contains(ae.Message, msg) {
		t.Fatalf("got %d %s %q; want %d %s containing %q", ae.Status, ae.Code, ae.Message, status, code, msg)
	}
}
