package fetcher

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clipd/clipd/index"
	"github.com/clipd/clipd/internal/testenv"
	"github.com/clipd/clipd/zran"
)

// indexedArchive describes the fixture as clipd writes it: every layer with
// its decompression index (small spans, so that a layer has several).
func indexedArchive(t *testing.T, fix *fixture, src index.Source, spanSize int64) *index.Archive {
	t.Helper()
	a := &index.Archive{Format: 2, Source: src, Extension: 1}
	for _, l := range fix.layers {
		ir, err := zran.NewIndexReader(bytes.NewReader(l.blob), spanSize)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, ir); err != nil {
			t.Fatal(err)
		}
		li, _ := ir.Index()
		x, err := index.NewSpanIndex(li)
		if err != nil {
			t.Fatal(err)
		}
		a.Layers = append(a.Layers, index.Layer{Digest: l.digest, Size: int64(len(l.blob)), Compression: li.Compression, Spans: x})
	}
	return a
}

// A small read moves one span's compressed bytes, with one Range request
// answered 206, for every kind of layer.
func TestSpanReadsMoveOneSpan(t *testing.T) {
	e := newEnv(t)
	f, _ := newFetcher(t, t.TempDir(), Options{})
	a := indexedArchive(t, e.fix, e.src, 256<<10)
	ls := openLayers(t, f, a)
	for i, l := range e.fix.layers {
		x := a.Layers[i].Spans
		if l.comp != zran.Zstd && len(x.Spans) < 4 {
			t.Fatalf("%s layer: %d spans, want several", l.comp, len(x.Spans))
		}
		e.proxy.Reset()
		mid := x.USize / 2
		buf := make([]byte, 4096)
		if _, err := ls.ReaderAt(i).ReadAt(buf, mid); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf, l.tar[mid:mid+4096]) {
			t.Fatalf("%s layer: wrong bytes", l.comp)
		}
		s := x.Spans[x.Find(mid)]
		reqs := e.proxy.Blob(l.digest)
		switch {
		case oversized(x, s):
			// A layer that is one span (a single zstd frame) streams whole
			// (stream_test.go).
			if len(reqs) != 1 || reqs[0].Range != "" {
				t.Fatalf("%s layer: requests %+v, want one whole-blob stream", l.comp, reqs)
			}
		case len(reqs) != 1 || reqs[0].Status != http.StatusPartialContent || !strings.HasPrefix(reqs[0].Range, "bytes="):
			t.Fatalf("%s layer: requests %+v, want one 206 range request", l.comp, reqs)
		}
		// The proxy also counts the registry's "{}" answer to the ping. A
		// streamed span goes on arriving after the read got its bytes.
		moved := e.proxy.Bytes()
		for deadline := time.Now().Add(5 * time.Second); oversized(x, s) && moved < s.CEnd-s.COff && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
			moved = e.proxy.Bytes()
		}
		if moved < s.CEnd-s.COff || moved > s.CEnd-s.COff+64 {
			t.Fatalf("%s layer: moved %d bytes, span has %d", l.comp, moved, s.CEnd-s.COff)
		}
		// Everything else, read at random, is right; spans read twice
		// come from the cache.
		checkRandomReads(t, ls, i, l.tar, 40, uint64(i))
	}
	// Every span is cached now: reading it all again makes no request.
	before := e.proxy.Requests()
	for i, l := range e.fix.layers {
		got := make([]byte, len(l.tar))
		if _, err := ls.ReaderAt(i).ReadAt(got, 0); err != nil || !bytes.Equal(got, l.tar) {
			t.Fatalf("%s layer: whole read: %v", l.comp, err)
		}
	}
	e.proxy.Reset()
	for i, l := range e.fix.layers {
		checkRandomReads(t, ls, i, l.tar, 10, 99)
	}
	if n := e.proxy.Requests(); n != 0 {
		t.Fatalf("warm reads made %d requests (%d before)", n, before)
	}
}

