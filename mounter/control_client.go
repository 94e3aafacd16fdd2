package mounter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/clipd/clipd/api"
	"golang.org/x/sys/unix"
)

// controlClient is the daemon's side of the control protocol: it talks to
// one serving process. Every call takes the caller's ctx, which bounds it.
type controlClient struct {
	api *api.Client
}

func newControlClient(socket string) *controlClient {
	return &controlClient{api: api.NewPeerClient(socket, "serve-mount")}
}

func (c *controlClient) close() { c.api.CloseIdleConnections() }

// do makes one call. A refusal because the filesystem is in use wraps
// unix.EBUSY; other error answers keep the serving process's message.
func (c *controlClient) do(ctx context.Context, method, path string, body, out any) error {
	err := c.api.Do(ctx, method, path, body, out)
	var ae *api.Error
	if !errors.As(err, &ae) {
		return err
	}
	msg, busy := ae.Message, ae.Code == api.CodeBusy
	if m, b, ok := legacyControlError(ae); ok {
		msg, busy = m, b
	}
	if busy {
		return fmt.Errorf("%s: %w", msg, unix.EBUSY)
	}
	return errors.New(msg)
}

// legacyControlError reads the error answer of a serving process started by
// an older clipd, {"error": "...", "busy": bool}: it may still run under a
// new daemon after an upgrade.
func legacyControlError(ae *api.Error) (msg string, busy bool, ok bool) {
	var old struct {
		Error string `json:"error"`
		Busy  bool   `json:"busy"`
	}
	if json.Unmarshal([]byte(ae.Message), &old) != nil || old.Error == "" {
		return "", false, false
	}
	return old.Error, old.Busy, true
}

func (c *controlClient) info(ctx context.Context) (ControlInfo, error) {
	var ci ControlInfo
	err := c.do(ctx, http.MethodGet, "/v1/info", nil, &ci)
	return ci, err
}

func (c *controlClient) stats(ctx context.Context) (controlStats, error) {
	var st controlStats
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
