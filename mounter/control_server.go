package mounter

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/clipd/clipd/api"
	"golang.org/x/sys/unix"
)

// listenControl creates the control socket, readable by its owner only.
func listenControl(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("control socket dir %s: %w", filepath.Dir(path), err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("remove stale control socket %s: %w", path, err)
	}
	os.Remove(exitPath(path))
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on control socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("chmod control socket %s: %w", path, err)
	}
	return ln, nil
}

// controlServer is the serving side of the control protocol: it answers
// the daemon about the one filesystem of this process.
type controlServer struct {
	o       ServeOptions
	mt      *Filesystem
	log     *slog.Logger
	image   json.RawMessage
	started time.Time

	gone     chan struct{} // closed once the filesystem is gone
	goneOnce sync.Once
}

func (c *controlServer) markGone() { c.goneOnce.Do(func() { close(c.gone) }) }

func (c *controlServer) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/info", func(w http.ResponseWriter, r *http.Request) {
		api.WriteJSON(w, http.StatusOK, ControlInfo{ID: c.o.ID, PID: os.Getpid(), Version: c.o.Version, Archive: c.o.Archive,
			Mountpoint: c.o.Mountpoint, Started: c.started, Image: c.image})
	})
	mux.HandleFunc("GET /v1/stats", func(w http.ResponseWriter, r *http.Request) {
		api.WriteJSON(w, http.StatusOK, c.mt.controlStats())
	})
	mux.HandleFunc("POST /v1/unmount", func(w http.ResponseWriter, r *http.Request) {
		force, _ := strconv.ParseBool(r.URL.Query().Get("force"))
		if err := c.mt.Unmount(force); err != nil {
			code := api.CodeConflict
			if !force || errors.Is(err, unix.EBUSY) {
				code = api.CodeBusy
			}
			api.WriteError(w, api.Errorf(http.StatusConflict, code, "%v", err))
			return
		}
		c.log.Info("unmounted on the daemon's request", "force", force)
		api.WriteJSON(w, http.StatusOK, struct{}{})
	})
	mux.HandleFunc("GET /v1/wait", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-c.gone:
			api.WriteJSON(w, http.StatusOK, exitRecord{Reason: "unmounted", Time: time.Now().UTC()})
		case <-r.Context().Done():
		}
	})
	mux.HandleFunc("PUT /v1/log-level", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Level string `json:"level"`
		}
		if ae := api.DecodeBody(w, r, 4096, &body); ae != nil {
			api.WriteError(w, ae)
			return
		}
		lv, err := api.ParseLogLevel(body.Level)
		if err != nil || c.o.Level == nil {
			api.WriteError(w, api.Errorf(http.StatusBadRequest, api.CodeBadRequest, "log level: %v", err))
			return
		}
		c.o.Level.Set(lv)
		api.WriteJSON(w, http.StatusOK, struct{}{})
	})
	return mux
}
