package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/clipd/clipd/api"
)

// maxBody bounds request bodies: a mount request is a few hundred bytes.
const maxBody = 1 << 20

// handlerFunc is an API handler; an *api.Error return becomes that answer,
// any other error a 500.
type handlerFunc func(w http.ResponseWriter, r *http.Request) error

// Handler returns the API with peer authorization and per-call logging.
// Serve installs it on the socket; peers come from the connection context.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	route := func(pattern string, h handlerFunc) { mux.Handle(pattern, s.apiHandler(h)) }
	route("POST /v1/mounts", s.createMount)
	route("GET /v1/mounts", s.listMounts)
	route("GET /v1/mounts/{id}", s.getMount)
	route("DELETE /v1/mounts/{id}", s.deleteMount)
	route("POST /v1/images", s.pullImage)
	route("GET /v1/images", s.listImages)
	route("POST /v1/images/prune", s.pruneImages)
	route("GET /v1/profiles", s.listProfiles)
	route("GET /v1/profiles/{image}", s.getProfile)
	route("DELETE /v1/profiles/{image}", s.deleteProfile)
	route("GET /v1/health", s.health)
	route("GET /metrics", s.metrics)
	// Method-less patterns catch what the routes above do not, so that
	// every answer, errors included, is JSON.
	notAllowed := func(http.ResponseWriter, *http.Request) error {
		return apiErr(http.StatusMethodNotAllowed, api.CodeMethod, "method not allowed")
	}
	for _, p := range []string{"/v1/mounts", "/v1/mounts/{id}", "/v1/images", "/v1/images/prune", "/v1/profiles", "/v1/profiles/{image}", "/v1/health", "/metrics"} {
		route(p, notAllowed)
	}
	route("/", func(_ http.ResponseWriter, r *http.Request) error {
		return notFound("no such endpoint: %s %s", r.Method, r.URL.Path)
	})
	return s.logged(s.authorized(mux))
}

func (s *Server) apiHandler(h handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := h(w, r); err != nil {
			s.writeError(w, r, err)
		}
	})
}

func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	var ae *api.Error
	if !errors.As(err, &ae) {
		s.log.Error("API call failed", "method", r.Method, "path", r.URL.Path, "err", err)
		ae = apiErr(http.StatusInternalServerError, api.CodeInternal, "%v", err)
	}
	api.WriteError(w, ae)
}

func (s *Server) authorized(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := authorize(peerFrom(r.Context()), s.config().Daemon); err != nil {
			s.writeError(w, r, err)
			return
		}
		next.ServeHTTP(w, r)
	})
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

// logged writes one line per API call: at DEBUG when it succeeded (a
// watchdog's health check every few seconds is no news), at WARN when it
// did not (the cause of a 500 is logged at ERROR where it arose). It also
// times mount requests for the metrics.
func (s *Server) logged(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w}
		next.ServeHTTP(rec, r)
		d := time.Since(start)
		if r.Method == http.MethodPost && r.URL.Path == "/v1/mounts" {
			s.prom.mountSeconds.WithLabelValues(strconv.Itoa(rec.status)).Observe(d.Seconds())
		}
		level := slog.LevelDebug
		if rec.status >= 400 {
			level = slog.LevelWarn
		}
		if !s.log.Enabled(r.Context(), level) {
			return
		}
		p := peerFrom(r.Context())
		attrs := []any{"method", r.Method, "path", r.URL.Path, "status", rec.status,
			"duration", d.Round(time.Microsecond)}
		if p.Known {
			attrs = append(attrs, "peer_uid", p.UID, "peer_pid", p.PID)
		}
		s.log.Log(r.Context(), level, "api", attrs...)
	})
}

