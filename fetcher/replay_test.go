package fetcher

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type replayResult struct {
	end ReplayEnd
	err error
}

func startReplay(ctx context.Context, ls Layers, plan []SpanRef) <-chan replayResult {
	done := make(chan replayResult, 1)
	go func() {
		end, err := ls.(Replayer).Replay(ctx, plan)
		done <- replayResult{end, err}
	}()
	return done
}

func waitReplay(t *testing.T, done <-chan replayResult) replayResult {
	t.Helper()
	select {
	case r := <-done:
		return r
	case <-time.After(time.Minute):
		t.Fatal("Replay did not return")
	}
	return replayResult{}
}

// A workload that touches no span of the plan never starts the replay: the
// only requests are its own.
func TestReplayWaitsForATouchOfThePlan(t *testing.T) {
	e := newPrefetchEnv(t)
	f, _ := newFetcher(t, t.TempDir(), Options{})
	ls := openLayers(t, f, e.a)
	ctx, cancel := context.WithCancel(t.Context())
	done := startReplay(ctx, ls, refs(0, 10, 11, 12, 13, 20, 21))
	x := e.a.Layers[1].Spans
	var want []string
	for _, i := range []int{1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21} {
		e.readSpan(t, ls, 1, i)
		want = append(want, spanRange(x, i, i))
	}
	e.readSpan(t, ls, 0, 9) // beside the plan, not in it
	want = append(want, spanRange(e.a.Layers[0].Spans, 9, 9))
	cancel()
	r := waitReplay(t, done)
	if r.end != ReplayWaiting || !errors.Is(r.err, context.Canceled) {
		t.Fatalf("Replay: %v, %v; want waiting, canceled", r.end, r.err)
	}
	if starts, _, _ := e.proxy.log(); !slices.Equal(starts, want) {
		t.Fatalf("requests %v, want the reads' own %v", starts, want)
	}
	if st := ls.Stats(); st.PrefetchPlanned != 0 || st.PrefetchFetched != 0 || st.PrefetchCancelled != 0 {
		t.Fatalf("stats %+v, want no prefetch", st)
	}
}

// The workload's first touch of a span of the plan starts the replay from
// that span on, in plan order, the spans before it after; every span of
// the plan is fetched. A touch made before Replay was called counts.
func TestReplayStartsAtFirstTouch(t *testing.T) {
	e := newPrefetchEnv(t)
	f, store := newFetcher(t, t.TempDir(), Options{PrefetchParallel: 1})
	ls := openLayers(t, f, e.a)
	x := e.a.Layers[0].Spans
	e.readSpan(t, ls, 1, 0) // not in the plan
	e.readSpan(t, ls, 0, 8)
	e.proxy.reset()
	plan := refs(0, 2, 4, 6, 8, 10, 12)
	r := waitReplay(t, startReplay(t.Context(), ls, plan))
	if r.end != ReplayRan || r.err != nil {
		t.Fatalf("Replay: %v, %v; want ran, nil", r.end, r.err)
	}
	starts, _, _ := e.proxy.log()
	var want []string
	for _, i := range []int{10, 12, 2, 4, 6} {
		want = append(want, spanRange(x, i, i))
	}
	if !slices.Equal(starts, want) {
		t.Fatalf("requests %v, want %v", starts, want)
	}
	l := ls.(*layerSet).readers[0]
	for _, ref := range plan {
		if !store.Has(l.spanKey(x, ref.Span)) {
			t.Fatalf("span %d of the plan not cached", ref.Span)
		}
	}
	if st := ls.Stats(); st.PrefetchFetched != 5 || st.PrefetchCancelled != 0 {
		t.Fatalf("stats %+v, want 5 fetched, none cancelled", st)
	}
}

