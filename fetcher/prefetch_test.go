package fetcher

import (
	"bytes"
	"context"
	"errors"
	"fmt"
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

	"github.com/clipd/clipd/cache"
	"github.com/clipd/clipd/index"
	"github.com/clipd/clipd/internal/testenv"
)

// holdProxy is a reverse proxy in front of the test registry that logs the
// Range requests of blobs as they start and end, counts them in flight, and
// holds those hold selects until release: a test sees requests in flight
// at the server, and their order, without timing anything.
type holdProxy struct {
	addr string

	mu          sync.Mutex
	hold        func(rng string) bool
	released    chan struct{}
	starts      []string
	ends        []string
	inFlight    int
	maxInFlight int
	held        int
	changed     chan struct{} // closed and replaced on every change
}

func startHoldProxy(t testing.TB, target string) *holdProxy {
	p := &holdProxy{released: make(chan struct{}), changed: make(chan struct{})}
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: target})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rng := r.Header.Get("Range")
		if rng == "" || testenv.BlobDigest(r.URL.Path) == "" {
			rp.ServeHTTP(w, r)
			return
		}
		p.mu.Lock()
		p.starts = append(p.starts, rng)
		p.inFlight++
		p.maxInFlight = max(p.maxInFlight, p.inFlight)
		held := p.hold != nil && p.hold(rng)
		release := p.released
		if held {
			p.held++
		}
		p.changeLocked()
		p.mu.Unlock()
		if held {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
		rp.ServeHTTP(w, r)
		p.mu.Lock()
		p.ends = append(p.ends, rng)
		p.inFlight--
		if held {
			p.held--
		}
		p.changeLocked()
		p.mu.Unlock()
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(p.release) // before srv.Close, which waits for handlers
	p.addr = strings.TrimPrefix(srv.URL, "http://")
	return p
}

func (p *holdProxy) changeLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// setHold holds the requests hold selects (nil: none) until release.
func (p *holdProxy) setHold(hold func(rng string) bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.hold = hold
}

// release lets the held requests go, and holds no more.
func (p *holdProxy) release() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.hold = nil
	select {
	case <-p.released:
	default:
		close(p.released)
	}
}

func (p *holdProxy) reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.starts, p.ends, p.maxInFlight = nil, nil, p.inFlight
	p.released = make(chan struct{})
}

func (p *holdProxy) log() (starts, ends []string, maxInFlight int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.starts), slices.Clone(p.ends), p.maxInFlight
}

// waitFor waits until cond holds of the proxy's state, failing the test
// after a minute: a condition that cannot happen fails rather than hangs.
func (p *holdProxy) waitFor(t testing.TB, what string, cond func(p *holdProxy) bool) {
	t.Helper()
	timeout := time.After(time.Minute)
	for {
		p.mu.Lock()
		ok, changed := cond(p), p.changed
		p.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-changed:
		case <-time.After(10 * time.Millisecond):
		case <-timeout:
			t.Fatalf("waiting for %s: gave up", what)
		}
	}
}

// spanRange is the Range header of a request for spans lo..hi of x.
func spanRange(x *index.SpanIndex, lo, hi int) string {
	return fmt.Sprintf("bytes=%d-%d", x.Spans[lo].COff, x.Spans[hi].CEnd-1)
}

// prefetchEnv is the fixture in a registry behind a holdProxy, with an
// archive whose layers have 64 KiB spans (about 40 a layer).
type prefetchEnv struct {
	fix   *fixture
	proxy *holdProxy
	a     *index.Archive
}

func newPrefetchEnv(t *testing.T) *prefetchEnv {
	reg := testenv.StartRegistry(t)
	fix := makeFixture(t)
	fix.push(t, reg+"/test/img:v1")
	p := startHoldProxy(t, reg)
	src := index.Source{Registry: p.addr, Repository: "test/img", Reference: "v1"}
	return &prefetchEnv{fix: fix, proxy: p, a: indexedArchive(t, fix, src, 64<<10)}
}

