package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/clipd/clipd/index"
	"github.com/clipd/clipd/internal/testenv"
)

// testFetchTimeout is registry.fetch_timeout in these tests: short, so that
// a stall fails a read in seconds.
const testFetchTimeout = 5 * time.Second

// faultMinbase is debian-python:minbase in a registry, indexed both through
// a fault proxy and directly, with a daemon whose registry.fetch_timeout is
// set.
type faultMinbase struct {
	layout  string
	host    string // the registry itself
	proxy   *testenv.FaultProxy
	d       *daemon
	viaProx string // archive whose layers are fetched through the proxy
	direct  string // archive whose layers are fetched from the registry
	a       *index.Archive
}

func newFaultMinbase(t testing.TB, fetchTimeout time.Duration) *faultMinbase {
	requireE2ETools(t)
	m := &faultMinbase{layout: testenv.DebianPythonLayout(t)}
	m.host = testenv.StartRegistry(t)
	skopeoPush(t, m.layout, "minbase", m.host+"/debian:minbase")
	m.proxy = testenv.StartFaultProxy(t, m.host)
	// The table goes after the [cache] table newDaemonConfig writes.
	keys := ""
	if fetchTimeout > 0 {
		keys = fmt.Sprintf("\n[registry]\nfetch_timeout = %q\n", fetchTimeout.String())
	}
	m.d = launch(t, newDaemonConfig(t, "", keys))
	dir := t.TempDir()
	m.viaProx = m.d.index(t, m.proxy.Addr+"/debian:minbase", filepath.Join(dir, "via-proxy.clip"))
	m.direct = m.d.index(t, m.host+"/debian:minbase", filepath.Join(dir, "direct.clip"))
	var err error
	if m.a, err = index.Open(m.viaProx); err != nil {
		t.Fatal(err)
	}
	return m
}

// blob is the path pattern of the base layer's blob.
func (m *faultMinbase) blob() string { return "/blobs/" + m.a.Layers[0].Digest }

// layerBytes returns the uncompressed bytes of file n of the base layer.
func (m *faultMinbase) layerBytes(t testing.TB, n *index.Node) []byte {
	return m.layerFiles(t, n)[n.Path]
}

// layerFiles extracts files ns of the base layer in one pass over it and
// returns their bytes by path.
func (m *faultMinbase) layerFiles(t testing.TB, ns ...*index.Node) map[string][]byte {
	t.Helper()
	dir := t.TempDir()
	args := []string{"-xzf", filepath.Join(m.layout, "blobs", "sha256", strings.TrimPrefix(m.a.Layers[0].Digest, "sha256:")), "-C", dir}
	for _, n := range ns {
		args = append(args, strings.TrimPrefix(n.Path, "/"))
	}
	run(t, "tar", args...)
	out := map[string][]byte{}
	for _, n := range ns {
		b, err := os.ReadFile(filepath.Join(dir, n.Path))
		if err != nil {
			t.Fatal(err)
		}
		out[n.Path] = b
	}
	return out
}

// otherSmallFile picks a small file of layer 0 inside one span other than
// the spans of skip, like smallFile.
func otherSmallFile(t testing.TB, a *index.Archive, skip ...*index.Node) (*index.Node, int64) {
	t.Helper()
	x := a.Layers[0].Spans
	used := map[int]bool{}
	for _, s := range skip {
		used[x.Find(s.Offset)] = true
	}
	for _, n := range a.Nodes {
		if n.Layer != 0 || n.Attr.Mode&0o170000 != 0o100000 || n.Attr.Size < 1024 || n.Attr.Size > 4096 || n.Attr.Nlink != 1 {
			continue
		}
		i := x.Find(n.Offset)
		s := x.Spans[i]
		if !used[i] && i > 0 && i < len(x.Spans)-1 && n.Offset+int64(n.Attr.Size) <= s.UOff+s.USize {
			return n, s.CEnd - s.COff
		}
	}
	t.Fatalf("%s: no other small file inside one span", a.Path)
	return nil, 0
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, within time.Duration, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(within); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// timeToEIO reads file n of mp (a buffered read, as a program would) while
// the registry stalls, and returns how long the read took to fail.
func timeToEIO(t testing.TB, m *faultMinbase, mp string, n *index.Node) time.Duration {
	t.Helper()
	m.proxy.SetFault(m.blob(), testenv.Stall())
	start := time.Now()
	_, err := os.ReadFile(filepath.Join(mp, n.Path))
	took := time.Since(start)
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("read of %s from a stalled registry: %v, want EIO", n.Path, err)
	}
	return took
}