// Concurrent readers of the same spans fetch them once.
func TestSpanFetchSingleFlight(t *testing.T) {
	e := newEnv(t)
	f, _ := newFetcher(t, t.TempDir(), Options{})
	a := indexedArchive(t, e.fix, e.src, 256<<10)
	ls1, ls2 := openLayers(t, f, a), openLayers(t, f, a)
	l := e.fix.layers[1]
	var wg sync.WaitGroup
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			ls := ls1
			if g%2 == 1 {
				ls = ls2
			}
			buf := make([]byte, 1000)
			if _, err := ls.ReaderAt(1).ReadAt(buf, 300000); err != nil || !bytes.Equal(buf, l.tar[300000:301000]) {
				t.Errorf("reader %d: %v", g, err)
			}
		}(g)
	}
	wg.Wait()
	if n := len(e.proxy.Blob(l.digest)); n != 1 {
		t.Fatalf("%d requests for one span, want 1", n)
	}
}

// A byte flipped in a range answer is caught by the span digest: the span
// is fetched once more, then the read fails naming layer and span; nothing
// bad is cached, and other reads keep working.
func TestSpanVerification(t *testing.T) {
	e := newEnv(t)
	f, store := newFetcher(t, t.TempDir(), Options{})
	a := indexedArchive(t, e.fix, e.src, 256<<10)
	ls := openLayers(t, f, a)
	for i, l := range e.fix.layers {
		x := a.Layers[i].Spans
		k := len(x.Spans) - 1
		s := x.Spans[k]
		if oversized(x, s) {
			continue // streamed spans are checked at their end (stream_test.go)
		}
		if k == 0 {
			store.Remove(spanKey(l.digest, x, 0, ""))
		}
		if k == 0 {
			store.Remove(spanKey(l.digest, x, 0, ""))
		}
		// Once: the refetch heals it.
		flips := 1
		e.proxy.SetCorrupt(func(r *http.Request) int64 {
			if testenv.BlobDigest(r.URL.Path) == l.digest && flips > 0 {
				flips--
				return (s.CEnd - s.COff) / 2
			}
			return -1
		})
		buf := make([]byte, 100)
		if _, err := ls.ReaderAt(i).ReadAt(buf, s.UOff); err != nil || !bytes.Equal(buf, l.tar[s.UOff:s.UOff+100]) {
			t.Fatalf("%s layer: one bad answer then a good one: %v", l.comp, err)
		}
		// Always: the read fails cleanly.
		store.Remove(spanKey(l.digest, x, 0, ""))
		e.proxy.Reset()
		e.proxy.SetCorrupt(func(r *http.Request) int64 {
			if testenv.BlobDigest(r.URL.Path) == l.digest {
				return 1
			}
			return -1
		})
		_, err := ls.ReaderAt(i).ReadAt(buf, 0)
		if err == nil || !strings.Contains(err.Error(), short(l.digest)) || !strings.Contains(err.Error(), "span 0") {
			t.Fatalf("%s layer: corrupt span read gave %v, want an error naming layer and span", l.comp, err)
		}
		if n := len(e.proxy.Blob(l.digest)); n != 2 {
			t.Fatalf("%s layer: %d requests, want the fetch and one refetch", l.comp, n)
		}
		if store.Has(spanKey(l.digest, x, 0, "")) {
			t.Fatalf("%s layer: corrupt span was cached", l.comp)
		}
		e.proxy.SetCorrupt(nil)
		checkRandomReads(t, ls, i, l.tar, 5, 7)
	}
}

// inFlight is a transport that records the most blob requests open at once
// (a request is open until its body is closed).
type inFlight struct {
	base      http.RoundTripper
	mu        sync.Mutex
	now, peak int
}