// readSpan reads span i of layer n on demand and checks its bytes.
func (e *prefetchEnv) readSpan(t *testing.T, ls Layers, n, i int) {
	t.Helper()
	if err := e.readSpans(ls, n, i, i); err != nil {
		t.Fatal(err)
	}
}

// readSpans reads spans lo..hi of layer n on demand with one read and
// checks their bytes (usable from any goroutine).
func (e *prefetchEnv) readSpans(ls Layers, n, lo, hi int) error {
	x := e.a.Layers[n].Spans
	off, end := x.Spans[lo].UOff, x.Spans[hi].UOff+x.Spans[hi].USize
	buf := make([]byte, end-off)
	if _, err := ls.ReaderAt(n).ReadAt(buf, off); err != nil {
		return fmt.Errorf("read spans %d-%d of layer %d: %w", lo, hi, n, err)
	}
	if !bytes.Equal(buf, e.fix.layers[n].tar[off:end]) {
		return fmt.Errorf("read spans %d-%d of layer %d: wrong bytes", lo, hi, n)
	}
	return nil
}

// holdDemandRead starts a demand read of span i of layer n whose request
// the proxy holds (until release), and returns once it is held; the read's
// outcome comes on the channel.
func (e *prefetchEnv) holdDemandRead(t *testing.T, ls Layers, n, i int) <-chan error {
	t.Helper()
	s := e.a.Layers[n].Spans.Spans[i]
	demand := spanRange(e.a.Layers[n].Spans, i, i)
	e.proxy.setHold(func(rng string) bool { return rng == demand })
	read := make(chan error, 1)
	go func() {
		_, err := ls.ReaderAt(n).ReadAt(make([]byte, s.USize), s.UOff)
		read <- err
	}()
	e.proxy.waitFor(t, "the demand request", func(p *holdProxy) bool { return p.held == 1 })
	return read
}

func refs(layer int, spans ...int) []SpanRef {
	var out []SpanRef
	for _, s := range spans {
		out = append(out, SpanRef{layer, s})
	}
	return out
}

// Demand reads are recorded once each, in order of first touch, hits
// included; read-ahead and prefetch are not recorded, nor anything after
// StopRecording.
func TestRecordTouchesInOrderOnce(t *testing.T) {
	e := newPrefetchEnv(t)
	f, _ := newFetcher(t, t.TempDir(), Options{})
	ls := openLayers(t, f, e.a)
	rec := ls.(Recorder)
	if err := ls.(Prefetcher).Prefetch(t.Context(), refs(0, 20, 21)); err != nil {
		t.Fatal(err)
	}
	e.readSpan(t, ls, 1, 5)
	e.readSpan(t, ls, 1, 2)
	e.readSpan(t, ls, 1, 5) // again: not recorded again
	// A file read that misses reads ahead: those spans are not touches.
	x1 := e.a.Layers[0].Spans
	if _, err := ls.ReaderAt(0).(FileReaderAt).ReadAtFile(t.Context(), make([]byte, 10), x1.Spans[15].UOff, x1.Spans[19].UOff); err != nil {
		t.Fatal(err)
	}
	e.readSpan(t, ls, 0, 3)
	e.readSpan(t, ls, 0, 21) // prefetched: a hit, recorded
	// One read over two spans touches both, in offset order.
	x := e.a.Layers[1].Spans
	buf := make([]byte, 2000)
	if _, err := ls.ReaderAt(1).ReadAt(buf, x.Spans[7].UOff-1000); err != nil {
		t.Fatal(err)
	}
	want := []SpanRef{{1, 5}, {1, 2}, {0, 15}, {0, 3}, {0, 21}, {1, 6}, {1, 7}}
	got := rec.Touches()
	var gotRefs []SpanRef
	for i, tc := range got {
		gotRefs = append(gotRefs, tc.SpanRef)
		if i > 0 && tc.At < got[i-1].At {
			t.Errorf("touch %d at %v, before touch %d at %v", i, tc.At, i-1, got[i-1].At)
		}
	}
	if !slices.Equal(gotRefs, want) {
		t.Fatalf("touches %v, want %v", gotRefs, want)
	}
	rec.StopRecording()
	e.readSpan(t, ls, 1, 9)
	if n := len(rec.Touches()); n != len(want) {
		t.Fatalf("%d touches after StopRecording, want %d", n, len(want))
	}
}

