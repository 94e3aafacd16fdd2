package mounter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/clipd/clipd/daemon"
	"github.com/clipd/clipd/internal/peeropen"
	"golang.org/x/sys/unix"
)

// ServeOptions configure one serving process (clipd serve-mount).
type ServeOptions struct {
	ID         string
	Archive    string
	Mountpoint string
	// ArchiveFile is Archive as the daemon opened it with the requesting
	// peer's rights (--archive-fd); nil: open Archive. It stays open for
	// the life of the process.
	ArchiveFile *os.File
	// Control is the control socket to listen on.
	Control  string
	Prefetch bool
	Setuid   bool // honour setuid/setgid bits (no MS_NOSUID)
	// Version of this binary, reported to the daemon.
	Version string
	// Mounter configures the in-process Mounter this process runs.
	Mounter Config
	// Level is the level of Mounter.Logger's handler, changed through the
	// control socket; may be nil.
	Level *slog.LevelVar
	// Report receives one JSON line once the mount is live or has failed,
	// then is closed (the daemon's start pipe); may be nil.
	Report io.WriteCloser
	// Dir is the mountpoint directory the daemon opened and checked,
	// mounted on as is; nil: Mountpoint is mounted on.
	Dir *os.File
	// As is the identity of the peer that asked for the mount (root when
	// zero): layout blobs the archive names are opened with it.
	As peeropen.Identity
	// EnvInputs takes Dir and As from MountpointFDEnv and PeerEnv (a
	// serving process exec'd by the daemon). A spare serving process gets
	// them in its request instead and never reads its environment.
	EnvInputs bool
	// Spare: this process was started before the request (a spare), so
	// its runtime start-up is not on the request's path.
	Spare bool
	// Warm is the warm-up a spare started before its request
	// (WarmSpare); nil: none.
	Warm *Warm
	// Received is when a spare received its request (zero otherwise): the
	// phase log tells the hand-off from the mount's own work.
	Received time.Time
}

// ServeMount is the body of a serving process: it mounts one archive with an
// in-process Mounter, answers on its control socket, and returns once the
// filesystem is unmounted (by the daemon, from a shell, or after ctx ends:
// then it detaches the filesystem lazily and serves the files still open).
// A mount error is reported on Report and returned.
func ServeMount(ctx context.Context, o ServeOptions) (err error) {
	entered := time.Now()
	log := o.Mounter.Logger
	if log == nil {
		log = slog.Default()
	}
	report := func(m readyMsg) {
		if o.Report == nil {
			return
		}
		b, _ := json.Marshal(m)
		if _, err := o.Report.Write(append(b, '\n')); err != nil {
			log.Warn("report to the daemon", "err", err)
		}
		o.Report.Close()
		o.Report = nil
	}
	defer func() {
		if err != nil {
			report(failure(os.Getpid(), o.Version, err))
		}
	}()

	ln, err := listenControl(o.Control)
	if err != nil {
		return err
	}
	defer ln.Close()
	if o.Warm != nil {
		if o.Mounter.Store, err = o.Warm.Finish(); err != nil {
			return err
		}
	}
	m, err := New(o.Mounter)
	if err != nil {
		return err
	}
	dir, as := o.Dir, o.As
	if o.EnvInputs {
		if dir, err = mountpointDir(); err != nil {
			return err
		}
		if as, err = peerIdentity(); err != nil {
			return err
		}
	}
	// Start-up allocates the index and keeps most of it: collections while
	// it is decoded find little to free and cost a 100,000-file mount tens
	// of milliseconds, and the peak is no higher without them (the garbage
	// is the index section, read once). GOMEMLIMIT (serve_memory_limit)
	// still makes the runtime collect if start-up nears it. The collector
	// comes back once the mount is reported live: turned on earlier, it
	// finds the heap far past its goal and collects on the request's path.
	gcPercent := debug.SetGCPercent(-1)
	if o.Warm != nil {
		gcPercent = o.Warm.gcPercent // off since WarmSpare
	}
	mounting := time.Now()
	mt, err := m.Mount(ctx, daemon.MountRequest{ID: o.ID, Archive: o.Archive, ArchiveFile: o.ArchiveFile, Mountpoint: o.Mountpoint, Dir: dir, Prefetch: o.Prefetch,
		Setuid: o.Setuid, As: as})
	mounted := time.Now()
	if dir != nil {
		dir.Close() // mounted on, or failed: no longer needed
	}
	if err != nil {
		debug.SetGCPercent(gcPercent)
		return err
	}
	image, _ := json.Marshal(mt.Image())
	cs := &controlServer{o: o, mt: mt, log: log, image: image, started: time.Now().UTC(), gone: make(chan struct{})}
	srv := &http.Server{Handler: cs.handler(), ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("control socket", "socket", o.Control, "err", err)
		}
	}()
	attrs := []any{"spare", o.Spare, "runtime_init", entered.Sub(processStart).Round(time.Microsecond)}
	if !o.Received.IsZero() {
		attrs = append(attrs, "handoff", entered.Sub(o.Received).Round(time.Microsecond))
	}
	attrs = append(attrs, "setup", mounting.Sub(entered).Round(time.Microsecond), "mount", mounted.Sub(mounting).Round(time.Microsecond),
		"serve", time.Since(mounted).Round(time.Microsecond), "to_live", time.Since(entered).Round(time.Microsecond))
	log.Debug("serving process start-up", attrs...)
	log.Info("serving mount", "archive", o.Archive, "mountpoint", o.Mountpoint, "control", o.Control, "pid", os.Getpid(), "version", o.Version)
	report(readyMsg{OK: true, PID: os.Getpid(), Version: o.Version, Image: image})
	// Off the request's path: collect again, and give the start-up
	// garbage back. A live mount's heap is mostly its index, which stays;
	// what comes and goes is per-request garbage (go-fuse allocates a few
	// hundred bytes per request), which at GOGC 100 on a 100,000-file
	// index's 30 MiB let the process grow to 70 MiB under metadata walks,
	// 58 MiB at 50 (README, "Fast mounts"). A lower GOGC from the
	// environment is kept.
	debug.SetGCPercent(min(gcPercent, servingGCPercent))
	go debug.FreeOSMemory()

	select {
	case <-mt.Done():
	case <-ctx.Done():
		log.Info("stop requested: detaching the filesystem; files still open keep being served")
		go func() {
			if err := mt.Unmount(true); err != nil {
				log.Error("detach", "err", err)
			}
		}()
		<-mt.Done()
	}
	// Tell whoever comes next that this was a clean end, then let the
	// daemon's /v1/wait call have its answer before exiting.
	rec, _ := json.Marshal(exitRecord{Reason: "unmounted", Time: time.Now().UTC()})
	if err := os.WriteFile(exitPath(o.Control), rec, 0o600); err != nil {
		log.Warn("write exit record", "err", err)
	}
	cs.markGone()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	os.Remove(o.Control)
	log.Info("filesystem unmounted; serving process exits", "mountpoint", o.Mountpoint)
	return nil
}

