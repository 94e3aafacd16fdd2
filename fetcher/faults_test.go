package fetcher

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/clipd/clipd/index"
	"github.com/clipd/clipd/internal/testenv"
	"github.com/clipd/clipd/zran"
)

// faultEnv is the fixture in a registry behind a fault proxy, with layer 0
// read as an uncompressed layer (256 KiB spans, no decompression).
func faultEnv(t *testing.T, opts Options) (*testenv.FaultProxy, *fixture, Layers) {
	reg := testenv.StartRegistry(t)
	fix := makeFixture(t)
	fix.push(t, reg+"/test/img:v1")
	p := testenv.StartFaultProxy(t, reg)
	a := fix.archive(index.Source{Registry: p.Addr, Repository: "test/img", Reference: "v1"})
	a.Extension, a.Layers[0].Compression = 1, zran.None
	f, _ := newFetcher(t, t.TempDir(), opts)
	return p, fix, openLayers(t, f, a)
}

// A stalled registry fails a read within fetch_timeout, after retries on
// new connections; once it answers again the same read succeeds.
func TestStallFailsWithinFetchTimeout(t *testing.T) {
	p, fix, ls := faultEnv(t, Options{FetchTimeout: 1500 * time.Millisecond})
	blob := "/blobs/" + fix.layers[0].digest
	p.SetFault(blob, testenv.Stall())
	start := time.Now()
	_, err := ls.ReaderAt(0).ReadAt(make([]byte, 10), 300<<10)
	took := time.Since(start)
	t.Logf("stalled registry: read failed after %s: %v", took.Round(time.Millisecond), err)
	if err == nil || !strings.Contains(err.Error(), "registry.fetch_timeout") || !strings.Contains(err.Error(), short(fix.layers[0].digest)) {
		t.Fatalf("read from a stalled registry: %v, want a fetch_timeout error naming the layer", err)
	}
	if took > 3*time.Second {
		t.Fatalf("read failed after %s, want about fetch_timeout (1.5s)", took)
	}
	if n := p.Stalled(); n < 2 {
		t.Errorf("%d requests stalled, want a retry on a new connection", n)
	}
	// The kernel retries a failed read at once: the retry fails at once
	// too, instead of waiting out another fetch_timeout.
	start = time.Now()
	if _, err := ls.ReaderAt(0).ReadAt(make([]byte, 10), 300<<10); err == nil || time.Since(start) > 500*time.Millisecond {
		t.Fatalf("immediate retry of the failed read: %v after %s, want the same failure at once", err, time.Since(start))
	}

	p.Clear()
	got := make([]byte, 10)
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := ls.ReaderAt(0).ReadAt(got, 300<<10)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("read after the stall cleared: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !bytes.Equal(got, fix.layers[0].tar[300<<10:300<<10+10]) {
		t.Fatal("wrong bytes after the stall cleared")
	}
}

// A slow connection that breaks every 64 KiB completes the span (1 MiB: the
// spans of an uncompressed layer): each retry asks for the rest of the range
// only, so no byte crosses the wire twice.
func TestResetsResumeRange(t *testing.T) {
	p, fix, ls := faultEnv(t, Options{FetchTimeout: 5 * time.Second})
	blob := "/blobs/" + fix.layers[0].digest
	p.SetFault(blob, testenv.Fault{Rate: 1 << 20, ResetAfter: 64 << 10})
	got := make([]byte, 4096)
	off := int64(1<<20 + 600<<10) // in span 1
	start := time.Now()
	if _, err := ls.ReaderAt(0).ReadAt(got, off); err != nil {
		t.Fatalf("read through a breaking connection: %v", err)
	}
	if !bytes.Equal(got, fix.layers[0].tar[off:off+4096]) {
		t.Fatal("wrong bytes")
	}
	reqs := p.Requests(blob)
	var sent int64
	var ranges []string
	for _, r := range reqs {
		sent += r.Bytes
		ranges = append(ranges, fmt.Sprintf("%s:%d", r.Range, r.Bytes))
	}
	t.Logf("span of 1 MiB through resets every 64 KiB: %d requests, %d bytes sent, %s: %v", len(reqs), sent, time.Since(start).Round(time.Millisecond), ranges)
	if sent > 1<<20 {
		t.Errorf("%d bytes sent for a 1 MiB span: bytes were fetched twice", sent)
	}
	if len(reqs) < 16 {
		t.Errorf("%d requests, want one per 64 KiB", len(reqs))
	}
}