// Prefetch fetches the spans of its plan not yet cached, adjacent spans of
// a layer with one request; refs it cannot fetch and repeats are skipped.
// Demand reads of prefetched spans are counted used.
func TestPrefetchCoalescesAndSkipsCached(t *testing.T) {
	e := newPrefetchEnv(t)
	f, _ := newFetcher(t, t.TempDir(), Options{})
	ls := openLayers(t, f, e.a)
	e.readSpan(t, ls, 0, 20) // cached before the prefetch
	e.proxy.reset()
	plan := append(refs(0, 10, 11, 13, 12, 20, 21, 5), SpanRef{0, 9999}, SpanRef{7, 0}, SpanRef{0, 10}, SpanRef{1, -1}, SpanRef{1, 4})
	if err := ls.(Prefetcher).Prefetch(t.Context(), plan); err != nil {
		t.Fatal(err)
	}
	x0, x1 := e.a.Layers[0].Spans, e.a.Layers[1].Spans
	starts, _, _ := e.proxy.log()
	slices.Sort(starts)
	want := []string{spanRange(x0, 10, 13), spanRange(x0, 21, 21), spanRange(x0, 5, 5), spanRange(x1, 4, 4)}
	slices.Sort(want)
	if !slices.Equal(starts, want) {
		t.Fatalf("requests %v, want %v", starts, want)
	}
	st := ls.Stats()
	if st.PrefetchPlanned != int64(len(plan)) || st.PrefetchFetched != 7 || st.PrefetchSkipped != 5 || st.PrefetchUsed != 0 || st.PrefetchWasted != 7 {
		t.Fatalf("stats after prefetch: %+v, want planned %d, fetched 7, skipped 5, used 0, wasted 7", st, len(plan))
	}
	e.proxy.reset()
	for _, s := range []int{10, 13, 5} {
		e.readSpan(t, ls, 0, s)
	}
	e.readSpan(t, ls, 0, 10) // used once
	e.readSpan(t, ls, 0, 20) // cached before: not prefetched
	if starts, _, _ := e.proxy.log(); len(starts) != 0 {
		t.Fatalf("reading prefetched spans made requests %v", starts)
	}
	st = ls.Stats()
	if st.PrefetchUsed != 3 || st.PrefetchWasted != 4 || st.CacheHits != 5 {
		t.Fatalf("stats after reads: %+v, want used 3, wasted 4, 5 cache hits", st)
	}
	// The figures are per layer set, and add up in the Fetcher's.
	if fs := f.Stats(); fs.PrefetchFetched != 7 || fs.PrefetchUsed != 3 {
		t.Fatalf("fetcher stats %+v", fs)
	}
	// Everything cached: a second prefetch fetches nothing.
	if err := ls.(Prefetcher).Prefetch(t.Context(), refs(0, 10, 11, 12)); err != nil {
		t.Fatal(err)
	}
	if starts, _, _ := e.proxy.log(); len(starts) != 0 {
		t.Fatalf("a prefetch of cached spans made requests %v", starts)
	}
}

