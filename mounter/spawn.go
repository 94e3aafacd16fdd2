package mounter

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/clipd/clipd/api"
	"github.com/clipd/clipd/cache"
	"github.com/clipd/clipd/daemon"
	"github.com/clipd/clipd/mount"
	"golang.org/x/sys/unix"
)

// SpawnConfig configures a Spawner.
type SpawnConfig struct {
	// Executable is the clipd binary started for new mounts, resolved once
	// when the daemon starts: after an upgrade that replaced the file, new
	// mounts run the new binary while running ones keep theirs.
	Executable string
	// StateDir holds the control sockets, under StateDir/serve.
	StateDir string
	CacheDir string
	// CacheMaxSize and CacheMinFree are the cache budget (cache.max_size,
	// cache.min_free), kept to tell a reload what changed.
	CacheMaxSize, CacheMinFree int64
	Insecure                   []string
	MaxFetches                 int
	// FetchTimeout is registry.fetch_timeout; 0 leaves the fetcher's default.
	FetchTimeout time.Duration
	// RegistryConfigPath is registry.config_path (hosts.toml mirrors).
	RegistryConfigPath string
	LogLevel           string
	// Version of the daemon's binary (serving processes report their own).
	Version string
	Logger  *slog.Logger // nil means slog.Default()
	// Stderr is where serving processes log; it must outlive the daemon
	// (the journal stream, a file), so it is passed as a file, never a
	// pipe. nil means the daemon's own stderr.
	Stderr *os.File
	// Env is the serving processes' environment (nil: the daemon's).
	Env []string
	// StartTimeout bounds how long a serving process may take to report
	// its mount live; 0 means 2 minutes.
	StartTimeout time.Duration
	// Limits are set on every serving process at its start (limits.go).
	Limits Limits
	// UpperDir holds the upper directories of writable mounts
	// (daemon.upper_dir); empty means StateDir/upper.
	UpperDir string
	// Profiles is the prefetch profile store (daemon.state_dir/profiles);
	// empty: serving processes neither record nor replay.
	Profiles string
	// RecordFor is prefetch.record_seconds, Replay prefetch.replay.
	RecordFor time.Duration
	Replay    bool
	// Spare keeps a serving process started in advance, waiting for the
	// next mount request (daemon.spare_serving_process, spare.go).
	Spare bool
	// MountRoots are daemon.mount_roots: the dead mount of a serving
	// process is reached beneath them, never through a path that may
	// have been swapped (mount.DetachDead).
	MountRoots []string
}

// Spawner is the daemon's daemon.Mounter: one serving process per mount
// (`clipd serve-mount`), each in its own session so that it outlives the
// daemon; it adopts them again after a restart.
type Spawner struct {
	store *cache.Store
	log   *slog.Logger

	mu       sync.Mutex
	cfg      SpawnConfig
	live     map[*procMount]bool
	finished api.MountStats // last figures of the mounts that ended

	lowers *lowerSet // shared read-only mounts of writable mounts (shared.go)

	// The spare serving process (spare.go): spareGen counts the settings
	// it must have been started with; closed stops replacing it.
	spare         *spareProc
	spareStarting bool
	spareGen      uint64
	closed        bool
}

var _ daemon.Mounter = (*Spawner)(nil)

