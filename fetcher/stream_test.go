package fetcher

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clipd/clipd/zran"
)

// slowTransport trickles blob bodies (64 KiB every 20 ms) and counts the
// blob bytes delivered so far.
type slowTransport struct {
	base      http.RoundTripper
	delivered atomic.Int64
}

func (s *slowTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := s.base.RoundTrip(r)
	if err != nil || !strings.Contains(r.URL.Path, "/blobs/") {
		return resp, err
	}
	resp.Body = &slowBody{ReadCloser: resp.Body, t: s}
	return resp, nil
}

type slowBody struct {
	io.ReadCloser
	t *slowTransport
}

func (b *slowBody) Read(p []byte) (int, error) {
	time.Sleep(20 * time.Millisecond)
	n, err := b.ReadCloser.Read(p[:min(len(p), 64<<10)])
	b.t.delivered.Add(int64(n))
	return n, err
}

// A single-frame zstd layer is one oversized span: it is fetched once and
// its first bytes are served before the rest has arrived; once complete it
// is verified and cached.
func TestStreamedSpanServesEarly(t *testing.T) {
	e := newEnv(t)
	tr := &slowTransport{base: http.DefaultTransport}
	f, store := newFetcher(t, t.TempDir(), Options{Transport: tr})
	a := indexedArchive(t, e.fix, e.src, 256<<10)
	i := 2
	l := e.fix.layers[i]
	x := a.Layers[i].Spans
	if l.comp != zran.Zstd || len(x.Spans) != 1 || !oversized(x, x.Spans[0]) {
		t.Fatalf("fixture layer %d is not a single-frame zstd layer (%s, %d spans)", i, l.comp, len(x.Spans))
	}
	ls := openLayers(t, f, a)
	buf := make([]byte, 4096)
	if _, err := ls.ReaderAt(i).ReadAt(buf, 0); err != nil || !bytes.Equal(buf, l.tar[:4096]) {
		t.Fatalf("first read: %v", err)
	}
	if got := tr.delivered.Load(); got >= int64(len(l.blob)) {
		t.Fatalf("the first read waited for the whole blob (%d of %d bytes)", got, len(l.blob))
	} else {
		t.Logf("first 4 KiB served after %d of %d blob bytes", got, len(l.blob))
	}
	// The end of the layer, read concurrently, waits for its bytes.
	end := make([]byte, 1000)
	off := int64(len(l.tar)) - 1000
	if _, err := ls.ReaderAt(i).ReadAt(end, off); err != nil || !bytes.Equal(end, l.tar[off:]) {
		t.Fatalf("last read: %v", err)
	}
	if n := len(e.proxy.Blob(l.digest)); n != 1 {
		t.Fatalf("%d blob requests, want 1", n)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !store.Has(spanKey(l.digest, x, 0, "")) {
		if time.Now().After(deadline) {
			t.Fatal("streamed span was not cached")
		}
		time.Sleep(10 * time.Millisecond)
	}
	checkRandomReads(t, ls, i, l.tar, 10, 5)
}

// A stream whose bytes do not match the span digest fails, and nothing is
// cached.
func TestStreamedSpanCorrupt(t *testing.T) {
	e := newEnv(t)
	f, store := newFetcher(t, t.TempDir(), Options{})
	a := indexedArchive(t, e.fix, e.src, 256<<10)
	l := e.fix.layers[2]
	e.proxy.SetCorrupt(func(r *http.Request) int64 { return int64(len(l.blob)) - 10 })
	ls := openLayers(t, f, a)
	_, err := ls.ReaderAt(2).ReadAt(make([]byte, 100), int64(len(l.tar))-100)
	if err == nil || !strings.Contains(err.Error(), short(l.digest)) {
		t.Fatalf("corrupt stream: %v, want an error naming the layer", err)
	}
	if store.Has(spanKey(l.digest, a.Layers[2].Spans, 0, "")) {
		t.Fatal("corrupt span cached")
	}
	e.proxy.SetCorrupt(nil)
	checkRandomReads(t, ls, 2, l.tar, 5, 6)
}