// A demand read never queues behind prefetch requests: with one fetch slot,
// a prefetch of many spans and its requests held at the registry, a demand
// read of another span goes next, as soon as the request in flight ends,
// and completes before the prefetch's remaining spans.
func TestPrefetchDemandFirst(t *testing.T) {
	e := newPrefetchEnv(t)
	f, _ := newFetcher(t, t.TempDir(), Options{MaxFetches: 1, PrefetchParallel: 4})
	ls := openLayers(t, f, e.a)
	x := e.a.Layers[0].Spans
	var planned []int
	for i := 0; i < 24; i += 2 {
		planned = append(planned, i)
	}
	e.proxy.setHold(func(string) bool { return true })
	done := make(chan error, 1)
	go func() { done <- ls.(Prefetcher).Prefetch(t.Context(), refs(0, planned...)) }()
	e.proxy.waitFor(t, "the first prefetch request", func(p *holdProxy) bool { return p.held == 1 })
	read := make(chan error, 1)
	go func() {
		s := x.Spans[31]
		_, err := ls.ReaderAt(0).ReadAt(make([]byte, s.USize), s.UOff)
		read <- err
	}()
	// The demand read waits for the slot, with the prefetch's other
	// requests.
	for {
		f.slots.mu.Lock()
		n := len(f.slots.high)
		f.slots.mu.Unlock()
		if n == 1 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	e.proxy.release()
	if err := <-read; err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	starts, ends, maxIn := e.proxy.log()
	demand := spanRange(x, 31, 31)
	if len(starts) != len(planned)+1 || starts[1] != demand || ends[1] != demand || maxIn != 1 {
		t.Fatalf("requests started %v, ended %v (%d at most in flight); want the demand read's %s second", starts, ends, maxIn, demand)
	}
	if st := ls.Stats(); st.PrefetchFetched != int64(len(planned)) {
		t.Fatalf("stats %+v, want %d spans prefetched", st, len(planned))
	}
}

// Prefetch requests never take every fetch slot: some stay free for demand
// reads.
func TestPrefetchLeavesSlotsForDemand(t *testing.T) {
	e := newPrefetchEnv(t)
	f, _ := newFetcher(t, t.TempDir(), Options{MaxFetches: 4, PrefetchParallel: 8})
	ls := openLayers(t, f, e.a)
	x := e.a.Layers[0].Spans
	var planned []int
	for i := 0; i < 24; i += 2 {
		planned = append(planned, i)
	}
	e.proxy.setHold(func(string) bool { return true })
	done := make(chan error, 1)
	go func() { done <- ls.(Prefetcher).Prefetch(t.Context(), refs(0, planned...)) }()
	e.proxy.waitFor(t, "three prefetch requests", func(p *holdProxy) bool { return p.held == 3 })
	// A demand read goes out at once, beside the held prefetch requests.
	demand := spanRange(x, 31, 31)
	e.proxy.setHold(func(rng string) bool { return rng != demand })
	e.readSpan(t, ls, 0, 31)
	e.proxy.release()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	starts, _, maxIn := e.proxy.log()
	if i := slices.Index(starts, demand); i != 3 || maxIn != 4 {
		t.Fatalf("requests %v (%d at most in flight), want the demand read's fourth, beside 3 of the prefetch", starts, maxIn)
	}
}

// fetcherGoroutines counts the goroutines running fetcher code (not the
// test's proxy).
func fetcherGoroutines() (int, string) {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	var sample string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "clipd/fetcher.(*") && !strings.Contains(g, "holdProxy") && !strings.Contains(g, "fetcherGoroutines") {
			n++
			sample = g
		}
	}
	return n, sample
}

