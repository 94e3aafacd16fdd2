package testenv

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// StartRegistry starts Debian's docker-registry (distribution 2.8) on a free
// port of 127.0.0.1 with filesystem storage in a temporary directory, waits
// until it answers GET /v2/, and stops it when the test ends. It returns
// "127.0.0.1:PORT". The registry's log is copied into the test log when the
// test fails.
func StartRegistry(t testing.TB) string {
	t.Helper()
	return StartRegistryWith(t, "")
}

// StartRegistryWith is StartRegistry with extra top-level sections of the
// registry's config.yml (auth:, proxy:).
func StartRegistryWith(t testing.TB, extra string) string {
	t.Helper()
	RequireTools(t, "docker-registry")
	r, err := RunRegistryWith(context.Background(), t.TempDir(), extra)
	if err != nil {
		t.Fatalf("start registry: %v", err)
	}
	t.Cleanup(func() {
		r.Stop()
		if t.Failed() {
			t.Logf("docker-registry %s log:\n%s", r.Addr, r.Log())
		}
	})
	return r.Addr
}

// Registry is a running docker-registry (RunRegistry).
type Registry struct {
	// Addr is "127.0.0.1:PORT", usable as a registry host.
	Addr   string
	cmd    *exec.Cmd
	out    *SyncBuffer
	exited chan error
	// dir and extra start it again (Restart).
	dir, extra string
}

// Restart starts a stopped registry again on the same address and
// storage; Log then shows the new run's log.
func (r *Registry) Restart(ctx context.Context) error {
	nr, err := runRegistryAt(ctx, r.dir, r.Addr, r.extra)
	if err != nil {
		return err
	}
	r.cmd, r.exited, r.out = nr.cmd, nr.exited, nr.out
	return nil
}

// RunRegistry starts Debian's docker-registry on a free port of 127.0.0.1
// with filesystem storage under dir and waits until it answers GET /v2/;
// Stop ends it. Tests call StartRegistry; the benchmark calls this.
func RunRegistry(ctx context.Context, dir string) (*Registry, error) {
	return RunRegistryWith(ctx, dir, "")
}

// StartProxyRegistry starts docker-registry as a pull-through cache of the
// registry at remote ("host:port", plain HTTP), with its own storage, and
// stops it when the test ends (Stop ends it earlier).
func StartProxyRegistry(t testing.TB, remote string) *Registry {
	t.Helper()
	RequireTools(t, "docker-registry")
	r, err := RunRegistryWith(context.Background(), t.TempDir(), fmt.Sprintf("proxy:\n  remoteurl: http://%s\n", remote))
	if err != nil {
		t.Fatalf("start pull-through cache of %s: %v", remote, err)
	}
	t.Cleanup(func() {
		r.Stop()
		if t.Failed() {
			t.Logf("docker-registry cache %s log:\n%s", r.Addr, r.Log())
		}
	})
	return r
}

// StartRegistryProcess is StartRegistry for a test that stops the registry
// itself (Stop).
func StartRegistryProcess(t testing.TB) *Registry {
	t.Helper()
	RequireTools(t, "docker-registry")
	r, err := RunRegistry(context.Background(), t.TempDir())
	if err != nil {
		t.Fatalf("start registry: %v", err)
	}
	t.Cleanup(func() {
		r.Stop()
		if t.Failed() {
			t.Logf("docker-registry %s log:\n%s", r.Addr, r.Log())
		}
	})
	return r
}