func (s *Server) createMount(w http.ResponseWriter, r *http.Request) error {
	start := time.Now()
	var req api.CreateMount
	if err := api.DecodeBody(w, r, maxBody, &req); err != nil {
		return err
	}
	switch {
	case req.Archive == "" && req.Image == "":
		return badRequest(`missing field "archive" or "image"`)
	case req.Archive != "" && req.Image != "":
		return badRequest(`give one of "archive" and "image", not both`)
	case req.Mountpoint == "":
		return badRequest(`missing field "mountpoint"`)
	}
	// The checks that touch nothing come first: staging an image by
	// reference may download its index, or build it by streaming.
	roots := s.config().Daemon.MountRoots
	real, err := checkMountpointPath(req.Mountpoint, roots)
	if err != nil {
		return err
	}
	if err := checkRoot(req.Setuid, real, roots); err != nil {
		return err
	}
	peer := peerFrom(r.Context())
	img, archive, err := s.openSource(r, req)
	if err != nil {
		return err
	}
	defer archive.Close() // the Mounter has read it or passed it on
	if img != nil {
		req.Archive = img.path
	}
	if err := s.reserve(real); err != nil {
		return err
	}
	defer s.release(real)
	// The bundle directory first: it may be the mountpoint's parent, which
	// it then creates (and removes with the mount).
	bd, err := openBundle(req.Bundle, real, roots)
	if err != nil {
		return err
	}
	defer bd.close()
	mp, err := openMountpoint(real, roots)
	if err != nil {
		bd.cleanup()
		return err
	}
	defer mp.close()

	e := &entry{StateEntry: StateEntry{
		ID: newID(), Archive: filepath.Clean(req.Archive), Mountpoint: real,
		Created: time.Now().UTC(), PID: os.Getpid(), Version: s.version, State: api.MountActive, Setuid: req.Setuid,
	}}
	// A mount is not cancelled when its client hangs up: cut short, a
	// serving process would have to be killed and its mount detached while
	// it may be coming up; finished, the mount is in the table (and listed)
	// like any other. The mounter bounds how long a mount may take.
	checked := time.Now()
	m, err := s.mounter.Mount(context.WithoutCancel(r.Context()), MountRequest{
		ID: e.ID, Archive: e.Archive, ArchiveFile: archive, Mountpoint: real, Dir: mp.dir, Writable: req.Writable,
		Prefetch: req.Prefetch, Setuid: req.Setuid, As: peer.identity(), Credentials: img.credentials(),
	})
	if err != nil {
		mp.cleanup()
		bd.cleanup()
		s.log.Error("mount failed", "archive", e.Archive, "mountpoint", real, "err", err)
		if errors.Is(err, ErrInvalidArchive) {
			return apiErr(http.StatusUnprocessableEntity, api.CodeBadArchive, "mount %s at %s: %v", e.Archive, real, err)
		}
		if errors.Is(err, ErrArchiveUnavailable) {
			return apiErr(http.StatusNotFound, api.CodeArchiveUnavailable, "mount %s at %s: %v", e.Archive, real,
				strings.TrimPrefix(err.Error(), ErrArchiveUnavailable.Error()+": "))
		}
		if errors.Is(err, ErrRegistryUnauthorized) {
			return apiErr(http.StatusUnauthorized, api.CodeRegistryUnauthorized,
				"mount %s at %s: %s: credentials missing or wrong (an archive's layers are read with the daemon's docker config.json)",
				e.Archive, real, strings.TrimPrefix(err.Error(), ErrRegistryUnauthorized.Error()+": "))
		}
		if errors.Is(err, ErrMountpointMoved) {
			return conflict("mountpoint %s was renamed or swapped while mounting: %v", real,
				strings.TrimPrefix(err.Error(), ErrMountpointMoved.Error()+": "))
		}
		return apiErr(http.StatusInternalServerError, api.CodeMountFailed, "mount %s at %s: %v", e.Archive, real, err)
	}
	served := time.Now()
	e.m, e.image = m, m.Image()
	e.setOverlay(m)
	if e.Bundle, err = bd.write(mp, e.image, req.Writable); err != nil {
		s.undoMount(r.Context(), m, mp, bd)
		return err
	}
	if img != nil {
		e.ImageRef, e.ManifestDigest = img.ref, img.manifest
	}
	proc := m.Process()
	e.PID, e.Control, e.Version = proc.PID, proc.Control, proc.Version

	created := e.info(api.MountStats{}) // e changes under s.mu once in the table
	if img != nil {
		created.IndexSource = img.source
	}
	s.mu.Lock()
	closing := s.closing
	if !closing {
		s.mounts[e.ID] = e
	}
	s.mu.Unlock()
	if closing {
		// Shutdown began while this mount was being made: do not leave it
		// behind a table that has already been emptied.
		uctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), unmountCallTimeout)
		err := m.Unmount(uctx, true)
		cancel()
		if err != nil {
			s.log.Error("unmount during shutdown", "mountpoint", real, "err", err)
		} else {
			removeBundle(e.Bundle, real, roots, s.log)
			mp.cleanup()
		}
		return apiErr(http.StatusServiceUnavailable, api.CodeInternal, "clipd is shutting down")
	}
	go s.watch(e, m)
	tabled := time.Now()
	if err := s.persist(); err != nil {
		s.log.Error("persist mount table", "err", err)
	}
	// Where a mount request's time goes (README, "Fast mounts"); the
	// serving process logs its own phases.
	s.log.Debug("mount request phases", "id", e.ID, "checks", checked.Sub(start).Round(time.Microsecond),
		"serving_process", served.Sub(checked).Round(time.Microsecond), "bundle_table", tabled.Sub(served).Round(time.Microsecond),
		"persist", time.Since(tabled).Round(time.Microsecond))
	s.log.Info("mounted", "id", e.ID, "archive", e.Archive, "mountpoint", real, "prefetch", req.Prefetch,
		"pid", e.PID, "version", e.Version)
	api.WriteJSON(w, http.StatusCreated, created)
	return nil
}