// NewSpawner opens the cache (so that a daemon reporting ready has a usable
// cache) and checks the executable.
func NewSpawner(cfg SpawnConfig) (*Spawner, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Stderr == nil {
		cfg.Stderr = os.Stderr
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = 2 * time.Minute
	}
	if fi, err := os.Stat(cfg.Executable); err != nil {
		return nil, fmt.Errorf("serving process executable: %w", err)
	} else if fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
		return nil, fmt.Errorf("serving process executable %s is not executable", cfg.Executable)
	}
	// The budget is recorded in the store, where every serving process
	// sharing it finds it.
	store, err := cache.OpenWith(cfg.CacheDir, cache.Options{MaxSize: cfg.CacheMaxSize, MinFree: cfg.CacheMinFree, Logger: cfg.Logger})
	if err != nil {
		return nil, fmt.Errorf("open cache %s: %w", cfg.CacheDir, err)
	}
	if err := os.MkdirAll(filepath.Join(cfg.StateDir, "serve"), 0o700); err != nil {
		return nil, fmt.Errorf("create control socket dir: %w", err)
	}
	lowers, err := newLowerSet(cfg.StateDir, cfg.UpperDir)
	if err != nil {
		return nil, err
	}
	s := &Spawner{store: store, log: cfg.Logger, cfg: cfg, live: map[*procMount]bool{}, lowers: lowers}
	s.ensureSpare()
	return s, nil
}

func (s *Spawner) config() SpawnConfig {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cfg
}

// ControlSocket is where the serving process of mount id listens.
func (s *Spawner) ControlSocket(id string) string {
	return filepath.Join(s.config().StateDir, "serve", id+".sock")
}

// Mount starts a serving process for req and waits until it reports the
// filesystem live, or its error (an invalid archive keeps
// daemon.ErrInvalidArchive).
func (s *Spawner) Mount(ctx context.Context, req daemon.MountRequest) (daemon.Mounted, error) {
	if req.ID == "" {
		return nil, errors.New("mount request without an id")
	}
	if req.Writable {
		return s.mountWritable(ctx, req)
	}
	cfg := s.config()
	control := s.ControlSocket(req.ID)
	// The next spare starts once this mount is live or failed: not while
	// this one needs the CPU.
	defer s.ensureSpare()
	useSpare := true
again:
	rd, wr, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("start serving process: %w", err)
	}
	proc, child, spare, err := s.startServing(cfg, req, control, wr, useSpare)
	wr.Close()
	if err != nil {
		rd.Close()
		return nil, err
	}
	log := s.log.With("id", req.ID, "pid", proc.Pid)

	msg, err := readReport(ctx, rd, cfg.StartTimeout)
	rd.Close()
	if err != nil {
		// Gave up waiting: the process must not mount behind our back.
		_ = proc.Kill()
		<-child.exited
		detachFailedStart(cfg, req)
		return nil, fmt.Errorf("serving process pid %d for %s: %w", proc.Pid, req.Mountpoint, err)
	}
	if !msg.OK {
		waitExit(child, 10*time.Second)
		if msg.Error == "" && spare {
			// A spare that died without a word (killed just before or
			// while it took the request): the request is not to blame,
			// so it gets a serving process of its own, once.
			log.Warn("spare serving process exited before mounting; starting a serving process", "status", child.status())
			_ = proc.Kill()
			<-child.exited
			detachFailedStart(cfg, req)
			useSpare = false
			goto again
		}
		if msg.Error == "" {
			return nil, fmt.Errorf("serving process pid %d for %s exited before mounting (%v); see its log", proc.Pid, req.Mountpoint, child.status())
		}
		return nil, msg.err()
	}
	log.Debug("serving process started", "mountpoint", req.Mountpoint, "version", msg.Version)
	p := s.track(&procMount{
		id: req.ID, mountpoint: req.Mountpoint, control: control, pid: msg.PID, version: msg.Version,
		image: msg.Image, child: child,
	})
	return p, nil
}

// detachFailedStart detaches whatever a serving process that did not
// report may have mounted for req.
func detachFailedStart(cfg SpawnConfig, req daemon.MountRequest) {
	switch {
	case req.Dir != nil:
		_ = mount.DetachOver(req.Dir)
	case len(cfg.MountRoots) > 0:
		_, _ = mount.DetachDead(cfg.MountRoots, req.Mountpoint)
	default: // a caller with neither a directory nor roots (tests)
		_ = unix.Unmount(req.Mountpoint, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW)
	}
}

