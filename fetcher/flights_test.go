package fetcher

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clipd/clipd/index"
	"github.com/clipd/clipd/internal/testenv"
)

// splitProxy is a reverse proxy in front of the test registry that answers
// the one Range request it is set for with its first n body bytes, then
// holds the rest until release; it logs every Range request of a blob.
type splitProxy struct {
	addr    string
	mu      sync.Mutex
	starts  []string
	rng     string
	n       int64
	holding chan struct{} // closed once the first n bytes are sent
	release chan struct{}
}

func startSplitProxy(t *testing.T, target string) *splitProxy {
	p := &splitProxy{holding: make(chan struct{}), release: make(chan struct{})}
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: target})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rng := r.Header.Get("Range")
		if rng == "" || testenv.BlobDigest(r.URL.Path) == "" {
			rp.ServeHTTP(w, r)
			return
		}
		p.mu.Lock()
		p.starts = append(p.starts, rng)
		split, n := rng == p.rng, p.n
		p.mu.Unlock()
		if !split {
			rp.ServeHTTP(w, r)
			return
		}
		req, _ := http.NewRequestWithContext(r.Context(), http.MethodGet, "http://"+target+r.URL.RequestURI(), nil)
		req.Header.Set("Range", rng)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		for _, h := range []string{"Content-Range", "Content-Length", "Content-Type", "Docker-Content-Digest"} {
			if v := resp.Header.Get(h); v != "" {
				w.Header().Set(h, v)
			}
		}
		w.WriteHeader(resp.StatusCode)
		if _, err := io.CopyN(w, resp.Body, n); err != nil {
			return
		}
		w.(http.Flusher).Flush()
		close(p.holding)
		select {
		case <-p.release:
		case <-r.Context().Done():
			return
		}
		_, _ = io.Copy(w, resp.Body)
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { p.let() })
	p.addr = strings.TrimPrefix(srv.URL, "http://")
	return p
}

// split makes the proxy hold the request for rng after its first n bytes.
func (p *splitProxy) split(rng string, n int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rng, p.n = rng, n
}

func (p *splitProxy) let() {
	select {
	case <-p.release:
	default:
		close(p.release)
	}
}

func (p *splitProxy) log() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.starts)
}

// waitingForFlight counts the goroutines waiting for a span another
// goroutine is fetching.
func waitingForFlight() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "fetcher.(*spanFlight).wait") {
			n++
		}
	}
	return n
}

// A demand read of a span a prefetch request is bringing joins that
// request: it makes none of its own, and it has its span as soon as the
// span's bytes are in, while the rest of the request still arrives.
func TestDemandReadJoinsPrefetchRequest(t *testing.T) {
	reg := testenv.StartRegistry(t)
	fix := makeFixture(t)
	fix.push(t, reg+"/test/img:v1")
	p := startSplitProxy(t, reg)
	a := indexedArchive(t, fix, index.Source{Registry: p.addr, Repository: "test/img", Reference: "v1"}, 64<<10)
	x := a.Layers[0].Spans
	whole := spanRange(x, 3, 5)
	// The request for spans 3-5 stops after span 3's bytes.
	p.split(whole, x.Spans[3].CEnd-x.Spans[3].COff)
	f, _ := newFetcher(t, t.TempDir(), Options{PrefetchParallel: 1})
	ls := openLayers(t, f, a)
	done := make(chan error, 1)
	go func() { done <- ls.(Prefetcher).Prefetch(t.Context(), refs(0, 3, 4, 5)) }()
	select {
	case <-p.holding:
	case <-time.After(time.Minute):
		t.Fatal("the prefetch request did not start")
	}
	read := func(i int) []byte {
		s := x.Spans[i]
		buf := make([]byte, s.USize)
		if _, err := ls.ReaderAt(0).ReadAt(buf, s.UOff); err != nil {
			t.Errorf("read span %d: %v", i, err)
		}
		if !bytes.Equal(buf, fix.layers[0].tar[s.UOff:s.UOff+s.USize]) {
			t.Errorf("read span %d: wrong bytes", i)
		}
		return buf
	}
	// Span 3 is served while the request is held after it.
	read(3)
	got4 := make(chan struct{})
	go func() { read(4); close(got4) }()
	for deadline := time.Now().Add(time.Minute); waitingForFlight() < 1; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the read of span 4 is not waiting for the prefetch request")
		}
	}
	if starts := p.log(); !slices.Equal(starts, []string{whole}) {
		t.Fatalf("requests %v, want the prefetch's %s alone", starts, whole)
	}
	p.let()
	<-got4
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if starts := p.log(); !slices.Equal(starts, []string{whole}) {
		t.Fatalf("requests %v, want the prefetch's %s alone", starts, whole)
	}
	if st := ls.Stats(); st.PrefetchFetched != 3 || st.PrefetchUsed != 2 {
		t.Fatalf("stats %+v, want 3 spans prefetched, 2 used", st)
	}
}