// reserve claims real for one mount request, so that two concurrent
// requests for the same directory cannot both pass the emptiness check.
func (s *Server) reserve(real string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return apiErr(http.StatusServiceUnavailable, api.CodeInternal, "clipd is shutting down")
	}
	if s.pending[real] {
		return conflict("mountpoint %s is busy: a mount is in progress there", real)
	}
	for _, e := range s.mounts {
		if e.Mountpoint == real && e.State == api.MountFailed {
			return conflict("mountpoint %s is busy: it holds failed mount %s (delete it first)", real, e.ID)
		}
		if e.Mountpoint == real {
			return conflict("mountpoint %s is busy: already mounted as %s", real, e.ID)
		}
	}
	s.pending[real] = true
	return nil
}

func (s *Server) release(real string) {
	s.mu.Lock()
	delete(s.pending, real)
	s.mu.Unlock()
}

func (e *entry) info(st api.MountStats) api.MountInfo {
	state := e.State
	if state == "" {
		state = api.MountActive
	}
	return e.withOverlay(api.MountInfo{ID: e.ID, Mountpoint: e.Mountpoint, Archive: e.Archive, Created: e.Created, Image: e.image, Stats: st,
		State: state, Error: e.Error, PID: e.PID, Version: e.Version, Setuid: e.Setuid,
		ImageConfig: imageConfig(e.image), Bundle: e.bundlePath(),
		ImageRef: e.ImageRef, ManifestDigest: e.ManifestDigest})
}

// sorted lists the table by creation; the caller holds s.mu.
func (s *Server) sorted() []*entry {
	all := make([]*entry, 0, len(s.mounts))
	for _, e := range s.mounts {
		all = append(all, e)
	}
	slices.SortFunc(all, func(a, b *entry) int {
		if c := a.Created.Compare(b.Created); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return all
}

// snapshot copies the table in creation order: the copies can be read
// without the lock while a watcher marks a live entry failed.
func (s *Server) snapshot() []*entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	all := s.sorted()
	for i, e := range all {
		c := *e
		all[i] = &c
	}
	return all
}

func (s *Server) listMounts(w http.ResponseWriter, r *http.Request) error {
	all := s.snapshot()
	// Stats outside the lock: with serving processes it is a call away.
	stats := s.statsOf(r.Context(), all)
	out := make([]api.MountInfo, 0, len(all))
	for i, e := range all {
		out = append(out, e.info(stats[i]))
	}
	api.WriteJSON(w, http.StatusOK, out)
	return nil
}

// lookup returns a copy of one entry.
func (s *Server) lookup(id string) (*entry, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.mounts[id]
	if !ok {
		return nil, notFound("no mount with id %q", id)
	}
	c := *e
	return &c, nil
}

func (s *Server) getMount(w http.ResponseWriter, r *http.Request) error {
	e, err := s.lookup(r.PathValue("id"))
	if err != nil {
		return err
	}
	api.WriteJSON(w, http.StatusOK, e.info(s.statsOf(r.Context(), []*entry{e})[0]))
	return nil
}

func (s *Server) deleteMount(w http.ResponseWriter, r *http.Request) error {
	opts, err := unmountOptions(r)
	if err != nil {
		return err
	}
	force := opts.Force
	id := r.PathValue("id")
	s.mu.Lock()
	e, ok := s.mounts[id]
	switch {
	case !ok:
		s.mu.Unlock()
		return notFound("no mount with id %q", id)
	case e.unmounting:
		s.mu.Unlock()
		return conflict("mount %s is already being unmounted", id)
	}
	e.unmounting = true
	m := e.m // fixed while unmounting is set
	s.mu.Unlock()

	st := s.statsOf(r.Context(), []*entry{{m: m}})[0]
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), unmountCallTimeout)
	defer cancel()
	// unmountEntry answers 409 for a busy mount, naming what holds it.
	note, err := s.unmountEntry(ctx, e, m, opts)
	if err != nil {
		s.mu.Lock()
		e.unmounting = false
		s.mu.Unlock()
		// A filesystem that went away meanwhile is removed by its watcher.
		var ae *api.Error
		if errors.As(err, &ae) {
			return err
		}
		return fmt.Errorf("unmount %s at %s: %w", id, e.Mountpoint, err)
	}
	s.mu.Lock()
	delete(s.mounts, id)
	s.mu.Unlock()
	s.persistOrLog()
	removeBundle(e.Bundle, e.Mountpoint, s.config().Daemon.MountRoots, s.log)
	s.log.Info("unmounted", "id", id, "mountpoint", e.Mountpoint, "force", force)
	out := e.info(st)
	out.Note = note
	api.WriteJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) health(w http.ResponseWriter, r *http.Request) error {
	s.mu.Lock()
	n, failed := len(s.mounts), 0
	for _, e := range s.mounts {
		if e.State == api.MountFailed {
			failed++
		}
	}
	s.mu.Unlock()
	api.WriteJSON(w, http.StatusOK, api.Health{Status: "ok", Version: s.version, Mounts: n, Failed: failed})
	return nil
}
