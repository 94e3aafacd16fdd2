package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"
)

// UnixHTTPClient returns an HTTP client whose connections all go to the
// Unix socket at socket, whatever the URL's host (the daemon's API, a
// serving process's control socket). timeout 0 means none.
func UnixHTTPClient(socket string, timeout time.Duration) *http.Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		DisableCompression: true,
	}
	return &http.Client{Transport: tr, Timeout: timeout}
}

// Client sends JSON calls to one Unix socket. Error answers come back as
// *Error carrying the server's message unchanged. Its methods Mount, List,
// Get, Unmount, Health and Metrics are the daemon's API.
type Client struct {
	socket string
	peer   string // who listens, for connection errors
	http   *http.Client
}

// NewClient returns a client of the daemon listening on socket.
func NewClient(socket string) *Client { return NewPeerClient(socket, "clipd") }

// NewPeerClient returns a client of peer (named in connection errors)
// listening on socket.
func NewPeerClient(socket, peer string) *Client {
	return &Client{socket: socket, peer: peer, http: UnixHTTPClient(socket, 0)}
}

// Socket is the path the client connects to.
func (c *Client) Socket() string { return c.socket }

// CloseIdleConnections closes the connections kept for later calls.
func (c *Client) CloseIdleConnections() { c.http.CloseIdleConnections() }

// Do sends one call with an optional JSON body and decodes a JSON answer
// into out (when not nil).
func (c *Client) Do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("%s %s: encode request: %w", method, path, err)
		}
		rd = bytes.NewReader(b)
	}
	resp, err := c.Raw(ctx, method, path, rd)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return DecodeError(resp)
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
	}
	return nil
}

// Raw sends body as is and returns the response for the caller to read.
func (c *Client) Raw(ctx context.Context, method, path string, body io.Reader) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, "http://"+c.peer+path, body)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("connect to %s at %s: %w", c.peer, c.socket, unwrapURLError(err))
	}
	return resp, nil
}

func unwrapURLError(err error) error {
	if ue, ok := err.(*url.Error); ok {
		return ue.Err
	}
	return err
}

// Mount asks for a mount.
func (c *Client) Mount(ctx context.Context, req CreateMount) (*MountInfo, error) {
	var mi MountInfo
	if err := c.Do(ctx, http.MethodPost, "/v1/mounts", req, &mi); err != nil {
		return nil, err
	}
	return &mi, nil
}

// List returns every mount with its figures.
func (c *Client) List(ctx context.Context) ([]MountInfo, error) {
	var out []MountInfo
	if err := c.Do(ctx, http.MethodGet, "/v1/mounts", nil, &out); err != nil {
		return nil, err
	}
	return out, nil
}

// Get returns one mount.
func (c *Client) Get(ctx context.Context, id string) (*MountInfo, error) {
	var mi MountInfo
	if err := c.Do(ctx, http.MethodGet, "/v1/mounts/"+url.PathEscape(id), nil, &mi); err != nil {
		return nil, err
	}
	return &mi, nil
}

// Unmount removes a mount; force detaches a busy one lazily.
func (c *Client) Unmount(ctx context.Context, id string, force bool) (*MountInfo, error) {
	p := "/v1/mounts/" + url.PathEscape(id)
	if force {
		p += "?force=true"
	}
	var mi MountInfo
	if err := c.Do(ctx, http.MethodDelete, p, nil, &mi); err != nil {
		return nil, err
	}
	return &mi, nil
}

// Health checks the daemon is alive.
func (c *Client) Health(ctx context.Context) (*Health, error) {
	var h Health
	if err := c.Do(ctx, http.MethodGet, "/v1/health", nil, &h); err != nil {
		return nil, err
	}
	return &h, nil
}

// Metrics returns the Prometheus exposition.
func (c *Client) Metrics(ctx context.Context) (string, error) {
	resp, err := c.Raw(ctx, http.MethodGet, "/metrics", nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", DecodeError(resp)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", fmt.Errorf("read metrics: %w", err)
	}
	return string(b), nil
}