// processStart is taken when this package is initialized, early in a
// serving process's life: the phase log tells process start-up from the
// mount's own work.
var processStart = time.Now()

// MountpointFDEnv names the descriptor of the mountpoint directory the
// daemon opened and checked, passed to the serving process: it mounts on
// that directory, not on the path.
const MountpointFDEnv = "CLIPD_MOUNTPOINT_FD"

// PeerEnv names the identity ("uid:gid:groups", peeropen) of the peer that
// asked for the mount, passed to the serving process when it is not root:
// the layout blobs its archive names are opened with that identity.
const PeerEnv = "CLIPD_PEER"

// peerIdentity takes the identity named by PeerEnv; root when none was
// passed.
func peerIdentity() (peeropen.Identity, error) {
	v, ok := os.LookupEnv(PeerEnv)
	if !ok {
		return peeropen.Identity{}, nil
	}
	os.Unsetenv(PeerEnv)
	return peeropen.Parse(v)
}

// mountpointDir takes the descriptor named by MountpointFDEnv; nil when
// none was passed (the daemon-checked path is then mounted on).
func mountpointDir() (*os.File, error) {
	v, ok := os.LookupEnv(MountpointFDEnv)
	if !ok {
		return nil, nil
	}
	os.Unsetenv(MountpointFDEnv)
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return nil, fmt.Errorf("%s=%q: not a descriptor", MountpointFDEnv, v)
	}
	unix.CloseOnExec(fd)
	f, err := DirFromFD(fd)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", MountpointFDEnv, err)
	}
	return f, nil
}

// DirFromFD takes the open directory fd as the mountpoint directory.
func DirFromFD(fd int) (*os.File, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return nil, fmt.Errorf("descriptor %d: not an open directory (%v)", fd, err)
	}
	return os.NewFile(uintptr(fd), "mountpoint"), nil
}

// servingGCPercent is the collector's GOGC once a mount is live (see the
// end of ServeMount).
const servingGCPercent = 50