// Closing the layers (unmount) ends a prefetch at once: Prefetch returns,
// its goroutines end, and the store holds only whole, verified spans.
func TestPrefetchCloseCancels(t *testing.T) {
	base, _ := fetcherGoroutines()
	e := newPrefetchEnv(t)
	f, store := newFetcher(t, t.TempDir(), Options{})
	ls, err := f.OpenLayers(t.Context(), e.a)
	if err != nil {
		t.Fatal(err)
	}
	x := e.a.Layers[0].Spans
	var planned []int
	for i := 0; i < len(x.Spans); i += 2 {
		planned = append(planned, i)
	}
	// The first requests pass, the others are held.
	var mu sync.Mutex
	passed := 0
	e.proxy.setHold(func(string) bool {
		mu.Lock()
		defer mu.Unlock()
		passed++
		return passed > 3
	})
	done := make(chan error, 1)
	go func() { done <- ls.(Prefetcher).Prefetch(context.Background(), refs(0, planned...)) }()
	e.proxy.waitFor(t, "held prefetch requests", func(p *holdProxy) bool { return p.held >= 2 })
	ls.Close()
	select {
	case err := <-done:
		if err == nil || !errors.Is(err, context.Canceled) {
			t.Fatalf("Prefetch after Close: %v, want canceled", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Prefetch did not return after Close")
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		n, sample := fetcherGoroutines()
		if n <= base {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d fetcher goroutines left after Close, e.g.\n%s", n, sample)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cached := 0
	l := &layerReader{layer: e.a.Layers[0], origin: "registry:" + e.a.Source.Registry + "/" + e.a.Source.Repository}
	for i := range x.Spans {
		k := l.spanKey(x, i)
		if !store.Has(k) {
			continue
		}
		cached++
		buf := make([]byte, x.Spans[i].USize)
		if n, err := store.ReadAt(k, buf, 0); n != len(buf) || !bytes.Equal(buf, e.fix.layers[0].tar[x.Spans[i].UOff:][:len(buf)]) {
			t.Fatalf("cached span %d: %d bytes, %v; wrong", i, n, err)
		}
	}
	if cached > 3 {
		t.Fatalf("%d spans cached of %d planned, want the 3 requests let through at most", cached, len(planned))
	}
	if st := ls.Stats(); st.PrefetchFetched != int64(cached) {
		t.Fatalf("stats %+v, %d spans cached", st, cached)
	}
}

// A prefetch takes at most half of the cache budget, then stops.
func TestPrefetchStopsWhenCacheFull(t *testing.T) {
	e := newPrefetchEnv(t)
	s, err := cache.OpenWith(t.TempDir(), cache.Options{MaxSize: 400 << 10})
	if err != nil {
		t.Fatal(err)
	}
	f := New(s, Options{PrefetchParallel: 1})
	ls := openLayers(t, f, e.a)
	x := e.a.Layers[0].Spans
	var planned []int
	for i := 0; i < len(x.Spans); i += 2 {
		planned = append(planned, i)
	}
	err = ls.(Prefetcher).Prefetch(t.Context(), refs(0, planned...))
	if !errors.Is(err, cache.ErrNoSpace) {
		t.Fatalf("Prefetch into a full cache: %v, want ErrNoSpace", err)
	}
	// 64 KiB spans: three fit in 200 KiB.
	if starts, _, _ := e.proxy.log(); len(starts) != 3 || ls.Stats().PrefetchFetched != 3 {
		t.Fatalf("%d requests for %d spans, stats %+v; want 3 spans fetched", len(starts), len(planned), ls.Stats())
	}
}

// A read that misses spans apart from each other fetches each run of
// missing spans with its own request, in parallel.
func TestParallelMisses(t *testing.T) {
	e := newPrefetchEnv(t)
	x := e.a.Layers[1].Spans
	read := func(ls Layers) {
		t.Helper()
		off, end := x.Spans[10].UOff+100, x.Spans[14].UOff+100
		buf := make([]byte, end-off)
		if _, err := ls.ReaderAt(1).ReadAt(buf, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf, e.fix.layers[1].tar[off:end]) {
			t.Fatal("wrong bytes")
		}
	}
	f, _ := newFetcher(t, t.TempDir(), Options{})
	ls := openLayers(t, f, e.a)
	for _, i := range []int{10, 12, 14} {
		e.readSpan(t, ls, 1, i)
	}
	e.proxy.reset()
	// Both requests are held at the registry until both are there: a
	// fetcher that made them one after the other never gets that far.
	e.proxy.setHold(func(string) bool { return true })
	go func() {
		e.proxy.waitFor(t, "two requests in flight", func(p *holdProxy) bool { return p.held == 2 })
		e.proxy.release()
	}()
	read(ls)
	starts, _, maxIn := e.proxy.log()
	slices.Sort(starts)
	if want := []string{spanRange(x, 11, 11), spanRange(x, 13, 13)}; !slices.Equal(starts, want) || maxIn != 2 {
		t.Fatalf("requests %v, %d at most in flight; want %v at once", starts, maxIn, want)
	}

	// Before: one request over the spans between.
	f, _ = newFetcher(t, t.TempDir(), Options{})
	f.serialMisses = true
	ls = openLayers(t, f, e.a)
	for _, i := range []int{10, 12, 14} {
		e.readSpan(t, ls, 1, i)
	}
	e.proxy.reset()
	read(ls)
	if starts, _, _ := e.proxy.log(); !slices.Equal(starts, []string{spanRange(x, 11, 13)}) {
		t.Fatalf("serial misses: requests %v", starts)
	}
}

// A file's first read that misses fetches the file's next spans at once,
// in parallel, in the background; they are read-aheads, not touches.
func TestReadAheadFetchesFileSpansInParallel(t *testing.T) {
	e := newPrefetchEnv(t)
	f, _ := newFetcher(t, t.TempDir(), Options{})
	ls := openLayers(t, f, e.a)
	x := e.a.Layers[1].Spans
	demand := spanRange(x, 3, 3)
	e.proxy.setHold(func(rng string) bool { return rng != demand })
	r := ls.ReaderAt(1).(FileReaderAt)
	fileEnd := x.Spans[20].UOff
	if _, err := r.ReadAtFile(t.Context(), make([]byte, 1000), x.Spans[3].UOff, fileEnd); err != nil {
		t.Fatal(err)
	}
	// Six go at once (the slots background fetches may hold), the
	// others wait for them.
	e.proxy.waitFor(t, "read-aheads in flight", func(p *holdProxy) bool { return p.held == 6 })
	e.proxy.release()
	e.proxy.waitFor(t, "read-aheads done", func(p *holdProxy) bool { return len(p.ends) == 9 && p.inFlight == 0 })
	for deadline := time.Now().Add(10 * time.Second); ls.Stats().ReadAheads != readAheadSpans; {
		if time.Now().After(deadline) {
			t.Fatalf("stats %+v, want %d read-aheads", ls.Stats(), readAheadSpans)
		}
		time.Sleep(5 * time.Millisecond)
	}
	starts, _, maxIn := e.proxy.log()
	var want []string
	for i := 3; i <= 3+readAheadSpans; i++ {
		want = append(want, spanRange(x, i, i))
	}
	slices.Sort(starts)
	slices.Sort(want)
	if !slices.Equal(starts, want) || maxIn < 6 {
		t.Fatalf("requests %v (%d at most in flight), want %v", starts, maxIn, want)
	}
	// The reader going on finds them cached; the window moves on with it.
	e.proxy.reset()
	for i := 4; i <= 3+readAheadSpans; i++ {
		if _, err := r.ReadAtFile(t.Context(), make([]byte, 1000), x.Spans[i].UOff, fileEnd); err != nil {
			t.Fatal(err)
		}
	}
	if got := ls.(Recorder).Touches(); len(got) != 1+readAheadSpans || got[0].SpanRef != (SpanRef{1, 3}) {
		t.Fatalf("touches %v", got)
	}
	e.proxy.waitFor(t, "the window moving on", func(p *holdProxy) bool { return len(p.ends) > 0 && p.inFlight == 0 })
	if st := ls.Stats(); st.CacheMisses != 1 {
		t.Fatalf("stats %+v: reads behind the read-ahead missed", st)
	}
}