// A mirror that stops part-way through a body, or cuts it, costs one
// inactivity timeout at most: the resumed request goes to the next host in
// the hosts.toml order (here the origin), keeps the bytes the mirror sent,
// and the mirror is passed over for its back-off, so that the next span
// does not try it again.
func TestMirrorStallMidBodyFailsOver(t *testing.T) {
	for _, c := range []struct {
		name  string
		fault testenv.Fault
	}{
		{"stall", testenv.StallAfter(100 << 10)},
		{"cut", testenv.Reset(100 << 10)},
	} {
		t.Run(c.name, func(t *testing.T) { testMirrorMidBody(t, c.fault) })
	}
}

func testMirrorMidBody(t *testing.T, fault testenv.Fault) {
	reg := testenv.StartRegistry(t)
	fix := makeFixture(t)
	fix.push(t, reg+"/test/img:v1")
	mirror := testenv.StartFaultProxy(t, reg)
	hs, err := ParseHosts(reg, []byte(`server = "http://`+reg+`"
[host."http://`+mirror.Addr+`"]
`), "")
	if err != nil {
		t.Fatal(err)
	}
	const fetchTimeout = 3 * time.Second // 1 s inactivity timeout per attempt
	opts := Options{Hosts: NewHostsConfig(map[string][]*RegistryHost{reg: hs}), FetchTimeout: fetchTimeout}
	a := fix.archive(index.Source{Registry: reg, Repository: "test/img", Reference: "v1"})
	a.Extension, a.Layers[0].Compression = 1, zran.None
	f, _ := newFetcher(t, t.TempDir(), opts)
	ls := openLayers(t, f, a)
	blob := "/blobs/" + fix.layers[0].digest
	mirror.SetFault(blob, fault)

	got := make([]byte, 4096)
	off := int64(1<<20 + 600<<10) // in span 1 (1 MiB spans)
	start := time.Now()
	if _, err := ls.ReaderAt(0).ReadAt(got, off); err != nil {
		t.Fatalf("read through a mirror that fails mid-body: %v", err)
	}
	took := time.Since(start)
	if !bytes.Equal(got, fix.layers[0].tar[off:off+4096]) {
		t.Fatal("wrong bytes")
	}
	mreqs := mirror.Requests(blob)
	t.Logf("mirror failed (%+v) after 100 KiB of a 1 MiB span: read completed from the origin in %s (inactivity timeout %s); mirror requests %d",
		fault, took.Round(time.Millisecond), opts.attemptTimeout(), len(mreqs))
	if len(mreqs) != 1 {
		t.Fatalf("the mirror got %d requests for the span, want 1: the resumed request went back to it", len(mreqs))
	}
	// The budget is three inactivity timeouts: completing means the
	// retry did not wait out another one on the mirror.
	if took >= 2*opts.attemptTimeout() {
		t.Errorf("read took %s, want one inactivity timeout (%s) at most", took, opts.attemptTimeout())
	}

	// The next span goes to the origin at once: the mirror is in its back-off.
	start = time.Now()
	off = 2<<20 + 100
	if _, err := ls.ReaderAt(0).ReadAt(got, off); err != nil || !bytes.Equal(got, fix.layers[0].tar[off:off+4096]) {
		t.Fatalf("next span: %v", err)
	}
	t.Logf("next span with the mirror in its back-off: %s", time.Since(start).Round(time.Millisecond))
	if n := len(mirror.Requests(blob)); n != len(mreqs) {
		t.Fatalf("the mirror got %d more requests during its back-off", n-len(mreqs))
	}
}
