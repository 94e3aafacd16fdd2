package fetcher

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
)

// Replayer is implemented by the Layers OpenLayers returns: the replay of a
// prefetch profile, started and stopped by what the workload reads.
type Replayer interface {
	// Replay prefetches plan (Prefetch) once the workload shows it is
	// the one the plan was recorded from, and stops when it shows it is
	// not:
	//
	//   - it starts at the first demand read (hit or miss) of a span of
	//     the plan, from that span on in plan order, the spans before it
	//     after the rest: a workload that touches no span of the plan
	//     never makes a request for it;
	//   - once started, it is cancelled when the workload's first touches
	//     leave the plan (diverged): see divergeWindow.
	//
	// It returns when the prefetch ends, is cancelled, or ctx ends or the
	// layers are closed before the workload touched the plan
	// (ReplayWaiting). One Replay at a time per Layers.
	Replay(ctx context.Context, plan []SpanRef) (ReplayEnd, error)
}

var _ Replayer = (*layerSet)(nil)

// ReplayEnd says how a Replay ended.
type ReplayEnd int

const (
	// ReplayWaiting: no demand read touched a span of the plan; nothing
	// was fetched.
	ReplayWaiting ReplayEnd = iota
	// ReplayRan: the prefetch ran to its end (or ctx's, or the
	// layers'); the error says which.
	ReplayRan
	// ReplayDiverged: the workload left the plan, the rest of the
	// prefetch was cancelled (counted in Stats.PrefetchCancelled).
	ReplayDiverged
)

func (e ReplayEnd) String() string {
	switch e {
	case ReplayWaiting:
		return "waiting"
	case ReplayRan:
		return "ran"
	case ReplayDiverged:
		return "diverged"
	}
	return fmt.Sprintf("ReplayEnd(%d)", int(e))
}

// A replay is cancelled when, among the last divergeWindow first touches of
// the workload, at least divergeOut are of spans outside the plan and
// fewer than a third as many are in it.
//
// Why these: a profile is the union of recordings of the workload, so a
// run of that workload touches spans of the plan nearly always; what it
// touches outside are the few spans its recordings missed (another order of
// threads, reads after the recording window), scattered among many in the
// plan, never 8 of 16 with at most 2 in. A foreign workload that shares a
// few spans with the plan (a shared library, a file of /etc) touches them
// among many of its own, and is caught 8 first touches after it starts
// reading its own: each of those is a demand read that missed (a round trip
// at least), during which the prefetch starts no request (gate.acquireIdle),
// so what the replay fetched by then is what it could start in the gaps
// between them. The window is short so that a matching workload that goes
// on past what was recorded (its profile ends) stops a replay that has
// nothing left to bring anyway, and long enough that a burst of a few
// unrecorded spans does not.
const (
	divergeWindow = 16
	divergeOut    = 8
)

// A replay is confirmed once the workload's first confirmIn first touches
// are all in the plan: from then on its requests stop yielding the link to
// demand reads (gate.acquireIdle), since what it fetches is what those reads
// will ask for next. Yielding is for a replay that may be foreign: a
// workload that shares a few spans with the plan touches spans of its own
// among its first few, and the replay keeps yielding until it diverges.
const confirmIn = 4

// confirmation is a replay's switch from yielding to not (replayConfirmed),
// carried by the context of its prefetch.
type confirmation struct{}

func replayConfirmed(ctx context.Context) bool {
	c, _ := ctx.Value(confirmation{}).(*atomic.Bool)
	return c != nil && c.Load()
}

// touchWindow keeps whether each of the last divergeWindow first touches
// was in the plan.
type touchWindow struct {
	in   [divergeWindow]bool
	n    int // touches seen, up to divergeWindow
	next int
}

func (w *touchWindow) add(in bool) {
	w.in[w.next] = in
	w.next = (w.next + 1) % divergeWindow
	w.n = min(w.n+1, divergeWindow)
}

func (w *touchWindow) inPlan() int {
	in := 0
	for i := range w.n {
		if w.in[i] {
			in++
		}
	}
	return in
}

func (w *touchWindow) diverged() bool {
	in := w.inPlan()
	out := w.n - in
	return out >= divergeOut && 3*in < out
}

