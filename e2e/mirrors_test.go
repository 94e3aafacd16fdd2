package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/clipd/clipd/index"
	"github.com/clipd/clipd/internal/testenv"
)

// mirrorSetup is debian-python:minbase in an origin registry, a real
// pull-through cache (docker-registry with proxy.remoteurl) in front of
// it, and a daemon whose registry.config_path sends reads of the origin to
// the cache first, the origin (through a counting proxy) as the server.
type mirrorSetup struct {
	origin      *testenv.Registry
	cache       *testenv.Registry
	originCount *testenv.CountingProxy
	d           *daemon
	hostsDir    string
	archive     string
	m           *faultMinbase // layout and archive, for the layer's bytes
}

func newMirrorSetup(t *testing.T) *mirrorSetup {
	requireE2ETools(t)
	s := &mirrorSetup{m: &faultMinbase{layout: testenv.DebianPythonLayout(t)}}
	s.origin = testenv.StartRegistryProcess(t)
	skopeoPush(t, s.m.layout, "minbase", s.origin.Addr+"/debian:minbase")
	s.cache = testenv.StartProxyRegistry(t, s.origin.Addr)
	s.originCount = testenv.StartCountingProxy(t, s.origin.Addr)

	s.hostsDir = t.TempDir()
	hosts := fmt.Sprintf(`# the origin, reached through a counting proxy
server = "http://%s"

[host."http://%s"]
  capabilities = ["pull", "resolve"]
`, s.originCount.Addr, s.cache.Addr)
	if err := os.MkdirAll(filepath.Join(s.hostsDir, s.origin.Addr), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(s.hostsDir, s.origin.Addr, "hosts.toml"), []byte(hosts), 0o644); err != nil {
		t.Fatal(err)
	}
	s.d = launch(t, newDaemonConfig(t, "", fmt.Sprintf("\n[registry]\nfetch_timeout = %q\nconfig_path = %q\n", testFetchTimeout.String(), s.hostsDir)))
	// Indexed without the daemon's config, straight from the origin, so
	// that the cache holds nothing yet when the mount first reads.
	s.archive = s.d.index(t, s.origin.Addr+"/debian:minbase", filepath.Join(t.TempDir(), "minbase.clip"))
	var err error
	if s.m.a, err = index.Open(s.archive); err != nil {
		t.Fatal(err)
	}
	return s
}

// filesInSpans picks n small files of layer 0, each inside its own span,
// none in the first or last span, the spans apart so that read-ahead of
// one does not fetch another.
func filesInSpans(t testing.TB, a *index.Archive, n int) []*index.Node {
	t.Helper()
	x := a.Layers[0].Spans
	used := map[int]bool{}
	var out []*index.Node
	for _, nd := range a.Nodes {
		if nd.Layer != 0 || nd.Attr.Mode&0o170000 != 0o100000 || nd.Attr.Size < 1024 || nd.Attr.Size > 4096 || nd.Attr.Nlink != 1 {
			continue
		}
		i := x.Find(nd.Offset)
		s := x.Spans[i]
		near := false
		for j := i - 4; j <= i+4; j++ {
			near = near || used[j]
		}
		if near || i == 0 || i == len(x.Spans)-1 || nd.Offset+int64(nd.Attr.Size) > s.UOff+s.USize {
			continue
		}
		used[i] = true
		out = append(out, nd)
		if len(out) == n {
			return out
		}
	}
	t.Fatalf("%s: fewer than %d small files in distinct spans", a.Path, n)
	return nil
}

// cacheHolds reports whether the cache answers a range of the blob with
// 206: it holds the blob (it answers 200 and the whole blob until then).
func cacheHolds(t testing.TB, cache, repo, digest string) bool {
	req, _ := http.NewRequest(http.MethodGet, "http://"+cache+"/v2/"+repo+"/blobs/"+digest, nil)
	req.Header.Set("Range", "bytes=0-0")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusPartialContent
}

