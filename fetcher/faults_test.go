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