// startServing starts the serving process of req: the spare if one is
// ready and useSpare (spare.go), else a new process. wr is the report
// pipe's write end, which the caller closes.
func (s *Spawner) startServing(cfg SpawnConfig, req daemon.MountRequest, control string, wr *os.File, useSpare bool) (proc *os.Process, child *childProc, spare bool, err error) {
	var sp *spareProc
	if useSpare {
		sp = s.takeSpare()
	}
	if sp != nil {
		r := SpareRequest{ID: req.ID, Archive: req.Archive, Mountpoint: req.Mountpoint, Control: control,
			Prefetch: req.Prefetch, Setuid: req.Setuid}
		if !req.As.Root() {
			r.Peer = req.As.String()
		}
		authRd, err := credentialsPipe(req.Credentials)
		if err != nil {
			sp.release()
			return nil, nil, false, err
		}
		err = startOnSpare(sp, r, wr, req.Dir, req.ArchiveFile, authRd)
		if authRd != nil {
			authRd.Close()
		}
		if err == nil {
			s.log.Debug("mount handed to the spare serving process", "id", req.ID, "pid", sp.proc.Pid)
			return sp.proc, sp.child, true, nil
		}
		// Died or gone bad: it did not get the request, so nothing can
		// have been mounted by it.
		sp.release()
		s.log.Warn("spare serving process did not take the request; starting a serving process", "id", req.ID, "err", err)
	}
	proc, child, err = startExec(cfg, req, control, wr)
	return proc, child, false, err
}

// startExec starts a new serving process for req (fork and exec).
func startExec(cfg SpawnConfig, req daemon.MountRequest, control string, wr *os.File) (*os.Process, *childProc, error) {
	args := append([]string{"serve-mount", "--id", req.ID, "--archive", req.Archive, "--mountpoint", req.Mountpoint,
		"--control", control, "--report-fd", "3"}, serveConfigArgs(cfg)...)
	if req.Prefetch {
		args = append(args, "--prefetch")
	}
	if req.Setuid {
		args = append(args, "--setuid")
	}
	cmd := exec.Command(cfg.Executable, args...)
	// Only the daemon says which descriptor to mount on and whose rights
	// to read with: never an inherited variable.
	cmd.Env = serveEnv(cfg)
	cmd.Stdout, cmd.Stderr = cfg.Stderr, cfg.Stderr
	cmd.ExtraFiles = []*os.File{wr} // fd 3: the report pipe
	if req.Dir != nil {
		// fd 4: the mountpoint directory the daemon checked, mounted on
		// as is (ServeMount).
		cmd.ExtraFiles = append(cmd.ExtraFiles, req.Dir)
		cmd.Env = append(slices.Clip(cmd.Env), MountpointFDEnv+"=4")
	}
	if !req.As.Root() {
		cmd.Env = append(slices.Clip(cmd.Env), PeerEnv+"="+req.As.String())
	}
	// After the mountpoint: its fd number is fixed above.
	passArchive(cmd, req.ArchiveFile)
	authRd, err := passCredentials(cmd, req.Credentials)
	if err != nil {
		return nil, nil, err
	}
	if authRd != nil {
		defer authRd.Close()
	}
	// Its own session: outside the daemon's process group and terminal, so
	// that signals meant for the daemon (and its death) do not reach it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("start serving process %s: %w", cfg.Executable, err)
	}
	child := &childProc{exited: make(chan struct{})}
	go func() { child.err = cmd.Wait(); close(child.exited) }()
	if err := cfg.Limits.apply(cmd.Process.Pid); err != nil {
		_ = cmd.Process.Kill()
		<-child.exited
		return nil, nil, err
	}
	return cmd.Process, child, nil
}

