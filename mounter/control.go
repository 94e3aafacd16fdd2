package mounter

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/clipd/clipd/daemon"
	"golang.org/x/sys/unix"
)

// The control protocol between the daemon and a serving process: HTTP/1.1
// with JSON bodies on a Unix socket (mode 0600, in a 0700 directory under
// state_dir), so that a restarted daemon can find and drive the process
// again.
//
//	GET  /v1/info        ControlInfo
//	GET  /v1/stats       daemon.MountStats
//	POST /v1/unmount     ?force=true; 409 with "busy" when in use
//	GET  /v1/wait        answers once the filesystem is gone
//	PUT  /v1/log-level   {"level": "debug"}

// ControlInfo describes a serving process and its mount.
type ControlInfo struct {
	ID         string          `json:"id"`
	PID        int             `json:"pid"`
	Version    string          `json:"version"`
	Archive    string          `json:"archive"`
	Mountpoint string          `json:"mountpoint"`
	Started    time.Time       `json:"started"`
	Image      json.RawMessage `json:"image"`
}

// readyMsg is the one line a serving process writes on its report pipe:
// the mount is live, or why it could not be made.
type readyMsg struct {
	OK             bool            `json:"ok"`
	PID            int             `json:"pid"`
	Version        string          `json:"version,omitempty"`
	Image          json.RawMessage `json:"image,omitempty"`
	Error          string          `json:"error,omitempty"`
	InvalidArchive bool            `json:"invalid_archive,omitempty"`
}

// exitRecord is left beside the control socket by a serving process whose
// filesystem was unmounted, so that a daemon that was down at the time can
// tell a clean end from a crash.
type exitRecord struct {
	Reason string    `json:"reason"`
	Time   time.Time `json:"time"`
}

type controlError struct {
	Error string `json:"error"`
	Busy  bool   `json:"busy,omitempty"`
}

// exitPath is where the serving process of control leaves its exitRecord.
func exitPath(control string) string { return strings.TrimSuffix(control, ".sock") + ".exit" }

func readExitRecord(control string) (exitRecord, bool) {
	b, err := os.ReadFile(exitPath(control))
	if err != nil {
		return exitRecord{}, false
	}
	var r exitRecord
	if json.Unmarshal(b, &r) != nil {
		return exitRecord{}, false
	}
	return r, true
}

// controlClient talks to one serving process.
type controlClient struct {
	socket string
	http   *http.Client
}

func newControlClient(socket string) *controlClient {
	return &controlClient{socket: socket, http: daemon.UnixHTTPClient(socket, 0)}
}

func (c *controlClient) close() { c.http.CloseIdleConnections() }

func (c *controlClient) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://serve-mount"+path, rd)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("control socket %s: %s %s: %w", c.socket, method, path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		var ce controlError
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64*1024))
		if json.Unmarshal(b, &ce) != nil || ce.Error == "" {
			ce.Error = strings.TrimSpace(string(b))
		}
		if ce.Busy {
			return fmt.Errorf("%s: %w", ce.Error, unix.EBUSY)
		}
		return errors.New(ce.Error)
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("control socket %s: %s %s: decode answer: %w", c.socket, method, path, err)
	}
	return nil
}

func (c *controlClient) info(ctx context.Context) (ControlInfo, error) {
	var ci ControlInfo
	err := c.do(ctx, http.MethodGet, "/v1/info", nil, &ci)
	return ci, err
}

func (c *controlClient) stats(ctx context.Context) (daemon.MountStats, error) {
	var st daemon.MountStats
	err := c.do(ctx, http.MethodGet, "/v1/stats", nil, &st)
	return st, err
}

func (c *controlClient) unmount(ctx context.Context, force bool) error {
	return c.do(ctx, http.MethodPost, fmt.Sprintf("/v1/unmount?force=%t", force), nil, nil)
}

// wait returns nil once the filesystem is gone (a clean end); an error means
// the connection broke: the process died, or the caller gave up.
func (c *controlClient) wait(ctx context.Context) error {
	var r exitRecord
	if err := c.do(ctx, http.MethodGet, "/v1/wait", nil, &r); err != nil {
		return err
	}
	return nil
}

func (c *controlClient) setLogLevel(ctx context.Context, level string) error {
	return c.do(ctx, http.MethodPut, "/v1/log-level", map[string]string{"level": level}, nil)
}
