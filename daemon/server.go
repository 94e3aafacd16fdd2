package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/clipd/clipd/api"
	"golang.org/x/sync/singleflight"
)

// Options configure a Server.
type Options struct {
	Config  Config
	Mounter Mounter
	Logger  *slog.Logger // nil means slog.Default()
	// Version is reported by /v1/health and the metrics; "" means Version().
	Version string
	// UnmountTimeout bounds the graceful unmount of each mount at shutdown
	// before a forced (lazy) one; zero means 10s.
	UnmountTimeout time.Duration
	// Listener, when set, is the API socket (systemd socket activation):
	// Serve neither creates nor removes the socket file.
	Listener net.Listener
	// Notifier hears of readiness, status and shutdown (systemd's
	// sd_notify); nil means nobody.
	Notifier Notifier
	// LogLevel, when set, is the level of Logger's handler: Reload changes
	// it.
	LogLevel *slog.LevelVar
	// KeepMounts makes shutdown release the mounts instead of unmounting
	// them: their serving processes keep serving and the next daemon adopts
	// them (a restart under systemd). Without it, shutdown unmounts every
	// mount.
	KeepMounts bool
	// HTTPLimits bound the API socket's connections; zero fields mean the
	// Default values.
	HTTPLimits HTTPLimits
}

// Notifier is told about the daemon's lifecycle.
type Notifier interface {
	// Ready: the API accepts calls and the previous daemon's mounts are
	// adopted.
	Ready(status string)
	Status(status string)
	Stopping()
}

type nopNotifier struct{}

func (nopNotifier) Ready(string)  {}
func (nopNotifier) Status(string) {}
func (nopNotifier) Stopping()     {}

// Server is the daemon: the API, the mount table and its persistence.
type Server struct {
	mounter        Mounter
	log            *slog.Logger
	unmountTimeout time.Duration
	version        string
	listener       net.Listener
	notify         Notifier
	level          *slog.LevelVar
	keepMounts     bool
	httpLimits     HTTPLimits
	prom           *daemonMetrics // metrics.go

	cfgMu sync.RWMutex
	cfg   Config // replaced by Reload; read through config()

	mu       sync.Mutex
	mounts   map[string]*entry
	pending  map[string]bool // real mountpoints being mounted
	closing  bool
	failures int64         // serving processes that died under a mount
	quit     chan struct{} // closed when shutdown begins: watchers stop

	persistMu sync.Mutex // orders mount table writes

	staging singleflight.Group // indexes being staged, by repository and manifest (image.go)
}

// entry is one mount of the table. Its fields change under Server.mu only;
// code outside the lock works on copies (snapshot).
type entry struct {
	StateEntry
	m          Mounted
	image      any
	unmounting bool
}