// readReport reads the serving process's one line; EOF without it means
// the process ended first (OK false, no error).
func readReport(ctx context.Context, rd *os.File, timeout time.Duration) (readyMsg, error) {
	type result struct {
		m   readyMsg
		err error
	}
	ch := make(chan result, 1)
	go func() {
		line, err := bufio.NewReader(rd).ReadBytes('\n')
		if len(line) == 0 && err != nil {
			ch <- result{}
			return
		}
		var m readyMsg
		if err := json.Unmarshal(line, &m); err != nil {
			ch <- result{m: readyMsg{Error: fmt.Sprintf("unreadable report %q: %v", line, err)}}
			return
		}
		ch <- result{m: m}
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case r := <-ch:
		return r.m, r.err
	case <-ctx.Done():
		return readyMsg{}, fmt.Errorf("mount abandoned: %w", ctx.Err())
	case <-t.C:
		return readyMsg{}, fmt.Errorf("not live after %s", timeout)
	}
}

// childProc is a serving process this daemon started (and reaps).
type childProc struct {
	exited chan struct{}
	err    error // wait status, set before exited closes
}

func (c *childProc) status() error {
	select {
	case <-c.exited:
		if c.err == nil {
			return errors.New("exit status 0")
		}
		return c.err
	default:
		return errors.New("still running")
	}
}

func waitExit(c *childProc, d time.Duration) {
	select {
	case <-c.exited:
	case <-time.After(d):
	}
}

// Adopt connects to the serving process that a previous daemon recorded in
// e and checks that it is the one serving e.
func (s *Spawner) Adopt(ctx context.Context, e daemon.StateEntry) (daemon.Mounted, error) {
	if e.Writable {
		return s.adoptWritable(ctx, e)
	}
	if e.Control == "" {
		return nil, fmt.Errorf("%w: no control socket recorded", daemon.ErrServingProcessGone)
	}
	if !processAlive(e.PID) {
		return nil, s.goneErr(e)
	}
	c := newControlClient(e.Control)
	info, err := c.info(ctx)
	if err != nil {
		c.close()
		if !processAlive(e.PID) {
			return nil, s.goneErr(e)
		}
		return nil, fmt.Errorf("serving process pid %d is alive but does not answer: %w", e.PID, err)
	}
	if info.ID != e.ID || (e.PID != 0 && info.PID != e.PID) || info.Mountpoint != e.Mountpoint {
		c.close()
		return nil, fmt.Errorf("control socket %s is served by pid %d for mount %s at %s, not pid %d for %s at %s",
			e.Control, info.PID, info.ID, info.Mountpoint, e.PID, e.ID, e.Mountpoint)
	}
	return s.track(&procMount{
		id: e.ID, mountpoint: e.Mountpoint, control: e.Control, pid: info.PID, version: info.Version,
		image: info.Image, client: c,
	}), nil
}

// goneErr tells a clean end (exit record) from a crash, and cleans up.
func (s *Spawner) goneErr(e daemon.StateEntry) error {
	defer os.Remove(e.Control)
	if rec, ok := readExitRecord(e.Control); ok && rec.Reason == "unmounted" {
		os.Remove(exitPath(e.Control))
		return fmt.Errorf("%w (pid %d ended at %s)", daemon.ErrUnmounted, e.PID, rec.Time.Format(time.RFC3339))
	}
	return fmt.Errorf("%w: pid %d is not running", daemon.ErrServingProcessGone, e.PID)
}

// track starts following p and registers it for live settings.
func (s *Spawner) track(p *procMount) *procMount {
	if p.client == nil {
		p.client = newControlClient(p.control)
	}
	p.log = s.log.With("id", p.id, "pid", p.pid)
	p.roots = func() []string { return s.config().MountRoots }
	p.done = make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	p.stop = cancel
	p.untrack = func(ended bool) {
		s.mu.Lock()
		if ended && s.live[p] {
			s.finished = s.finished.Add(p.lastStats())
		}
		delete(s.live, p)
		s.mu.Unlock()
	}
	s.mu.Lock()
	s.live[p] = true
	s.mu.Unlock()
	go p.follow(ctx)
	return p
}

