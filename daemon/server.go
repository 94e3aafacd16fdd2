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
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"time"
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
}

// Server is the daemon: the API, the mount table and its persistence.
type Server struct {
	cfg            Config
	mounter        Mounter
	log            *slog.Logger
	unmountTimeout time.Duration
	version        string

	mu      sync.Mutex
	mounts  map[string]*entry
	pending map[string]bool // real mountpoints being mounted
	closing bool

	persistMu sync.Mutex // orders mount table writes
}

// entry is one live mount of the table.
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
	return &Server{
		cfg: opts.Config, mounter: opts.Mounter, log: log, unmountTimeout: t, version: v,
		mounts: map[string]*entry{}, pending: map[string]bool{},
	}, nil
}

// Serve cleans what a crashed daemon left, listens on the socket and serves
// the API until ctx is cancelled; then it stops accepting, unmounts every
// mount (forcing after UnmountTimeout) and removes the socket.
func (s *Server) Serve(ctx context.Context) error {
	d := s.cfg.Daemon
	if err := os.MkdirAll(d.StateDir, 0o755); err != nil {
		return fmt.Errorf("create state dir %s: %w", d.StateDir, err)
	}
	for _, r := range d.MountRoots {
		if err := os.MkdirAll(r, 0o755); err != nil {
			return fmt.Errorf("create mount root %s: %w", r, err)
		}
	}
	stale, err := ReadState(d.StateDir)
	if err != nil {
		// A corrupt table must not keep the node from serving; say so.
		s.log.Error("ignoring unreadable mount table", "err", err)
	}
	cleanStale(stale, s.log)
	if err := s.persist(); err != nil {
		return err
	}

	ln, err := listenSocket(d.Socket, d.SocketGroup)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           s.Handler(),
		ConnContext:       peerContext,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	s.log.Info("clipd serving", "socket", d.Socket, "version", s.version, "mount_roots", d.MountRoots)

	var result error
	select {
	case <-ctx.Done():
	case err := <-serveErr:
		result = fmt.Errorf("serve %s: %w", d.Socket, err)
	}
	s.log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.unmountTimeout)
	if err := srv.Shutdown(sctx); err != nil {
		s.log.Warn("API shutdown", "err", err)
		srv.Close()
	}
	cancel()
	s.unmountAll()
	if err := os.Remove(d.Socket); err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.log.Warn("remove socket", "socket", d.Socket, "err", err)
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
	return writeState(s.cfg.Daemon.StateDir, entries)
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

// watch removes a mount whose filesystem went away by itself.
func (s *Server) watch(e *entry) {
	<-e.m.Done()
	s.mu.Lock()
	cur, ok := s.mounts[e.ID]
	gone := ok && cur == e && !e.unmounting
	if gone {
		delete(s.mounts, e.ID)
	}
	s.mu.Unlock()
	if gone {
		s.log.Warn("filesystem went away by itself; removed from the mount table", "id", e.ID, "mountpoint", e.Mountpoint)
		s.persistOrLog()
	}
}

// unmountAll is the shutdown path: every mount gets a graceful unmount, and a
// lazy detach when that fails or takes longer than unmountTimeout.
func (s *Server) unmountAll() {
	s.mu.Lock()
	s.closing = true
	all := s.sorted()
	for _, e := range all {
		e.unmounting = true
	}
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, e := range all {
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
				s.log.Info("unmounted", "id", e.ID, "mountpoint", e.Mountpoint)
			}
		}()
	}
	wg.Wait()
	s.persistOrLog()
}

func (s *Server) unmountWithTimeout(e *entry) error {
	done := make(chan error, 1)
	go func() { done <- e.m.Unmount(false) }()
	select {
	case err := <-done:
		if err == nil {
			return nil
		}
		s.log.Warn("graceful unmount failed, detaching lazily", "id", e.ID, "mountpoint", e.Mountpoint, "err", err)
	case <-time.After(s.unmountTimeout):
		s.log.Warn("graceful unmount timed out, detaching lazily", "id", e.ID, "mountpoint", e.Mountpoint, "timeout", s.unmountTimeout)
	}
	return e.m.Unmount(true)
}