// touchQueue hands first touches from the read path (recording.watch,
// which must not block) to the replay.
type touchQueue struct {
	mu    sync.Mutex
	refs  []SpanRef
	ready chan struct{} // one token: refs may hold something
}

func (q *touchQueue) push(r SpanRef) {
	q.mu.Lock()
	q.refs = append(q.refs, r)
	q.mu.Unlock()
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

func (q *touchQueue) take() []SpanRef {
	q.mu.Lock()
	defer q.mu.Unlock()
	refs := q.refs
	q.refs = nil
	return refs
}

// Replay implements Replayer.
func (s *layerSet) Replay(ctx context.Context, plan []SpanRef) (ReplayEnd, error) {
	pos := make(map[SpanRef]int, len(plan))
	for i, r := range plan {
		if _, ok := pos[r]; !ok {
			pos[r] = i
		}
	}
	// A workload whose very first touch is the plan's first span is taken
	// to be the one the plan was recorded from (the same program starting):
	// its requests for spans of the plan do not make the prefetch yield
	// (predicts), from that first read on. Any other workload's requests
	// all do until it confirms the plan (a foreign workload that shares a
	// few spans with it starts the replay in its middle).
	if len(plan) > 0 {
		first := map[SpanRef]int{plan[0]: 0}
		s.predict.Store(&first)
	}
	defer s.predict.Store(nil)
	q := &touchQueue{ready: make(chan struct{}, 1)}
	before := s.rec.setWatch(q.push)
	defer s.rec.setWatch(nil)
	var win touchWindow
	start := -1
	seen, lead := false, false
	// see takes the first touches in order; before the start, the first
	// one in the plan (while the window does not say the workload is
	// another) starts the replay from its place.
	see := func(r SpanRef) {
		if !seen {
			seen, lead = true, r == plan[0]
			if !lead {
				s.predict.Store(nil)
			}
		}
		i, in := pos[r]
		win.add(in)
		if start < 0 && in && !win.diverged() {
			start = i
		}
	}
	for _, t := range before {
		see(t.SpanRef)
	}
	for start < 0 {
		select {
		case <-ctx.Done():
			return ReplayWaiting, fmt.Errorf("replay: %w", ctx.Err())
		case <-s.ctx.Done():
			return ReplayWaiting, fmt.Errorf("replay: layers closed: %w", s.ctx.Err())
		case <-q.ready:
		}
		for _, r := range q.take() {
			see(r)
		}
	}
	order := append(append(make([]SpanRef, 0, len(plan)), plan[start:]...), plan[:start]...)
	if lead {
		s.predict.Store(&pos)
	}
	s.f.log.Debug("replay started", "first", order[0], "planned", len(plan), "predicts", lead)
	var confirmed atomic.Bool
	// touches counts first touches since the mount, in the plan or not;
	// outside says whether any was outside.
	touches, outside := win.n, win.n-win.inPlan() > 0
	confirm := func() {
		if !outside && touches >= confirmIn && !confirmed.Load() {
			confirmed.Store(true)
			s.f.log.Debug("replay confirmed", "touches", touches)
		}
	}
	confirm()
	pctx, cancel := context.WithCancel(context.WithValue(ctx, confirmation{}, &confirmed))
	defer cancel()
	s.replaying.Store(true)
	defer s.replaying.Store(false)
	done := make(chan error, 1)
	go func() { done <- s.Prefetch(pctx, order) }()
	for {
		select {
		case err := <-done:
			return ReplayRan, err
		case <-q.ready:
		}
		for _, r := range q.take() {
			_, in := pos[r]
			win.add(in)
			touches++
			outside = outside || !in
		}
		confirm()
		if win.diverged() {
			cancel()
			<-done
			s.stats.prefetchCancelled.Add(1)
			return ReplayDiverged, nil
		}
	}
}

// predicts reports whether the replay running now foresaw the workload's
// reads of spans lo..hi of layer n: they are all in its plan, and the
// workload's first read was the plan's first span (Replay). A prefetch
// that yields to the workload's requests does not yield to those
// (gate.acquire): it is fetching the spans the workload reads next.
func (s *layerSet) predicts(n, lo, hi int) bool {
	p := s.predict.Load()
	if p == nil {
		return false
	}
	for i := lo; i <= hi; i++ {
		if _, ok := (*p)[SpanRef{n, i}]; !ok {
			return false
		}
	}
	return true
}
