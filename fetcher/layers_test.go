package fetcher

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clipd/clipd/cache"
	"github.com/clipd/clipd/index"
	"github.com/clipd/clipd/internal/testenv"
	"github.com/clipd/clipd/zran"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
)

// deadAddr returns a 127.0.0.1 address nobody listens on.
func deadAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// env is a registry with the fixture pushed, behind a counting proxy.
type env struct {
	fix   *fixture
	proxy *testenv.CountingProxy
	src   index.Source
}

func newEnv(t *testing.T) *env {
	reg := testenv.StartRegistry(t)
	f := makeFixture(t)
	f.push(t, reg+"/test/img:v1")
	p := testenv.StartCountingProxy(t, reg)
	return &env{fix: f, proxy: p, src: index.Source{Registry: p.Addr, Repository: "test/img", Reference: "v1"}}
}

func newFetcher(t testing.TB, dir string, opts Options) (*Fetcher, *cache.Store) {
	s, err := cache.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	return New(s, opts), s
}

func openLayers(t *testing.T, f *Fetcher, a *index.Archive) Layers {
	ls, err := f.OpenLayers(t.Context(), a)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ls.Close() })
	return ls
}

// checkRandomReads reads n random ranges of layer i and compares them. It
// returns how many bytes it read.
func checkRandomReads(t *testing.T, ls Layers, i int, want []byte, n int, seed uint64) (total int64) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 1))
	r := ls.ReaderAt(i)
	for range n {
		off := rng.Int64N(int64(len(want)))
		buf := make([]byte, 1+rng.IntN(200000))
		k, err := r.ReadAt(buf, off)
		end := min(off+int64(len(buf)), int64(len(want)))
		if k != int(end-off) || !bytes.Equal(buf[:k], want[off:end]) {
			t.Fatalf("layer %d: ReadAt(%d bytes, %d) = %d, %v; wrong bytes", i, len(buf), off, k, err)
		}
		if end < off+int64(len(buf)) && err != io.EOF {
			t.Fatalf("layer %d: short read at the end gave %v, want io.EOF", i, err)
		}
		if end == off+int64(len(buf)) && err != nil {
			t.Fatalf("layer %d: ReadAt: %v", i, err)
		}
		total += int64(k)
	}
	return total
}

// An uncompressed layer of a clip-written file (no index, no size) is read
// with Range requests, span by span, through the cache: reading the same
// ranges again, in this process or another, asks the registry nothing.
func TestUncompressedLayerIsCached(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	f, _ := newFetcher(t, dir, Options{})
	a := e.fix.archive(e.src)
	a.Layers[0].Size = 0 // as in clip files: learnt from the registry
	ls := openLayers(t, f, a)
	l := e.fix.layers[0]
	if l.comp != zran.None {
		t.Fatalf("fixture layer 0 is %s, want uncompressed", l.comp)
	}
	e.proxy.Reset()
	checkRandomReads(t, ls, 0, l.tar, 20, 1)
	reqs := e.proxy.Blob(l.digest)
	spans := (int64(len(l.tar)) + DefaultSpanSize - 1) / DefaultSpanSize
	gets := 0
	for _, r := range reqs {
		if r.Method != http.MethodGet {
			continue
		}
		gets++
		if r.Range == "" || r.Status != http.StatusPartialContent {
			t.Fatalf("blob request %+v: want a Range request answered 206", r)
		}
	}
	if reqs[0].Range != "bytes=0-3" {
		t.Fatalf("first request %+v, want the 4-byte detection read", reqs[0])
	}
	if gets < 2 || int64(gets) > 1+spans {
		t.Fatalf("%d GET requests for 20 reads of a layer of %d spans", gets, spans)
	}
	first := ls.Stats()

	e.proxy.Reset()
	checkRandomReads(t, ls, 0, l.tar, 20, 1)
	if reqs := e.proxy.Blob(l.digest); len(reqs) != 0 {
		t.Fatalf("reading the same ranges again: %d blob requests (%+v), want none", len(reqs), reqs)
	}
	if st := ls.Stats(); st.CacheHits-first.CacheHits != 20 || st.Requests != first.Requests {
		t.Fatalf("second round: stats %+v after %+v, want 20 more hits and no request", st, first)
	}

	// Another process detects the compression again, and then reads from
	// the cache.
	f2, _ := newFetcher(t, dir, Options{})
	checkRandomReads(t, openLayers(t, f2, a), 0, l.tar, 20, 1)
	for _, r := range e.proxy.Blob(l.digest) {
		if r.Method == http.MethodGet && r.Range != "bytes=0-3" {
			t.Fatalf("another process reading the same ranges made request %+v", r)
		}
	}
}