// NewServer checks opts and returns a Server; Serve starts it.
func NewServer(opts Options) (*Server, error) {
	if opts.Mounter == nil {
		return nil, errors.New("daemon: no Mounter")
	}
	if err := opts.Config.Validate(); err != nil {
		return nil, fmt.Errorf("daemon: %w", err)
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	t := opts.UnmountTimeout
	if t <= 0 {
		t = 10 * time.Second
	}
	v := opts.Version
	if v == "" {
		v = Version()
	}
	n := opts.Notifier
	if n == nil {
		n = nopNotifier{}
	}
	return &Server{
		cfg: opts.Config, mounter: opts.Mounter, log: log, unmountTimeout: t, version: v,
		listener: opts.Listener, notify: n, level: opts.LogLevel, keepMounts: opts.KeepMounts,
		httpLimits: opts.HTTPLimits.withDefaults(), prom: newDaemonMetrics(),
		mounts: map[string]*entry{}, pending: map[string]bool{}, quit: make(chan struct{}),
	}, nil
}

// config returns the current configuration.
func (s *Server) config() Config {
	s.cfgMu.RLock()
	defer s.cfgMu.RUnlock()
	return s.cfg
}

// Serve adopts the mounts a previous daemon left, listens on the socket and
// serves the API until ctx is cancelled. Then it stops accepting and, with
// KeepMounts, releases the mounts so that they keep running for the next
// daemon; without it, it unmounts every mount (forcing after
// UnmountTimeout).
func (s *Server) Serve(ctx context.Context) error {
	d := s.config().Daemon
	if err := os.MkdirAll(d.StateDir, 0o755); err != nil {
		return fmt.Errorf("create state dir %s: %w", d.StateDir, err)
	}
	// One owner per state dir, claimed before anything is read, adopted or
	// listened on: a second daemon would adopt this one's mounts and
	// unmount them when it stops.
	lock, err := lockStateDir(d.StateDir)
	if err != nil {
		return err
	}
	defer lock.Close()
	if err := prepareRoots(d.MountRoots, s.log); err != nil {
		return err
	}
	ln := s.listener
	if ln == nil {
		if ln, err = listenSocket(d.Socket, d.SocketGroup); err != nil {
			return err
		}
	} else if a := ln.Addr().String(); a != d.Socket {
		s.log.Warn("socket-activated listener differs from daemon.socket; clients using the config will not find it",
			"listener", a, "socket", d.Socket)
	}
	old, err := ReadState(d.StateDir)
	if err != nil {
		// A corrupt table must not keep the node from serving; say so.
		s.log.Error("ignoring unreadable mount table", "err", err)
	}
	s.adoptAll(ctx, old)
	s.sweepShared()
	if err := s.persist(); err != nil {
		ln.Close()
		return err
	}

	srv := s.httpServer(s.httpLimits)
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(newLimitListener(ln, s.httpLimits.MaxConns)) }()
	s.log.Info("clipd serving", "socket", ln.Addr().String(), "version", s.version, "mount_roots", d.MountRoots,
		"socket_activated", s.listener != nil)
	s.notify.Ready(s.statusLine())

	var result error
	select {
	case <-ctx.Done():
	case err := <-serveErr:
		result = fmt.Errorf("serve %s: %w", d.Socket, err)
	}
	s.log.Info("shutting down")
	s.notify.Stopping()
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.unmountTimeout)
	if err := srv.Shutdown(sctx); err != nil {
		s.log.Warn("API shutdown", "err", err)
		srv.Close()
	}
	cancel()
	s.unmountAll()
	if s.listener == nil {
		if err := os.Remove(d.Socket); err != nil && !errors.Is(err, fs.ErrNotExist) {
			s.log.Warn("remove socket", "socket", d.Socket, "err", err)
		}
	}
	s.log.Info("stopped")
	return result
}

// listenSocket creates the API socket: parent directory 0755, a stale socket
// replaced, mode 0660, group socketGroup when set.
func listenSocket(path, socketGroup string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create socket dir %s: %w", filepath.Dir(path), err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("listen %s: exists and is not a socket", path)
		}
		// A socket that answers belongs to a live daemon; one that does not
		// is what a killed daemon left.
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("listen %s: another clipd is serving on it", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, fmt.Errorf("chmod socket %s: %w", path, err)
	}
	if socketGroup != "" {
		gid, err := lookupGroup(socketGroup)
		if err == nil {
			err = os.Chown(path, -1, gid)
		}
		if err != nil {
			ln.Close()
			return nil, fmt.Errorf("chown socket %s to group %s: %w", path, socketGroup, err)
		}
	}
	return ln, nil
}