// A workload that touches one span of the plan, then reads spans of its
// own, has the replay cancelled once divergeOut of them came, with what it
// had in flight; nothing more is fetched for it.
func TestReplayCancelledOnDivergence(t *testing.T) {
	e := newPrefetchEnv(t)
	f, _ := newFetcher(t, t.TempDir(), Options{PrefetchParallel: 2})
	ls := openLayers(t, f, e.a)
	x0 := e.a.Layers[0].Spans
	var planned []int
	for i := 0; i < len(x0.Spans); i += 2 {
		planned = append(planned, i)
	}
	prefetchRanges := map[string]bool{}
	for _, i := range planned[1:] {
		prefetchRanges[spanRange(x0, i, i)] = true
	}
	// The prefetch's requests are held at the registry: the replay
	// cannot have finished before the workload shows it is another.
	e.proxy.setHold(func(rng string) bool { return prefetchRanges[rng] })
	done := startReplay(t.Context(), ls, refs(0, planned...))
	e.readSpan(t, ls, 0, 0)
	e.proxy.waitFor(t, "the replay's requests", func(p *holdProxy) bool { return p.held == 2 })
	for i := range divergeOut {
		e.readSpan(t, ls, 1, 2*i)
	}
	r := waitReplay(t, done)
	if r.end != ReplayDiverged || r.err != nil {
		t.Fatalf("Replay: %v, %v; want diverged", r.end, r.err)
	}
	e.proxy.waitFor(t, "the held requests to end", func(p *holdProxy) bool { return p.inFlight == 0 })
	starts, _, _ := e.proxy.log()
	n := 0
	for _, s := range starts {
		if prefetchRanges[s] {
			n++
		}
	}
	if st := ls.Stats(); n != 2 || st.PrefetchCancelled != 1 || st.PrefetchFetched > 2 {
		t.Fatalf("%d prefetch requests, stats %+v; want the 2 in flight at most, 1 cancelled", n, st)
	}
}

// A touch or two outside the plan among touches of it does not cancel the
// replay of a matching workload.
func TestTouchWindow(t *testing.T) {
	var w touchWindow
	for i := range 40 {
		w.add(i%4 != 0) // a quarter outside
		if w.diverged() {
			t.Fatalf("diverged after %d touches, a quarter outside the plan", i+1)
		}
	}
	w = touchWindow{}
	w.add(true)
	for i := range divergeOut {
		if w.diverged() {
			t.Fatalf("diverged after %d touches outside", i)
		}
		w.add(false)
	}
	if !w.diverged() {
		t.Fatalf("not diverged after %d touches outside, 1 in", divergeOut)
	}
}

// While a demand request is in flight, a prefetch starts no request; it
// starts once the demand request ended.
func TestPrefetchYieldsToDemand(t *testing.T) {
	e := newPrefetchEnv(t)
	f, _ := newFetcher(t, t.TempDir(), Options{PrefetchParallel: 2})
	ls := openLayers(t, f, e.a)
	demand := spanRange(e.a.Layers[0].Spans, 31, 31)
	read := e.holdDemandRead(t, ls, 0, 31)
	done := make(chan error, 1)
	go func() { done <- ls.(Prefetcher).Prefetch(t.Context(), refs(1, 0, 2, 4, 6)) }()
	// Both prefetch workers wait for the demand request to end, with
	// fetch slots free.
	for deadline := time.Now().Add(time.Minute); waitingIdle() < 2; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("prefetch workers not waiting for the demand request")
		}
	}
	if starts, _, _ := e.proxy.log(); !slices.Equal(starts, []string{demand}) {
		t.Fatalf("requests %v while the demand request is in flight, want %s alone", starts, demand)
	}
	e.proxy.release()
	if err := <-read; err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if starts, _, _ := e.proxy.log(); len(starts) != 5 || starts[0] != demand {
		t.Fatalf("requests %v; want the demand read's, then 4 of the prefetch", starts)
	}
}

// waitingIdle counts the goroutines waiting in gate.acquireIdle for demand
// requests to end.
func waitingIdle() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "fetcher.(*gate).acquireIdle") && strings.Contains(g, "[select") {
			n++
		}
	}
	return n
}

// Read-aheads are the workload's too: while one is in flight, a prefetch
// starts no request.
func TestPrefetchYieldsToReadAhead(t *testing.T) {
	e := newPrefetchEnv(t)
	f, _ := newFetcher(t, t.TempDir(), Options{PrefetchParallel: 2})
	ls := openLayers(t, f, e.a)
	x := e.a.Layers[1].Spans
	demand := spanRange(x, 3, 3)
	e.proxy.setHold(func(rng string) bool { return rng != demand })
	r := ls.ReaderAt(1).(FileReaderAt)
	if _, err := r.ReadAtFile(t.Context(), make([]byte, 1000), x.Spans[3].UOff, x.Spans[6].UOff); err != nil {
		t.Fatal(err)
	}
	e.proxy.waitFor(t, "read-aheads in flight", func(p *holdProxy) bool { return p.held == 2 })
	done := make(chan error, 1)
	go func() { done <- ls.(Prefetcher).Prefetch(t.Context(), refs(0, 0, 2, 4, 6)) }()
	for deadline := time.Now().Add(time.Minute); waitingIdle() < 2; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("prefetch workers not waiting for the read-aheads")
		}
	}
	if starts, _, _ := e.proxy.log(); len(starts) != 3 {
		t.Fatalf("requests %v while read-aheads are in flight, want the read's and 2 read-aheads", starts)
	}
	e.proxy.release()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if starts, _, _ := e.proxy.log(); len(starts) != 7 {
		t.Fatalf("requests %v; want the read's, 2 read-aheads, then 4 of the prefetch", starts)
	}
}