func (f *inFlight) RoundTrip(r *http.Request) (*http.Response, error) {
	if !strings.Contains(r.URL.Path, "/blobs/") {
		return f.base.RoundTrip(r)
	}
	f.mu.Lock()
	f.now++
	f.peak = max(f.peak, f.now)
	f.mu.Unlock()
	resp, err := f.base.RoundTrip(r)
	if err != nil {
		f.done()
		return nil, err
	}
	resp.Body = &doneBody{ReadCloser: resp.Body, done: sync.OnceFunc(f.done)}
	return resp, nil
}

func (f *inFlight) done() {
	f.mu.Lock()
	f.now--
	f.mu.Unlock()
}

type doneBody struct {
	io.ReadCloser
	done func()
}

func (b *doneBody) Close() error { b.done(); return b.ReadCloser.Close() }

// Registry requests in flight never exceed MaxFetches, however many reads
// miss at once.
func TestFetchConcurrencyBound(t *testing.T) {
	e := newEnv(t)
	tr := &inFlight{base: http.DefaultTransport}
	f, _ := newFetcher(t, t.TempDir(), Options{MaxFetches: 2, Transport: tr})
	a := indexedArchive(t, e.fix, e.src, 256<<10)
	ls := openLayers(t, f, a)
	var wg sync.WaitGroup
	for i, l := range e.fix.layers {
		x := a.Layers[i].Spans
		for k := range x.Spans {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s := x.Spans[k]
				buf := make([]byte, s.USize)
				if _, err := ls.ReaderAt(i).ReadAt(buf, s.UOff); err != nil || !bytes.Equal(buf, l.tar[s.UOff:s.UOff+s.USize]) {
					t.Errorf("layer %d span %d: %v", i, k, err)
				}
			}()
		}
	}
	wg.Wait()
	if tr.peak > 2 || tr.peak == 0 {
		t.Fatalf("%d blob requests in flight at once, want 1-2", tr.peak)
	}
	t.Logf("peak %d requests in flight", tr.peak)
}

// A layer of a clip-written file (no decompression index) is streamed once
// while its index is built; the index is kept in the cache, so a later
// process whose span cache was emptied reads lazily, with Range requests.
func TestClipWrittenLayerBecomesLazy(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	f, store := newFetcher(t, dir, Options{})
	a := e.fix.archive(e.src) // as clip writes it: no spans
	l := e.fix.layers[1]
	if l.comp != zran.Gzip {
		t.Fatalf("fixture layer 1 is %s, want gzip", l.comp)
	}
	ls := openLayers(t, f, a)
	if _, err := ls.ReaderAt(1).ReadAt(make([]byte, 10), 0); err != nil {
		t.Fatal(err)
	}
	whole := 0
	for _, r := range e.proxy.Blob(l.digest) {
		if r.Range == "" {
			whole++
		}
	}
	if whole != 1 {
		t.Fatalf("first read: %d whole-blob requests, want 1", whole)
	}
	x, err := ls.(*layerSet).readers[1].loadIndex(indexKey(l.digest))
	if err != nil {
		t.Fatalf("index not kept in the cache: %v", err)
	}
	if len(x.Spans) < 1 {
		t.Fatal("empty index")
	}
	for i := range x.Spans {
		store.Remove(spanKey(l.digest, x, i, ""))
	}
	e.proxy.Reset()
	f2, _ := newFetcher(t, dir, Options{})
	ls2 := openLayers(t, f2, a)
	mid := int64(len(l.tar)) / 2
	buf := make([]byte, 4096)
	if _, err := ls2.ReaderAt(1).ReadAt(buf, mid); err != nil || !bytes.Equal(buf, l.tar[mid:mid+4096]) {
		t.Fatalf("lazy read: %v", err)
	}
	reqs := e.proxy.Blob(l.digest)
	if len(reqs) != 1 || reqs[0].Status != http.StatusPartialContent {
		t.Fatalf("later process: requests %+v, want one 206 range request", reqs)
	}
}