// RunRegistryWith is RunRegistry with extra top-level sections of the
// registry's config.yml. A registry with auth answers /v2/ with 401, which
// counts as up.
func RunRegistryWith(ctx context.Context, dir, extra string) (*Registry, error) {
	var lastErr error
	// A free port can be taken between probing and binding; try again.
	for range 3 {
		addr, err := freeAddr()
		if err != nil {
			return nil, err
		}
		r, err := runRegistryAt(ctx, dir, addr, extra)
		if err == nil {
			return r, nil
		}
		if ctx.Err() != nil {
			return nil, err
		}
		lastErr = err
	}
	return nil, lastErr
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find free port: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// Stop kills the registry and waits for it to end.
func (r *Registry) Stop() {
	_ = r.cmd.Process.Kill()
	err := <-r.exited
	r.exited <- err // a second Stop returns at once
}

// Log is what the registry wrote so far.
func (r *Registry) Log() string { return r.out.String() }

func runRegistryAt(ctx context.Context, dir, addr, extra string) (*Registry, error) {
	root := filepath.Join(dir, "storage")
	cfg := filepath.Join(dir, "config.yml")
	conf := fmt.Sprintf(`version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
  secret: clipd-test
%s`, root, addr, extra)
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		return nil, fmt.Errorf("write registry config: %w", err)
	}
	r := &Registry{Addr: addr, out: &SyncBuffer{}, exited: make(chan error, 1), dir: dir, extra: extra}
	r.cmd = exec.Command("docker-registry", "serve", cfg)
	r.cmd.Stdout = r.out
	r.cmd.Stderr = r.out
	if err := r.cmd.Start(); err != nil {
		return nil, fmt.Errorf("run docker-registry: %w", err)
	}
	go func() { r.exited <- r.cmd.Wait() }()

	deadline := time.Now().Add(15 * time.Second)
	client := &http.Client{Timeout: time.Second}
	for {
		select {
		case err := <-r.exited:
			r.exited <- err
			return nil, fmt.Errorf("docker-registry on %s exited: %v\n%s", addr, err, r.out.String())
		default:
		}
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		req, _ := http.NewRequestWithContext(cctx, http.MethodGet, "http://"+addr+"/v2/", nil)
		resp, err := client.Do(req)
		cancel()
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusUnauthorized {
				return r, nil
			}
		}
		if ctx.Err() != nil {
			r.Stop()
			return nil, fmt.Errorf("docker-registry on %s: %w", addr, ctx.Err())
		}
		if time.Now().After(deadline) {
			r.Stop()
			return nil, fmt.Errorf("docker-registry on %s did not answer /v2/ within 15s\n%s", addr, r.out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// BlobRequest is one request for a blob seen by a CountingProxy.
type BlobRequest struct {
	Method string
	Range  string // the Range header, "" when absent
	Status int
}

// CountingProxy is a reverse proxy in front of a registry that counts
// requests and response body bytes, records blob requests, and can fail or
// corrupt responses on demand.
type CountingProxy struct {
	// Addr is "127.0.0.1:PORT", usable as a registry host.
	Addr string

	requests atomic.Int64
	bytes    atomic.Int64

	mu      sync.Mutex
	blobs   map[string][]BlobRequest // by digest
	fail    func(*http.Request) int
	corrupt func(*http.Request) int64
}

// StartCountingProxy proxies to the registry at target ("host:port") until
// the test ends.
func StartCountingProxy(t testing.TB, target string) *CountingProxy {
	t.Helper()
	p := &CountingProxy{blobs: map[string][]BlobRequest{}}
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: target})
	rp.ModifyResponse = func(resp *http.Response) error {
		p.note(resp.Request, resp.StatusCode)
		flip := int64(-1)
		p.mu.Lock()
		if p.corrupt != nil && resp.StatusCode < 300 {
			flip = p.corrupt(resp.Request)
		}
		p.mu.Unlock()
		resp.Body = &countingBody{rc: resp.Body, n: &p.bytes, flip: flip}
		return nil
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.requests.Add(1)
		p.mu.Lock()
		fail := p.fail
		p.mu.Unlock()
		if fail != nil {
			if code := fail(r); code != 0 {
				p.note(r, code)
				http.Error(w, http.StatusText(code), code)
				return
			}
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	p.Addr = strings.TrimPrefix(srv.URL, "http://")
	return p
}

// BlobDigest returns the digest of a /v2/<repo>/blobs/<digest> path, or "".
func BlobDigest(path string) string {
	i := strings.LastIndex(path, "/blobs/")
	if !strings.HasPrefix(path, "/v2/") || i < 0 {
		return ""
	}
	return path[i+len("/blobs/"):]
}

func (p *CountingProxy) note(r *http.Request, status int) {
	d := BlobDigest(r.URL.Path)
	if d == "" {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.blobs[d] = append(p.blobs[d], BlobRequest{Method: r.Method, Range: r.Header.Get("Range"), Status: status})
}

// Requests returns how many requests reached the proxy.
func (p *CountingProxy) Requests() int64 { return p.requests.Load() }

// Bytes returns how many response body bytes the proxy passed on.
func (p *CountingProxy) Bytes() int64 { return p.bytes.Load() }

// Blob returns the requests seen for the blob digest, in order.
func (p *CountingProxy) Blob(digest string) []BlobRequest {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]BlobRequest(nil), p.blobs[digest]...)
}

// Reset forgets all counts.
func (p *CountingProxy) Reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.requests.Store(0)
	p.bytes.Store(0)
	p.blobs = map[string][]BlobRequest{}
}

// SetFail makes the proxy answer a request itself with the status fail
// returns, when that is not 0; nil forwards everything.
func (p *CountingProxy) SetFail(fail func(*http.Request) int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fail = fail
}

// SetCorrupt makes the proxy flip the bits of the body byte at the offset
// corrupt returns for a successful response (negative: none); nil stops it.
func (p *CountingProxy) SetCorrupt(corrupt func(*http.Request) int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.corrupt = corrupt
}

type countingBody struct {
	rc   io.ReadCloser
	n    *atomic.Int64
	off  int64 // body bytes passed so far
	flip int64 // offset of the byte to corrupt, or negative
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if b.flip >= b.off && b.flip < b.off+int64(n) {
		p[b.flip-b.off] ^= 0xff
	}
	b.off += int64(n)
	b.n.Add(int64(n))
	return n, err
}

func (b *countingBody) Close() error { return b.rc.Close() }