// A prefetch of a confirmed replay does not yield: its requests start while
// a demand request is in flight (against TestPrefetchYieldsToDemand).
func TestConfirmedPrefetchDoesNotYield(t *testing.T) {
	e := newPrefetchEnv(t)
	f, _ := newFetcher(t, t.TempDir(), Options{PrefetchParallel: 2})
	ls := openLayers(t, f, e.a)
	read := e.holdDemandRead(t, ls, 0, 31)
	var confirmed atomic.Bool
	confirmed.Store(true)
	ctx := context.WithValue(t.Context(), confirmation{}, &confirmed)
	done := make(chan error, 1)
	go func() { done <- ls.(Prefetcher).Prefetch(ctx, refs(0, 0, 2, 4, 6)) }()
	e.proxy.waitFor(t, "4 prefetch requests beside the held demand read", func(p *holdProxy) bool { return len(p.starts) == 5 })
	e.proxy.release()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := <-read; err != nil {
		t.Fatal(err)
	}
}

// A replay is confirmed when its first confirmIn first touches are all in
// the plan, not when one of them is outside.
func TestReplayConfirmation(t *testing.T) {
	for _, c := range []struct {
		name    string
		touches []int
		want    bool
	}{
		{"all in the plan", []int{0, 2, 4, 6}, true},
		{"one outside", []int{1, 0, 2, 4, 6}, false},
		{"too few", []int{0, 2, 4}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newPrefetchEnv(t)
			var logs syncBuffer
			f, _ := newFetcher(t, t.TempDir(), Options{PrefetchParallel: 1,
				Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
			ls := openLayers(t, f, e.a)
			for _, i := range c.touches {
				e.readSpan(t, ls, 0, i)
			}
			// The rest of the plan is held: the replay cannot end before
			// it has seen the touches.
			x := e.a.Layers[0].Spans
			rest := map[string]bool{}
			for _, i := range []int{20, 22, 24} {
				rest[spanRange(x, i, i)] = true
			}
			e.proxy.setHold(func(rng string) bool { return rest[rng] })
			ctx, cancel := context.WithCancel(t.Context())
			done := startReplay(ctx, ls, refs(0, 0, 2, 4, 6, 20, 22, 24))
			e.proxy.waitFor(t, "a prefetch request", func(p *holdProxy) bool { return p.held == 1 })
			cancel()
			e.proxy.release()
			waitReplay(t, done)
			if got := strings.Contains(logs.String(), "replay confirmed"); got != c.want {
				t.Fatalf("confirmed %v, want %v; log:\n%s", got, c.want, logs.String())
			}
		})
	}
}

// syncBuffer is a bytes.Buffer a logger writes to from several goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// A request of the workload for a span of the running replay's plan does
// not make a prefetch yield (it is what the plan foresaw): the prefetch's
// requests start beside it (against TestPrefetchYieldsToDemand, where the
// replay does not predict the demand read).
func TestPrefetchDoesNotYieldToPredictedRead(t *testing.T) {
	e := newPrefetchEnv(t)
	f, _ := newFetcher(t, t.TempDir(), Options{PrefetchParallel: 2})
	ls := openLayers(t, f, e.a)
	plan := map[SpanRef]int{{0, 31}: 0}
	ls.(*layerSet).predict.Store(&plan)
	read := e.holdDemandRead(t, ls, 0, 31)
	done := make(chan error, 1)
	go func() { done <- ls.(Prefetcher).Prefetch(t.Context(), refs(1, 0, 2, 4, 6)) }()
	e.proxy.waitFor(t, "the prefetch requests beside the held read", func(p *holdProxy) bool { return len(p.ends) == 4 })
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	e.proxy.release()
	if err := <-read; err != nil {
		t.Fatal(err)
	}
}

// A waiting replay predicts the plan's first span; once a workload whose
// first read was that span started it, the whole plan; started by another
// first read, nothing (a foreign workload that shares spans with the plan
// is yielded to as before); nothing once it returned.
func TestReplayPredictsItsPlan(t *testing.T) {
	for _, c := range []struct {
		name  string
		first []int // spans of layer 0 read first
		want  bool  // whether the plan is predicted once started
	}{
		{"first read is the plan's first span", []int{3}, true},
		{"first read is another span of the plan", []int{9, 3}, false},
		{"first read is outside the plan", []int{20, 3}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newPrefetchEnv(t)
			f, _ := newFetcher(t, t.TempDir(), Options{})
			ls := openLayers(t, f, e.a)
			s := ls.(*layerSet)
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			// The prefetch of span 12 is held: the replay runs until
			// the test is done looking.
			held := spanRange(e.a.Layers[0].Spans, 12, 12)
			e.proxy.setHold(func(rng string) bool { return rng == held })
			done := startReplay(ctx, ls, refs(0, 3, 4, 9, 12))
			for deadline := time.Now().Add(time.Minute); !s.predicts(0, 3, 3); time.Sleep(time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("a waiting replay does not predict the plan's first span")
				}
			}
			if s.predicts(0, 4, 4) {
				t.Fatal("a waiting replay predicts more than the plan's first span")
			}
			for _, i := range c.first {
				e.readSpan(t, ls, 0, i)
			}
			for deadline := time.Now().Add(time.Minute); !s.replaying.Load(); time.Sleep(time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("the replay did not start")
				}
			}
			if got := s.predicts(0, 3, 4) && s.predicts(0, 9, 9) && s.predicts(0, 12, 12); got != c.want {
				t.Fatalf("the started replay predicts its plan: %v, want %v", got, c.want)
			}
			if s.predicts(0, 5, 5) {
				t.Fatal("the replay predicts a span outside its plan")
			}
			cancel()
			e.proxy.release()
			waitReplay(t, done)
			if s.predicts(0, 3, 3) {
				t.Fatal("a replay that returned still predicts")
			}
		})
	}
}