// TestFaultStall: a registry that accepts connections and never answers
// fails a read with EIO within registry.fetch_timeout (plus slack), logs a
// WARN at the first retry and an ERROR when the fetch gives up, and the
// same read works once the registry answers again, without a remount.
func TestFaultStall(t *testing.T) {
	m := newFaultMinbase(t, testFetchTimeout)
	_, mp := m.d.mount(t, m.viaProx, "stall")
	n, _ := smallFile(t, m.a)

	took := timeToEIO(t, m, mp, n)
	t.Logf("figure: time to EIO under a stall with fetch_timeout=%s: %s (%d requests stalled)", testFetchTimeout, took.Round(time.Millisecond), m.proxy.Stalled())
	if bound := testFetchTimeout + 3*time.Second; took > bound {
		t.Errorf("EIO after %s, want within fetch_timeout + 3s = %s", took, bound)
	}
	if m.proxy.Stalled() < 2 {
		t.Errorf("%d requests stalled: the fetch was not retried on a new connection", m.proxy.Stalled())
	}
	log, _ := os.ReadFile(m.d.log)
	for _, want := range []string{"level=WARN msg=\"registry fetch failed, retrying\"", "level=ERROR msg=\"registry fetch failed\"", "registry.fetch_timeout"} {
		if !bytes.Contains(log, []byte(want)) {
			t.Errorf("daemon log lacks %q", want)
		}
	}

	// Recovery without remount: a failed range is answered with its
	// error for a moment (so that the kernel's immediate retry does not
	// wait out another fetch_timeout), then fetched again.
	m.proxy.Clear()
	start := time.Now()
	var got []byte
	for deadline := start.Add(10 * time.Second); ; {
		var err error
		if got, err = os.ReadFile(filepath.Join(mp, n.Path)); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("read after the registry answers again: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("figure: first successful read after the stall cleared: %s", time.Since(start).Round(time.Millisecond))
	if !bytes.Equal(got, m.layerBytes(t, n)) {
		t.Fatalf("%s: bytes after recovery differ from the layer's", n.Path)
	}
}

// TestFaultStallOtherMount: while one serving process's fetch of a span is
// stuck on a stalled registry, another mount of the same layer (another
// serving process, the same cache) reading the same span through a
// healthy path gets it within a few seconds instead of waiting on the
// stuck fetch's cross-process lock.
func TestFaultStallOtherMount(t *testing.T) {
	m := newFaultMinbase(t, testFetchTimeout)
	_, stuckMP := m.d.mount(t, m.viaProx, "stuck")
	_, healthyMP := m.d.mount(t, m.direct, "healthy")
	n, _ := smallFile(t, m.a)

	m.proxy.SetFault(m.blob(), testenv.Stall())
	stuck := make(chan error, 1)
	go func() {
		_, err := os.ReadFile(filepath.Join(stuckMP, n.Path))
		stuck <- err
	}()
	waitFor(t, "the stuck mount's fetch reaches the stalled registry", 10*time.Second, func() bool { return m.proxy.Stalled() > 0 })

	start := time.Now()
	got, err := os.ReadFile(filepath.Join(healthyMP, n.Path))
	wait := time.Since(start)
	if err != nil {
		t.Fatalf("read through the healthy mount: %v", err)
	}
	if !bytes.Equal(got, m.layerBytes(t, n)) {
		t.Fatalf("%s: bytes of the healthy mount differ from the layer's", n.Path)
	}
	t.Logf("figure: second mount read the span a stuck fetch holds in %s", wait.Round(time.Millisecond))
	if wait > 5*time.Second {
		t.Errorf("the healthy mount waited %s for a span another process's stuck fetch holds, want a few seconds", wait)
	}
	select {
	case err := <-stuck:
		// The stuck read may have been served from what the healthy mount
		// cached (a retry of the kernel's), or failed: never hung.
		t.Logf("stuck mount's read ended: %v", err)
	case <-time.After(testFetchTimeout + 10*time.Second):
		t.Fatal("the stuck mount's read did not end within fetch_timeout + 10s")
	}
}

// TestFaultTrickle: a registry that sends a span slower than
// fetch_timeout allows for the whole span still delivers it, since each
// byte renews the budget; one that also breaks the connection every 48 KiB
// delivers it through resumed requests. Either way no byte crosses the
// wire twice.
func TestFaultTrickle(t *testing.T) {
	m := newFaultMinbase(t, testFetchTimeout)
	_, mp := m.d.mount(t, m.viaProx, "trickle")
	first, firstSpan := smallFile(t, m.a)
	second, secondSpan := otherSmallFile(t, m.a, first)

	check := func(what string, n *index.Node, span int64, f testenv.Fault) {
		t.Helper()
		m.proxy.ResetCounts()
		m.proxy.SetFault(m.blob(), f)
		start := time.Now()
		got, err := os.ReadFile(filepath.Join(mp, n.Path))
		took := time.Since(start)
		if err != nil {
			t.Fatalf("%s: read of %s: %v", what, n.Path, err)
		}
		if !bytes.Equal(got, m.layerBytes(t, n)) {
			t.Fatalf("%s: %s: bytes differ from the layer's", what, n.Path)
		}
		reqs := m.proxy.Requests(m.blob())
		sent := m.proxy.BytesTo(m.blob())
		t.Logf("figure: %s: span of %d bytes arrived in %s, %d requests, %d bytes sent by the proxy", what, span, took.Round(time.Millisecond), len(reqs), sent)
		if sent > span+4096 {
			t.Errorf("%s: the proxy sent %d bytes for a span of %d: bytes were fetched again", what, sent, span)
		}
	}
	// About twice fetch_timeout for the whole span: a total deadline per
	// request would never let it arrive.
	rate := int(firstSpan / int64(2*testFetchTimeout/time.Second))
	check(fmt.Sprintf("trickle at %d B/s", rate), first, firstSpan, testenv.Trickle(rate))
	if reqs := m.proxy.Requests(m.blob()); len(reqs) != 1 {
		t.Errorf("a trickle took %d requests, want 1: %+v", len(reqs), reqs)
	}
	rate = int(secondSpan / 4)
	check(fmt.Sprintf("trickle at %d B/s, cut every 48 KiB", rate), second, secondSpan, testenv.Fault{Rate: rate, ResetAfter: 48 << 10})
	if reqs := m.proxy.Requests(m.blob()); int64(len(reqs)) < secondSpan/(48<<10) {
		t.Errorf("%d requests for a span cut every 48 KiB, want one per 48 KiB: %+v", len(reqs), reqs)
	}
}

// BenchmarkFaultStallDefaultTimeout measures the time to EIO under a stall
// with the default registry.fetch_timeout (30s): run it on its own, with
// go test ./e2e -run '^$' -bench FaultStallDefault -benchtime 1x.
func BenchmarkFaultStallDefaultTimeout(b *testing.B) {
	m := newFaultMinbase(b, 0)
	_, mp := m.d.mount(b, m.viaProx, "stall-default")
	n, _ := smallFile(b, m.a)
	for b.Loop() {
		took := timeToEIO(b, m, mp, n)
		b.ReportMetric(took.Seconds(), "s-to-EIO")
		b.Logf("figure: time to EIO under a stall with the default fetch_timeout: %s", took.Round(time.Millisecond))
	}
}

// TestFaultErrors: answers that are errors fail the read with EIO within
// fetch_timeout, nothing wrong is cached, and the same reads work once the
// registry answers right again. Each case reads a file of its own span, so
// that no case sees another's failure.
func TestFaultErrors(t *testing.T) {
	m := newFaultMinbase(t, testFetchTimeout)
	_, mp := m.d.mount(t, m.viaProx, "errors")
	var files []*index.Node
	for _, c := range []struct {
		what string
		f    testenv.Fault
	}{
		{"503 with Retry-After: 1", testenv.Fault{Status: 503, RetryAfter: 1}},
		{"429 with Retry-After: 30", testenv.Fault{Status: 429, RetryAfter: 30}},
		{"404", testenv.Status(404)},
		{"401", testenv.Status(401)},
		{"wrong bytes", testenv.WrongBytes()},
	} {
		n, _ := otherSmallFile(t, m.a, files...)
		files = append(files, n)
		m.proxy.ResetCounts()
		m.proxy.SetFault(m.blob(), c.f)
		start := time.Now()
		_, err := os.ReadFile(filepath.Join(mp, n.Path))
		took := time.Since(start)
		t.Logf("figure: %s: %v after %s, %d requests", c.what, err, took.Round(time.Millisecond), len(m.proxy.Requests(m.blob())))
		if !errors.Is(err, syscall.EIO) {
			t.Errorf("%s: read gave %v, want EIO", c.what, err)
		}
		if bound := testFetchTimeout + 3*time.Second; took > bound {
			t.Errorf("%s: EIO after %s, want within %s", c.what, took, bound)
		}
		if len(m.proxy.Requests(m.blob())) == 0 {
			t.Errorf("%s: no request reached the registry", c.what)
		}
	}
	m.proxy.Clear()
	want := m.layerFiles(t, files...)
	for _, n := range files {
		var got []byte
		for deadline := time.Now().Add(10 * time.Second); ; {
			var err error
			if got, err = os.ReadFile(filepath.Join(mp, n.Path)); err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("read of %s once the registry answers right: %v", n.Path, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		if !bytes.Equal(got, want[n.Path]) {
			t.Fatalf("%s: bytes differ from the layer's: wrong bytes were cached", n.Path)
		}
	}
}