// TestMirrorPullThroughCache: reads of a mount go to the pull-through
// cache hosts.toml lists before the origin; the cache's first answer to a
// range of a blob it does not hold (200, the whole blob) still serves the
// read at once; with the origin down, what the cache holds still serves;
// with the cache down, reads fail over to the origin, and the dead cache
// is passed over rather than asked again for every span.
func TestMirrorPullThroughCache(t *testing.T) {
	s := newMirrorSetup(t)
	files := filesInSpans(t, s.m.a, 5)
	want := s.m.layerFiles(t, files...)
	digest := s.m.a.Layers[0].Digest
	_, mp := s.d.mount(t, s.archive, "mirror")
	s.originCount.Reset()

	read := func(what string, n *index.Node) time.Duration {
		t.Helper()
		start := time.Now()
		got, err := os.ReadFile(filepath.Join(mp, n.Path))
		took := time.Since(start)
		if err != nil {
			t.Fatalf("%s: read %s: %v", what, n.Path, err)
		}
		if !bytes.Equal(got, want[n.Path]) {
			t.Fatalf("%s: %s: bytes differ from the layer's", what, n.Path)
		}
		t.Logf("figure: %s: read of %s (%d bytes) took %s", what, n.Path, len(got), took.Round(time.Millisecond))
		return took
	}

	// 1. Through the cache, which does not hold the blob yet.
	if cacheHolds(t, s.cache.Addr, "debian", digest) {
		t.Fatal("the cache holds the layer before any read: the test would not see its first answer")
	}
	read("first read through a cold pull-through cache", files[0])
	if reqs := s.originCount.Blob(digest); len(reqs) != 0 {
		t.Fatalf("the read went to the origin, not the cache: %+v", reqs)
	}
	// The cache keeps the blob it fetched for the first answer; from then
	// on it answers ranges with 206.
	start := time.Now()
	waitFor(t, "the cache holds the layer", 60*time.Second, func() bool { return cacheHolds(t, s.cache.Addr, "debian", digest) })
	t.Logf("figure: the cache answered ranges with 206 %s after the first read", time.Since(start).Round(time.Millisecond))
	read("second read through the warm cache", files[1])
	if reqs := s.originCount.Blob(digest); len(reqs) != 0 {
		t.Fatalf("a read went to the origin while the cache was up: %+v", reqs)
	}

	// 2. Origin down: what the cache holds still serves.
	s.origin.Stop()
	read("read with the origin down", files[2])

	// 3. Cache down, origin back: reads fail over to the origin; the
	// dead cache costs one failed connection, then is passed over.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := s.origin.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	s.cache.Stop()
	took := read("failover read with the cache down", files[3])
	if took > 5*time.Second {
		t.Errorf("failover to the origin took %s, want well under fetch_timeout", took)
	}
	if reqs := s.originCount.Blob(digest); len(reqs) == 0 {
		t.Fatal("with the cache down, the read did not reach the origin")
	}
	read("second read with the cache down", files[4])
	log, _ := os.ReadFile(s.d.log)
	if n := bytes.Count(log, []byte("registry host failed, trying the next")); n != 1 {
		t.Errorf("%d lines of a failed host in the log, want 1 (then the host is passed over)", n)
	}
	if !bytes.Contains(log, []byte("registry answered a range with the whole blob")) {
		t.Error("the log does not show the cache's first answer (200, the whole blob) read up to the range")
	}
	if !strings.Contains(string(log), s.cache.Addr) {
		t.Errorf("the log does not name the failed cache %s", s.cache.Addr)
	}
}

// TestMirrorIndexAndMountByReference: clipd index and mounting by
// reference resolve and read through the cache hosts.toml lists; with the
// cache down, mounting by reference resolves at the origin.
func TestMirrorIndexAndMountByReference(t *testing.T) {
	s := newMirrorSetup(t)
	ref := s.origin.Addr + "/debian:minbase"
	s.originCount.Reset()

	out := filepath.Join(t.TempDir(), "via-cache.clip")
	start := time.Now()
	run(t, s.d.bin, "index", "--config", s.d.config, "-o", out, ref)
	t.Logf("figure: clipd index through the cache: %s", time.Since(start).Round(time.Millisecond))
	if n := s.originCount.Requests(); n != 0 {
		t.Fatalf("clipd index made %d requests to the origin, want all through the cache", n)
	}

	st, ans, mp := s.d.mountRef(t, "byref", map[string]any{"image": ref}, nil)
	if st != http.StatusCreated {
		t.Fatalf("mount by reference through the cache: %d %v", st, ans)
	}
	n := filesInSpans(t, s.m.a, 1)[0]
	if got, err := os.ReadFile(filepath.Join(mp, n.Path)); err != nil || !bytes.Equal(got, s.m.layerFiles(t, n)[n.Path]) {
		t.Fatalf("read %s of the mount by reference: %v", n.Path, err)
	}
	// Lookups the cache answers 404 (the index artifact's fallback tag)
	// are asked of the origin too; the layers come from the cache.
	for _, l := range s.m.a.Layers {
		if reqs := s.originCount.Blob(l.Digest); len(reqs) != 0 {
			t.Fatalf("mount by reference fetched layer %s from the origin: %+v", l.Digest, reqs)
		}
	}
	t.Logf("figure: requests that reached the origin while the cache was up: %d (404 lookups of the cache passed on)", s.originCount.Requests())

	s.cache.Stop()
	start = time.Now()
	st, ans, _ = s.d.mountRef(t, "byref-origin", map[string]any{"image": ref}, nil)
	if st != http.StatusCreated {
		t.Fatalf("mount by reference with the cache down: %d %v", st, ans)
	}
	t.Logf("figure: mount by reference with the cache down: %s", time.Since(start).Round(time.Millisecond))
	if s.originCount.Requests() == 0 {
		t.Fatal("with the cache down, mount by reference did not reach the origin")
	}
}