func TestPredicts(t *testing.T) {
	s := &layerSet{}
	if s.predicts(0, 1, 1) {
		t.Fatal("predicts with no replay running")
	}
	pos := map[SpanRef]int{{0, 1}: 0, {0, 2}: 1, {1, 3}: 2}
	s.predict.Store(&pos)
	for _, c := range []struct {
		n, lo, hi int
		want      bool
	}{{0, 1, 2, true}, {0, 1, 1, true}, {0, 1, 3, false}, {1, 3, 3, true}, {0, 3, 3, false}, {1, 2, 3, false}} {
		if got := s.predicts(c.n, c.lo, c.hi); got != c.want {
			t.Errorf("predicts(%d, %d, %d) = %v, want %v", c.n, c.lo, c.hi, got, c.want)
		}
	}
}

// While a replay fetches, a file's read-ahead leaves the spans of the plan
// to it (they come in the plan's order) and reads the others ahead.
func TestReadAheadLeavesPlanToReplay(t *testing.T) {
	e := newPrefetchEnv(t)
	f, _ := newFetcher(t, t.TempDir(), Options{PrefetchParallel: 1})
	ls := openLayers(t, f, e.a)
	s := ls.(*layerSet)
	x := e.a.Layers[1].Spans
	// The replay's one worker is held on span 12, before 4-5.
	e.proxy.setHold(func(rng string) bool { return rng == spanRange(x, 12, 12) })
	done := startReplay(t.Context(), ls, refs(1, 0, 12, 4, 5))
	e.readSpan(t, ls, 1, 0)
	e.proxy.waitFor(t, "the replay's request", func(p *holdProxy) bool { return p.held == 1 })
	if !s.replaying.Load() {
		t.Fatal("the replay is not fetching")
	}
	r := ls.ReaderAt(1).(FileReaderAt)
	if _, err := r.ReadAtFile(t.Context(), make([]byte, 1000), x.Spans[3].UOff, x.Spans[9].UOff); err != nil {
		t.Fatal(err)
	}
	e.proxy.waitFor(t, "read-aheads of 6, 7, 8", func(p *holdProxy) bool {
		n := 0
		for _, r := range p.ends {
			for _, i := range []int{6, 7, 8} {
				if r == spanRange(x, i, i) {
					n++
				}
			}
		}
		return n == 3
	})
	starts, _, _ := e.proxy.log()
	for _, i := range []int{4, 5} {
		if slices.Contains(starts, spanRange(x, i, i)) {
			t.Fatalf("requests %v: span %d of the plan was read ahead", starts, i)
		}
	}
	e.proxy.release()
	if r := waitReplay(t, done); r.end != ReplayRan || r.err != nil {
		t.Fatalf("Replay: %v, %v; want ran, nil", r.end, r.err)
	}
	if starts, _, _ := e.proxy.log(); !slices.Contains(starts, spanRange(x, 4, 5)) {
		t.Fatalf("requests %v: want the replay's for 4-5", starts)
	}
}
