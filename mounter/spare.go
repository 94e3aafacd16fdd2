package mounter

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// spareProc is a serving process started ahead of any request
// (spare_proto.go), waiting for one on conn.
type spareProc struct {
	conn  *net.UnixConn // the daemon's end, close-on-exec
	proc  *os.Process
	child *childProc
	gen   uint64        // Spawner.spareGen when it was started
	ready chan struct{} // closed once it wrote SpareReady
}

// release closes the daemon's end: the spare exits by itself, and is
// killed too in case it is stuck before reading.
func (sp *spareProc) release() {
	sp.conn.Close()
	_ = sp.proc.Kill()
}

// serveConfigArgs are the serve-mount flags that come from the daemon's
// configuration, not from a request: a spare is started with them.
func serveConfigArgs(cfg SpawnConfig) []string {
	args := []string{"--cache", cfg.CacheDir, "--max-fetches", fmt.Sprint(cfg.MaxFetches), "--log-level", cfg.LogLevel}
	for _, h := range cfg.Insecure {
		args = append(args, "--insecure", h)
	}
	if cfg.FetchTimeout > 0 {
		args = append(args, "--fetch-timeout", cfg.FetchTimeout.String())
	}
	if cfg.RegistryConfigPath != "" {
		args = append(args, "--registry-config-path", cfg.RegistryConfigPath)
	}
	if cfg.Profiles != "" && (cfg.RecordFor > 0 || cfg.Replay) {
		args = append(args, "--profiles", cfg.Profiles, "--record-for", cfg.RecordFor.String())
		if cfg.Replay {
			args = append(args, "--replay")
		}
	}
	return args
}

// serveEnv is a serving process's environment: the configured one with
// its Go soft limit, and never a mountpoint descriptor or peer identity
// the daemon did not set itself.
func serveEnv(cfg SpawnConfig) []string {
	return slices.DeleteFunc(cfg.Limits.env(cfg.Env), func(kv string) bool {
		return strings.HasPrefix(kv, PeerEnv+"=") || strings.HasPrefix(kv, MountpointFDEnv+"=")
	})
}

// spareSettings is what a spare was started with: a reload that changes
// it replaces the spare.
func spareSettings(cfg SpawnConfig) string {
	return fmt.Sprint(cfg.Spare, cfg.Executable, serveConfigArgs(cfg), cfg.Limits)
}

// ensureSpare starts a spare in the background unless one is there or
// starting, or spares are off. It never waits for the process.
func (s *Spawner) ensureSpare() {
	s.mu.Lock()
	if !s.cfg.Spare || s.closed || s.spare != nil || s.spareStarting {
		s.mu.Unlock()
		return
	}
	s.spareStarting = true
	cfg, gen := s.cfg, s.spareGen
	s.mu.Unlock()
	go func() {
		sp, err := s.startSpare(cfg, gen)
		s.mu.Lock()
		s.spareStarting = false
		keep := err == nil && gen == s.spareGen && !s.closed
		if keep {
			s.spare = sp
		}
		s.mu.Unlock()
		switch {
		case err != nil:
			s.log.Warn("start spare serving process; mounts start their own", "err", err)
		case !keep:
			sp.release()
		default:
			s.log.Debug("spare serving process started", "pid", sp.proc.Pid)
		}
	}()
}

// startSpare starts a spare with the settings of cfg: the same
// executable, flags, environment, session and limits a serving process
// exec'd for a mount gets, minus the request.
func (s *Spawner) startSpare(cfg SpawnConfig, gen uint64) (*spareProc, error) {
	// SOCK_SEQPACKET: one request is one message, and the spare reads
	// EOF when the daemon's end closes. Close-on-exec: no other process
	// (serving processes started later, the daemon re-exec'd) keeps the
	// daemon's end open, so the spare dies with the daemon.
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("spare serving process: socketpair: %w", err)
	}
	ours, theirs := os.NewFile(uintptr(pair[0]), "spare"), os.NewFile(uintptr(pair[1]), "spare")
	defer theirs.Close()
	fc, err := net.FileConn(ours)
	ours.Close()
	if err != nil {
		return nil, fmt.Errorf("spare serving process: %w", err)
	}
	conn := fc.(*net.UnixConn)
	begun := time.Now()
	args := append([]string{"serve-mount", "--spare-fd", "3"}, serveConfigArgs(cfg)...)
	cmd := exec.Command(cfg.Executable, args...)
	cmd.Env = serveEnv(cfg)
	cmd.Stdout, cmd.Stderr = cfg.Stderr, cfg.Stderr
	cmd.ExtraFiles = []*os.File{theirs} // fd 3
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		conn.Close()
		return nil, fmt.Errorf("start spare serving process %s: %w", cfg.Executable, err)
	}
	child := &childProc{exited: make(chan struct{})}
	go func() { child.err = cmd.Wait(); close(child.exited) }()
	sp := &spareProc{conn: conn, proc: cmd.Process, child: child, gen: gen, ready: make(chan struct{})}
	if err := cfg.Limits.apply(cmd.Process.Pid); err != nil {
		sp.release()
		<-child.exited
		return nil, err
	}
	go func() {
		b := make([]byte, len(SpareReady))
		if n, err := conn.Read(b); err == nil && string(b[:n]) == SpareReady {
			close(sp.ready)
			s.log.Debug("spare serving process ready", "pid", sp.proc.Pid, "after", time.Since(begun).Round(time.Microsecond))
		}
	}()
	go func() {
		<-child.exited
		s.mu.Lock()
		if s.spare == sp {
			s.spare = nil
		}
		s.mu.Unlock()
		conn.Close()
	}()
	return sp, nil
}

// takeSpare hands out the spare if it is ready and current, or nil: a
// mount never waits for a spare.
func (s *Spawner) takeSpare() *spareProc {
	s.mu.Lock()
	defer s.mu.Unlock()
	sp := s.spare
	if sp == nil || sp.gen != s.spareGen || !s.cfg.Spare {
		return nil
	}
	select {
	case <-sp.child.exited:
		s.spare = nil
		return nil
	default:
	}
	select {
	case <-sp.ready:
	default:
		return nil // still starting: stays for the next request
	}
	s.spare = nil
	return sp
}

// dropSpare releases the spare, if any: the settings it was started with
// no longer apply, or the daemon stops.
func (s *Spawner) dropSpare() {
	s.mu.Lock()
	sp := s.spare
	s.spare = nil
	s.spareGen++
	s.mu.Unlock()
	if sp != nil {
		sp.release()
	}
}

// Close releases the spare serving process; running serving processes
// are not affected.
func (s *Spawner) Close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.dropSpare()
}

// startOnSpare hands req to sp: the request-specific options in JSON and
// the descriptors the exec path would pass as inherited ones.
func startOnSpare(sp *spareProc, r SpareRequest, report, dir, archive, auth *os.File) error {
	files := []*os.File{report}
	if r.Dir = dir != nil; r.Dir {
		files = append(files, dir)
	}
	if r.ArchiveFile = archive != nil; r.ArchiveFile {
		files = append(files, archive)
	}
	if r.Credentials = auth != nil; r.Credentials {
		files = append(files, auth)
	}
	err := sendSpareRequest(sp.conn, r, files)
	// Sent or not, this spare is used up: the daemon's end closes, which
	// ends it if it did not get the request.
	sp.conn.Close()
	return err
}