func TestCompressedLayers(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	f, store := newFetcher(t, dir, Options{})
	ls := openLayers(t, f, e.fix.archive(e.src))
	for i := 1; i <= 2; i++ {
		l := e.fix.layers[i]
		checkRandomReads(t, ls, i, l.tar, 30, uint64(i))
		gets := 0
		for _, r := range e.proxy.Blob(l.digest) {
			if r.Method == http.MethodGet && r.Range == "" {
				gets++
			}
		}
		if gets != 1 {
			t.Fatalf("%s layer: %d whole-blob GETs, want 1", l.comp, gets)
		}
		if !store.Has(indexKey(l.digest)) {
			t.Fatalf("%s layer not in the cache", l.comp)
		}
	}
	if st := ls.Stats(); st.Reads != 60 || st.CacheHits != 58 {
		t.Fatalf("stats %+v, want 60 reads and 58 cache hits", st)
	}
}

func TestFetchOnceAcrossMounts(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	f, _ := newFetcher(t, dir, Options{})
	a := e.fix.archive(e.src)
	sets := []Layers{openLayers(t, f, a), openLayers(t, f, a)}
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ls := sets[g%2]
			for _, i := range []int{1, 2} {
				want := e.fix.layers[i].tar
				off := int64(g * 1000)
				buf := make([]byte, 4096)
				if _, err := ls.ReaderAt(i).ReadAt(buf, off); err != nil || !bytes.Equal(buf, want[off:off+4096]) {
					errs <- errors.Join(err, errors.New("wrong bytes"))
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for _, i := range []int{1, 2} {
		gets := 0
		for _, r := range e.proxy.Blob(e.fix.layers[i].digest) {
			if r.Method == http.MethodGet && r.Range == "" {
				gets++
			}
		}
		if gets != 1 {
			t.Fatalf("layer %d fetched %d times by two mounts, want once", i, gets)
		}
	}

	// Another Fetcher (another process) over the same cache needs no network.
	e.proxy.Reset()
	f2, _ := newFetcher(t, dir, Options{})
	ls := openLayers(t, f2, a)
	checkRandomReads(t, ls, 1, e.fix.layers[1].tar, 10, 7)
	checkRandomReads(t, ls, 2, e.fix.layers[2].tar, 10, 8)
	if n := e.proxy.Requests(); n != 0 {
		t.Fatalf("warm cache made %d requests", n)
	}
	if st := ls.Stats(); st.Requests != 0 || st.CacheHits != 20 || st.BytesFetched != 0 {
		t.Fatalf("warm stats %+v", st)
	}
}

func TestCorruptBlobIsNotCached(t *testing.T) {
	e := newEnv(t)
	f, store := newFetcher(t, t.TempDir(), Options{})
	ls := openLayers(t, f, e.fix.archive(e.src))
	for _, i := range []int{1, 2} {
		l := e.fix.layers[i]
		e.proxy.SetCorrupt(func(r *http.Request) int64 {
			if testenv.BlobDigest(r.URL.Path) == l.digest && r.Header.Get("Range") == "" {
				return int64(len(l.blob)) / 2
			}
			return -1
		})
		_, err := ls.ReaderAt(i).ReadAt(make([]byte, 100), 0)
		if err == nil || !strings.Contains(err.Error(), short(l.digest)) {
			t.Fatalf("%s layer: corrupt blob read gave %v, want an error naming the layer", l.comp, err)
		}
		t.Logf("%s: %v", l.comp, err)
		if store.Has(indexKey(l.digest)) {
			t.Fatalf("%s layer: corrupt blob was cached", l.comp)
		}
		// The failure is not remembered: a later read fetches again.
		e.proxy.SetCorrupt(nil)
		checkRandomReads(t, ls, i, l.tar, 3, 3)
	}
	tmps, _ := os.ReadDir(filepath.Join(store.Dir(), ".tmp"))
	if len(tmps) != 0 {
		t.Fatalf("%d temporary files left", len(tmps))
	}
}

func TestDigestMismatchOfUncompressibleBlob(t *testing.T) {
	// Corrupting the gzip magic makes the blob look uncompressed; the
	// digest check must still refuse it when fetched whole.
	e := newEnv(t)
	f, store := newFetcher(t, t.TempDir(), Options{})
	a := e.fix.archive(e.src)
	a.Extension, a.Layers[1].Compression = 1, zran.Gzip
	ls := openLayers(t, f, a)
	l := e.fix.layers[1]
	e.proxy.SetCorrupt(func(r *http.Request) int64 { return 0 })
	_, err := ls.ReaderAt(1).ReadAt(make([]byte, 10), 0)
	if err == nil || !strings.Contains(err.Error(), "digest mismatch") || !strings.Contains(err.Error(), short(l.digest)) {
		t.Fatalf("read: %v, want a digest mismatch naming the layer", err)
	}
	if store.Has(indexKey(l.digest)) {
		t.Fatal("corrupt blob was cached")
	}
}

func TestRegistryDown(t *testing.T) {
	e := newEnv(t)
	a := e.fix.archive(index.Source{Registry: deadAddr(t), Repository: "test/img"})
	f, _ := newFetcher(t, t.TempDir(), Options{Retries: 2, RetryBackoff: 20 * time.Millisecond})
	ls := openLayers(t, f, a)
	start := time.Now()
	_, err := ls.ReaderAt(1).ReadAt(make([]byte, 10), 0)
	if err == nil || !strings.Contains(err.Error(), short(e.fix.layers[1].digest)) ||
		!strings.Contains(err.Error(), "connection refused") || !strings.Contains(err.Error(), "after 2 retries") {
		t.Fatalf("down registry: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("gave up after %s", d)
	}

	// 503s are retried, and reported with the range once retries run out.
	f, _ = newFetcher(t, t.TempDir(), Options{Retries: 2, RetryBackoff: 10 * time.Millisecond})
	a = e.fix.archive(e.src)
	a.Extension, a.Layers[0].Compression = 1, zran.None
	ls = openLayers(t, f, a)
	var mu sync.Mutex
	failures := 2
	e.proxy.SetFail(func(r *http.Request) int {
		mu.Lock()
		defer mu.Unlock()
		if testenv.BlobDigest(r.URL.Path) != "" && failures > 0 {
			failures--
			return http.StatusServiceUnavailable
		}
		return 0
	})
	checkRandomReads(t, ls, 0, e.fix.layers[0].tar, 2, 5)
	e.proxy.SetFail(func(r *http.Request) int {
		if testenv.BlobDigest(r.URL.Path) != "" {
			return http.StatusServiceUnavailable
		}
		return 0
	})
	e.proxy.Reset()
	_, err = ls.ReaderAt(0).ReadAt(make([]byte, 100), 1000)
	// The read needs span 0, which is fetched whole.
	want := fmt.Sprintf("fetch layer %s: range 0-%d: 503 Service Unavailable", short(e.fix.layers[0].digest), DefaultSpanSize-1)
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("persistent 503: %v, want %q", err, want)
	}
	if n := len(e.proxy.Blob(e.fix.layers[0].digest)); n != 3 {
		t.Fatalf("%d attempts, want 1 + 2 retries", n)
	}
	e.proxy.SetFail(func(r *http.Request) int {
		if testenv.BlobDigest(r.URL.Path) != "" {
			return http.StatusNotFound
		}
		return 0
	})
	e.proxy.Reset()
	// A fresh fetcher: the failed range is answered from memory for a
	// moment.
	f, _ = newFetcher(t, t.TempDir(), Options{Retries: 2, RetryBackoff: 10 * time.Millisecond})
	ls = openLayers(t, f, a)
	if _, err = ls.ReaderAt(0).ReadAt(make([]byte, 100), 1000); err == nil || len(e.proxy.Blob(e.fix.layers[0].digest)) != 1 {
		t.Fatalf("404 was retried or accepted: %v", err)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// A registry that answers a range with 200 and the whole blob (a
// pull-through cache that does not hold the blob yet) still serves the
// read: the range is read from the stream as it passes.
func TestRangeIgnoredReadFromStream(t *testing.T) {
	e := newEnv(t)
	strip := roundTripFunc(func(r *http.Request) (*http.Response, error) {
		r = r.Clone(r.Context())
		r.Header.Del("Range")
		return http.DefaultTransport.RoundTrip(r)
	})
	a := e.fix.archive(e.src)
	a.Extension, a.Layers[0].Compression = 1, zran.None
	read := func(opts Options) []byte {
		f, _ := newFetcher(t, t.TempDir(), opts)
		ls := openLayers(t, f, a)
		buf := make([]byte, 100)
		if _, err := ls.ReaderAt(0).ReadAt(buf, 1000); err != nil {
			t.Fatalf("read at 1000 (%v): %v", opts.Transport != nil, err)
		}
		return buf
	}
	want := read(Options{})
	if got := read(Options{Transport: strip}); !bytes.Equal(got, want) {
		t.Fatalf("200 to a range request: got %q, want %q", got, want)
	}
}

func TestLayoutSource(t *testing.T) {
	fix := makeFixture(t)
	dir := t.TempDir()
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(fix.img); err != nil {
		t.Fatal(err)
	}
	f, store := newFetcher(t, t.TempDir(), Options{})
	ls := openLayers(t, f, fix.archive(index.Source{Layout: dir}))
	for i, l := range fix.layers {
		checkRandomReads(t, ls, i, l.tar, 10, uint64(i))
	}
	if store.Has(indexKey(fix.layers[0].digest)) || !store.Has(indexKey(fix.layers[1].digest)) {
		t.Fatal("only compressed layers belong in the cache")
	}

	a := fix.archive(index.Source{Layout: t.TempDir()})
	if _, err := f.OpenLayers(t.Context(), a); err == nil || !strings.Contains(err.Error(), short(fix.layers[0].digest)) {
		t.Fatalf("missing layout blob: %v", err)
	}
}

func TestEmbeddedArchive(t *testing.T) {
	path := filepath.Join(t.TempDir(), "v1.clip")
	data := makeTar(t, 9)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	f, _ := newFetcher(t, t.TempDir(), Options{})
	ls := openLayers(t, f, &index.Archive{Path: path, Format: 1, Layers: []index.Layer{{Embedded: true}}})
	checkRandomReads(t, ls, 0, data, 10, 4)
	if _, err := ls.ReaderAt(1).ReadAt(make([]byte, 1), 0); err == nil {
		t.Fatal("reader of a missing layer succeeded")
	}
}

func TestReadAfterCloseAndCancel(t *testing.T) {
	e := newEnv(t)
	f, _ := newFetcher(t, t.TempDir(), Options{})
	ls, err := f.OpenLayers(t.Context(), e.fix.archive(e.src))
	if err != nil {
		t.Fatal(err)
	}
	cr := ls.ReaderAt(1).(ContextReaderAt)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := cr.ReadAtContext(ctx, make([]byte, 10), 0); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled read: %v", err)
	}
	ls.Close()
	if _, err := ls.ReaderAt(1).ReadAt(make([]byte, 10), 0); err == nil {
		t.Fatal("read after Close succeeded")
	}
}