func lookupGroup(name string) (int, error) {
	if gid, err := strconv.Atoi(name); err == nil {
		return gid, nil
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(g.Gid)
}

// persist writes the current table to state_dir.
func (s *Server) persist() error {
	s.persistMu.Lock()
	defer s.persistMu.Unlock()
	s.mu.Lock()
	entries := make([]StateEntry, 0, len(s.mounts))
	for _, e := range s.sorted() {
		entries = append(entries, e.StateEntry)
	}
	s.mu.Unlock()
	err := writeState(s.config().Daemon.StateDir, entries)
	s.notify.Status(s.statusLine())
	return err
}

// StatusLine is what `systemctl status` shows: the mounts served and
// failed.
func (s *Server) StatusLine() string { return s.statusLine() }

func (s *Server) statusLine() string {
	s.mu.Lock()
	n, failed := len(s.mounts), 0
	for _, e := range s.mounts {
		if e.State == api.MountFailed {
			failed++
		}
	}
	s.mu.Unlock()
	if failed > 0 {
		return fmt.Sprintf("serving %d mounts (%d failed)", n-failed, failed)
	}
	return fmt.Sprintf("serving %d mounts", n)
}

// persistOrLog is for callers that have already changed the live table and
// cannot undo it: a failed write is logged loudly.
func (s *Server) persistOrLog() {
	if err := s.persist(); err != nil {
		s.log.Error("persist mount table", "err", err)
	}
}

func newID() string {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return hex.EncodeToString(b[:])
}

// watch follows one mount: a filesystem that went away by itself (umount
// from a shell) leaves the table; one whose serving process died becomes
// failed, is reported and stays listed until deleted.
func (s *Server) watch(e *entry, m Mounted) {
	select {
	case <-m.Done():
	case <-s.quit:
		return
	}
	cause := m.Err()
	var last api.MountStats
	if cause != nil {
		ctx, cancel := context.WithTimeout(context.Background(), statsTimeout)
		last = m.Stats(ctx) // the serving process's last figures
		cancel()
	}
	s.mu.Lock()
	cur, ok := s.mounts[e.ID]
	if !ok || cur != e || e.m != m || e.unmounting {
		s.mu.Unlock()
		return
	}
	if cause == nil {
		delete(s.mounts, e.ID)
	} else {
		s.markFailed(e, cause, last)
	}
	s.mu.Unlock()
	if cause == nil {
		s.log.Warn("filesystem went away by itself; removed from the mount table", "id", e.ID, "mountpoint", e.Mountpoint)
		removeBundle(e.Bundle, e.Mountpoint, s.config().Daemon.MountRoots, s.log)
	} else {
		s.log.Error("serving process failed; mount is failed", "id", e.ID, "mountpoint", e.Mountpoint,
			"archive", e.Archive, "pid", e.PID, "err", cause)
		s.detachDead(e.ID, e.Mountpoint)
	}
	s.persistOrLog()
}

// unmountAll is the shutdown path. With KeepMounts, mounts are released,
// not unmounted: their serving processes keep serving and the next daemon
// adopts them. Failed ones stay in the table for the next daemon to
// report. Every other mount gets a graceful unmount, and a lazy detach when
// that fails or takes longer than unmountTimeout.
func (s *Server) unmountAll() {
	s.mu.Lock()
	s.closing = true
	close(s.quit)
	var in []*entry
	for _, e := range s.sorted() {
		if s.keepMounts && e.State != api.MountFailed {
			e.m.Release()
			s.log.Info("mount left running for the next daemon", "id", e.ID, "mountpoint", e.Mountpoint, "pid", e.PID)
			continue
		}
		if e.State == api.MountFailed {
			continue
		}
		e.unmounting = true
		in = append(in, e)
	}
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, e := range in {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := s.unmountWithTimeout(e)
			s.mu.Lock()
			if err == nil {
				delete(s.mounts, e.ID)
			}
			s.mu.Unlock()
			if err != nil {
				s.log.Error("unmount at shutdown failed", "id", e.ID, "mountpoint", e.Mountpoint, "err", err)
			} else {
				removeBundle(e.Bundle, e.Mountpoint, s.config().Daemon.MountRoots, s.log)
				s.log.Info("unmounted", "id", e.ID, "mountpoint", e.Mountpoint)
			}
		}()
	}
	wg.Wait()
	s.persistOrLog()
}

// unmountWithTimeout unmounts one mount at shutdown; e.unmounting is set,
// so e.m no longer changes. Each attempt is bounded by unmountTimeout.
func (s *Server) unmountWithTimeout(e *entry) error {
	ctx, cancel := context.WithTimeout(context.Background(), s.unmountTimeout)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- e.m.Unmount(ctx, false) }()
	select {
	case err := <-done:
		if err == nil {
			return nil
		}
		s.log.Warn("graceful unmount failed, detaching lazily", "id", e.ID, "mountpoint", e.Mountpoint, "err", err)
	case <-time.After(s.unmountTimeout):
		s.log.Warn("graceful unmount timed out, detaching lazily", "id", e.ID, "mountpoint", e.Mountpoint, "timeout", s.unmountTimeout)
	}
	fctx, fcancel := context.WithTimeout(context.Background(), s.unmountTimeout)
	defer fcancel()
	return e.m.Unmount(fctx, true)
}
