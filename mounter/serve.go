package mounter

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/clipd/clipd/daemon"
)

// ServeOptions configure one serving process (clipd serve-mount).
type ServeOptions struct {
	ID         string
	Archive    string
	Mountpoint string
	// Control is the control socket to listen on.
	Control  string
	Prefetch bool
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
}

// ServeMount is the body of a serving process: it mounts one archive with an
// in-process Mounter, answers on its control socket, and returns once the
// filesystem is unmounted (by the daemon, from a shell, or after ctx ends:
// then it detaches the filesystem lazily and serves the files still open).
// A mount error is reported on Report and returned.
func ServeMount(ctx context.Context, o ServeOptions) (err error) {
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
			msg := readyMsg{PID: os.Getpid(), Version: o.Version, Error: err.Error()}
			if errors.Is(err, daemon.ErrInvalidArchive) {
				msg.InvalidArchive = true
				msg.Error = strings.TrimPrefix(msg.Error, daemon.ErrInvalidArchive.Error()+": ")
			}
			report(msg)
		}
	}()

	ln, err := listenControl(o.Control)
	if err != nil {
		return err
	}
	defer ln.Close()
	m, err := New(o.Mounter)
	if err != nil {
		return err
	}
	mt, err := m.Mount(ctx, daemon.MountRequest{ID: o.ID, Archive: o.Archive, Mountpoint: o.Mountpoint, Prefetch: o.Prefetch})
	if err != nil {
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
	log.Info("serving mount", "archive", o.Archive, "mountpoint", o.Mountpoint, "control", o.Control, "pid", os.Getpid(), "version", o.Version)
	report(readyMsg{OK: true, PID: os.Getpid(), Version: o.Version, Image: image})

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
