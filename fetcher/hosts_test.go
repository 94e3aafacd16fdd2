package fetcher

import (
	"bytes"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestParseHosts(t *testing.T) {
	in := `
server = "https://origin.example.com"

[host."http://cache-b.local:5000"]
  capabilities = ["pull"]
  skip_verify = true

[host."https://cache-a.local/mirror/v2/docker"]
  capabilities = ["pull", "resolve"]
  override_path = true
  [host."https://cache-a.local/mirror/v2/docker".header]
    x-one = "1"
    x-many = ["a", "b"]

[host."cache-c.local"]
`
	hs, err := ParseHosts("docker.io", []byte(in), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, h := range hs {
		got = append(got, h.URL.String()+" "+strings.Join(h.Capabilities, ","))
	}
	want := []string{
		"http://cache-b.local:5000/v2 pull",
		"https://cache-a.local/mirror/v2/docker pull,resolve",
		"https://cache-c.local/v2 pull,resolve,push",
		"https://origin.example.com/v2 pull,resolve,push",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("hosts in order:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if hs[0].TLS == nil || !hs[0].TLS.InsecureSkipVerify {
		t.Fatalf("skip_verify not kept: %+v", hs[0].TLS)
	}
	if h := hs[1].Header; h.Get("x-one") != "1" || len(h.Values("x-many")) != 2 {
		t.Fatalf("headers: %v", h)
	}
	if hs[2].TLS != nil {
		t.Fatal("a host without TLS settings got some")
	}
}

func TestParseHostsDefaults(t *testing.T) {
	hs, err := ParseHosts("docker.io", []byte(""), "")
	if err != nil || len(hs) != 1 || hs[0].URL.String() != "https://registry-1.docker.io/v2" {
		t.Fatalf("docker.io without server: %v %v", hs, err)
	}
	hs, err = ParseHosts("_default", []byte(`[host."http://m:5000"]`), "")
	if err != nil || len(hs) != 1 {
		t.Fatalf("_default gets no server: %v %v", hs, err)
	}
	for _, bad := range []string{
		`[host."ftp://x"]`,
		`[host."http://x"]
capabilities = ["fly"]`,
		`[host."http://x"]
ca = "missing.pem"`,
		`[host."http://x"]
client = 7`,
		`server = `,
	} {
		if _, err := ParseHosts("r", []byte(bad), t.TempDir()); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}

func TestLoadHostsDir(t *testing.T) {
	if c, err := LoadHostsDir(""); c != nil || err != nil {
		t.Fatalf("empty config_path: %v %v", c, err)
	}
	if _, err := LoadHostsDir(filepath.Join(t.TempDir(), "none")); err == nil {
		t.Fatal("missing directory accepted")
	}
	dir := t.TempDir()
	for reg, body := range map[string]string{
		"localhost:5000": `server = "http://localhost:5000"
[host."http://cache:5000"]`,
		"_default": `[host."http://any-cache:5000"]`,
	} {
		os.MkdirAll(filepath.Join(dir, reg), 0o755)
		if err := os.WriteFile(filepath.Join(dir, reg, "hosts.toml"), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.MkdirAll(filepath.Join(dir, "nofile"), 0o755)
	c, err := LoadHostsDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if hs := c.Hosts("localhost:5000"); len(hs) != 2 || hs[0].URL.Host != "cache:5000" || hs[1].URL.Host != "localhost:5000" {
		t.Fatalf("localhost:5000: %v", hs)
	}
	if hs := c.Hosts("quay.io"); len(hs) != 1 || hs[0].URL.Host != "any-cache:5000" {
		t.Fatalf("_default for quay.io: %v", hs)
	}
}

// The mirror transport tries the hosts in order, moves on after a 5xx, a
// connection error or a 404, passes a failed host over for its back-off,
// and sends writes to the registry as asked.
func TestMirrorTransportFailover(t *testing.T) {
	var mirrorHits, originHits atomic.Int64
	var mirrorStatus atomic.Int64
	mirrorStatus.Store(http.StatusOK)
	mirror := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mirrorHits.Add(1)
		if r.URL.Path != "/prefix/library/x/blobs/sha256:1" || r.Header.Get("X-Mirror") != "clipd" {
			http.Error(w, "bad request "+r.URL.Path, 400)
			return
		}
		w.WriteHeader(int(mirrorStatus.Load()))
		io.WriteString(w, "mirror")
	}))
	defer mirror.Close()
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		originHits.Add(1)
		io.WriteString(w, "origin "+r.Method+" "+r.URL.Path)
	}))
	defer origin.Close()
	dead := httptest.NewServer(http.NotFoundHandler())
	deadURL := dead.URL
	dead.Close()

	reg := strings.TrimPrefix(origin.URL, "http://")
	hs, err := ParseHosts(reg, []byte(`
server = "`+origin.URL+`"
[host."`+deadURL+`"]
[host."`+mirror.URL+`/prefix"]
  override_path = true
  [host."`+mirror.URL+`/prefix".header]
    x-mirror = "clipd"
`), "")
	if err != nil {
		t.Fatal(err)
	}
	c := NewHostsConfig(map[string][]*RegistryHost{reg: hs})
	now := time.Unix(1000, 0)
	c.state.now = func() time.Time { return now }
	rt := (Options{Hosts: c, Logger: slog.New(slog.DiscardHandler)}).transport()
	get := func(method string) string {
		t.Helper()
		req, _ := http.NewRequest(method, origin.URL+"/v2/library/x/blobs/sha256:1", nil)
		resp, err := rt.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	if got := get("GET"); got != "mirror" {
		t.Fatalf("first read: %q", got)
	}
	c.state.mu.Lock()
	_, deadDown := c.state.down[deadURL+"/v2"]
	c.state.mu.Unlock()
	if !deadDown {
		t.Fatal("the dead host was not marked down")
	}
	mirrorStatus.Store(http.StatusBadGateway)
	if got := get("GET"); got != "origin GET /v2/library/x/blobs/sha256:1" {
		t.Fatalf("mirror 502: %q", got)
	}
	// Both mirrors are in their back-off: the origin is asked first.
	mirrorStatus.Store(http.StatusOK)
	before := mirrorHits.Load()
	get("GET")
	if mirrorHits.Load() != before {
		t.Fatal("a host in its back-off was asked")
	}
	now = now.Add(DefaultHostBackoff + time.Second)
	if got := get("GET"); got != "mirror" {
		t.Fatalf("after the back-off: %q", got)
	}
	mirrorStatus.Store(http.StatusNotFound)
	if got := get("GET"); !strings.HasPrefix(got, "origin") {
		t.Fatalf("mirror 404: %q", got)
	}
	before = mirrorHits.Load()
	if got := get("PUT"); got != "origin PUT /v2/library/x/blobs/sha256:1" || mirrorHits.Load() != before {
		t.Fatalf("a write went to a mirror: %q", got)
	}
}

// A mirror that accepts requests and never answers costs one attempt
// timeout: the fetch's retry goes to the next host, and later reads do not
// try the stalled mirror again during its back-off.
func TestMirrorStalledFailsOver(t *testing.T) {
	e := newEnv(t)
	var stalled atomic.Int64
	done := make(chan struct{})
	stall := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		stalled.Add(1)
		select {
		case <-done:
		case <-r.Context().Done():
		}
	}))
	defer stall.Close()
	defer close(done)
	hs, err := ParseHosts(e.src.Registry, []byte(`server = "http://`+e.src.Registry+`"
[host."`+stall.URL+`"]
`), "")
	if err != nil {
		t.Fatal(err)
	}
	f, _ := newFetcher(t, t.TempDir(), Options{
		Hosts:        NewHostsConfig(map[string][]*RegistryHost{e.src.Registry: hs}),
		FetchTimeout: 3 * time.Second, // 1 s per attempt
		Logger:       slog.New(slog.DiscardHandler),
	})
	a := indexedArchive(t, e.fix, e.src, 64<<10)
	ls := openLayers(t, f, a)
	l := e.fix.layers[0]
	var afterFirst int64
	for i, off := range []int64{1000, int64(len(l.tar)) - 5000} {
		start := time.Now()
		buf := make([]byte, 4096)
		if _, err := ls.ReaderAt(0).ReadAt(buf, off); err != nil || !bytes.Equal(buf, l.tar[off:off+4096]) {
			t.Fatalf("read %d with a stalled mirror: %v", i, err)
		}
		t.Logf("read %d with a stalled mirror: %s", i, time.Since(start).Round(time.Millisecond))
		if i == 0 {
			afterFirst = stalled.Load()
		}
	}
	// The first attempt (go-containerregistry's ping, over https and http
	// at once) reached the stalled mirror; after it timed out, nothing did.
	if afterFirst == 0 || stalled.Load() != afterFirst {
		t.Fatalf("the stalled mirror got %d requests in the first read and %d after, want some then none", afterFirst, stalled.Load()-afterFirst)
	}
}