// HostStats are the figures of every mount this daemon has known, ended
// ones included, so that host-wide counters never go down. Live mounts
// count with their latest figures: no serving process is called.
func (s *Spawner) HostStats() api.MountStats {
	s.mu.Lock()
	total := s.finished
	live := make([]*procMount, 0, len(s.live))
	for p := range s.live {
		live = append(live, p)
	}
	s.mu.Unlock()
	for _, p := range live {
		total = total.Add(p.lastStats())
	}
	return total
}

// Reload takes the settings serving processes use: new mounts get them all;
// running serving processes get the log level now and keep their fetch
// limits until remounted.
func (s *Spawner) Reload(cfg daemon.Config) (applied, restart []string) {
	s.mu.Lock()
	old := s.cfg
	s.cfg.LogLevel = cfg.Daemon.LogLevel
	s.cfg.Insecure = slices.Clone(cfg.Registry.Insecure)
	s.cfg.MaxFetches = cfg.Registry.MaxFetches
	s.cfg.FetchTimeout = cfg.Registry.FetchTimeout.Std()
	s.cfg.RegistryConfigPath = cfg.Registry.ConfigPath
	s.cfg.MountRoots = slices.Clone(cfg.Daemon.MountRoots)
	s.cfg.RecordFor, s.cfg.Replay = cfg.Prefetch.RecordSeconds.Std(), cfg.Prefetch.Replay
	s.cfg.CacheMaxSize, s.cfg.CacheMinFree = int64(cfg.Cache.MaxSize), int64(cfg.Cache.MinFree)
	applied = reloadLimits(&s.cfg, cfg)
	s.cfg.Spare = cfg.Daemon.SpareServingProcess
	spareStale := spareSettings(s.cfg) != spareSettings(old)
	live := make([]*procMount, 0, len(s.live))
	for p := range s.live {
		live = append(live, p)
	}
	s.mu.Unlock()
	if cfg.Daemon.LogLevel != old.LogLevel {
		for _, p := range live {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			if err := p.client.setLogLevel(ctx, cfg.Daemon.LogLevel); err != nil {
				s.log.Warn("reload: set log level of serving process", "id", p.id, "pid", p.pid, "err", err)
			}
			cancel()
		}
		applied = append(applied, "daemon.log_level (serving processes)")
	}
	if !slices.Equal(cfg.Registry.Insecure, old.Insecure) {
		applied = append(applied, "registry.insecure (new mounts)")
	}
	if cfg.Registry.MaxFetches != old.MaxFetches {
		applied = append(applied, "registry.max_fetches (new mounts)")
	}
	if effectiveFetchTimeout(cfg.Registry.FetchTimeout.Std()) != effectiveFetchTimeout(old.FetchTimeout) {
		applied = append(applied, "registry.fetch_timeout (new mounts)")
	}
	if cfg.Registry.ConfigPath != old.RegistryConfigPath {
		applied = append(applied, "registry.config_path (new mounts)")
	}
	if cfg.Prefetch.RecordSeconds.Std() != old.RecordFor || cfg.Prefetch.Replay != old.Replay {
		applied = append(applied, "prefetch (new mounts)")
	}
	if cfg.Daemon.SpareServingProcess != old.Spare {
		applied = append(applied, "daemon.spare_serving_process")
	}
	if spareStale {
		// Started with the old settings: the next mount must not get them.
		s.dropSpare()
		s.ensureSpare()
	}
	budgetChanged := int64(cfg.Cache.MaxSize) != old.CacheMaxSize || int64(cfg.Cache.MinFree) != old.CacheMinFree
	if budgetChanged {
		// Recorded in the shared cache: every serving process adopts it.
		if err := s.store.SetBudget(int64(cfg.Cache.MaxSize), int64(cfg.Cache.MinFree)); err != nil {
			s.log.Warn("reload: cache budget", "err", err)
		} else {
			applied = append(applied, "cache.max_size", "cache.min_free")
		}
	}
	return applied, restart
}