// Reads of overlapping ranges at once fetch each span once: a read joins
// the spans another is fetching and fetches only the others.
func TestOverlappingReadsFetchEachSpanOnce(t *testing.T) {
	e := newPrefetchEnv(t)
	f, _ := newFetcher(t, t.TempDir(), Options{})
	ls := openLayers(t, f, e.a)
	x := e.a.Layers[0].Spans
	first := spanRange(x, 2, 4)
	e.proxy.setHold(func(rng string) bool { return rng == first })
	errs := make(chan error, 2)
	readSpans := func(lo, hi int) { errs <- e.readSpans(ls, 0, lo, hi) }
	go readSpans(2, 4)
	e.proxy.waitFor(t, "the first read's request", func(p *holdProxy) bool { return p.held == 1 })
	go readSpans(3, 6)
	// The second read fetches 5-6 and waits for 3-4.
	e.proxy.waitFor(t, "the second read's request", func(p *holdProxy) bool { return len(p.ends) == 1 })
	for deadline := time.Now().Add(time.Minute); waitingForFlight() < 1; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the second read is not waiting for the first one's spans")
		}
	}
	e.proxy.release()
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if starts, _, _ := e.proxy.log(); !slices.Equal(starts, []string{first, spanRange(x, 5, 6)}) {
		t.Fatalf("requests %v, want %s then %s", starts, first, spanRange(x, 5, 6))
	}
}

// A flight that its leader abandons (its context ended) is fetched again by
// a joiner whose own context is alive.
func TestFlightAbandonedIsFetchedAgain(t *testing.T) {
	e := newPrefetchEnv(t)
	f, _ := newFetcher(t, t.TempDir(), Options{})
	ls := openLayers(t, f, e.a)
	x := e.a.Layers[0].Spans
	rng := spanRange(x, 7, 7)
	e.proxy.setHold(func(r string) bool { return r == rng })
	lctx, cancel := context.WithCancel(t.Context())
	leader := make(chan error, 1)
	buf := make([]byte, x.Spans[7].USize)
	go func() {
		_, err := ls.ReaderAt(0).(ContextReaderAt).ReadAtContext(lctx, make([]byte, x.Spans[7].USize), x.Spans[7].UOff)
		leader <- err
	}()
	e.proxy.waitFor(t, "the leader's request", func(p *holdProxy) bool { return p.held == 1 })
	joiner := make(chan error, 1)
	go func() {
		_, err := ls.ReaderAt(0).ReadAt(buf, x.Spans[7].UOff)
		joiner <- err
	}()
	for deadline := time.Now().Add(time.Minute); waitingForFlight() < 1; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the second read is not waiting for the first")
		}
	}
	e.proxy.setHold(nil)
	cancel()
	if err := <-leader; err == nil {
		t.Fatal("the cancelled read succeeded")
	}
	if err := <-joiner; err != nil {
		t.Fatalf("the joiner failed with its leader: %v", err)
	}
	if !bytes.Equal(buf, e.fix.layers[0].tar[x.Spans[7].UOff:x.Spans[7].UOff+x.Spans[7].USize]) {
		t.Fatal("wrong bytes")
	}
}
