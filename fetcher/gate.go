package fetcher

import (
	"context"
	"sync"
)

// gate hands out the Fetcher's fetch slots (Options.MaxFetches registry
// requests in flight) by priority. Demand reads (a process blocked in a
// FUSE read) always go first: a slot that frees goes to the oldest waiting
// demand read before any background fetch (prefetch, read-ahead), and
// background fetches never hold more than lowMax slots, so that a demand
// read arriving while a long prefetch runs finds a slot free, or waits at
// most for one request to end, never for the prefetch's queue.
type gate struct {
	mu      sync.Mutex
	size    int // slots
	lowMax  int // slots background fetches may hold at once
	used    int
	lowUsed int
	high    []*gateWaiter // demand reads waiting, oldest first
	low     []*gateWaiter // background fetches waiting, oldest first
	// demand counts the requests of the workload holding or waiting for
	// a slot (demand reads, and read-aheads: readingAhead); idle is closed
	// when it drops to 0 (a fresh one is made when it rises from 0):
	// prefetches start no request while it is not (acquireIdle).
	demand int
	idle   chan struct{}
}

type gateWaiter struct {
	ch      chan struct{} // closed when granted
	low     bool
	granted bool
}

func newGate(size int) *gate {
	// A quarter of the slots (at least one) stays for demand reads; with a
	// single slot both share it, demand still first in line.
	lowMax := max(1, size-max(1, size/4))
	return &gate{size: size, lowMax: lowMax}
}

// acquire takes a slot, waiting behind every demand read already waiting
// (and, when low, behind background fetches waiting too); the returned func
// gives it back.
//
// A demand read's request counts as the workload's (demand, which
// prefetches yield to: acquireIdle) unless its context says a replay
// running now predicted it (withPredicted): a prefetch yields the link to
// what it did not foresee, not to the reads it is there to serve.
func (g *gate) acquire(ctx context.Context, low bool) (func(), error) {
	counted := !low && !predicted(ctx)
	g.mu.Lock()
	if counted {
		g.demandBeginLocked()
	}
	if len(g.high) == 0 && (!low || len(g.low) == 0) && g.free(low) {
		g.take(low)
		g.mu.Unlock()
		return g.releaser(low, counted), nil
	}
	w := &gateWaiter{ch: make(chan struct{}), low: low}
	if low {
		g.low = append(g.low, w)
	} else {
		g.high = append(g.high, w)
	}
	g.mu.Unlock()
	select {
	case <-w.ch:
		return g.releaser(low, counted), nil
	case <-ctx.Done():
		g.mu.Lock()
		if w.granted {
			// Granted as ctx ended: hand the slot on.
			g.putLocked(low)
		} else {
			g.removeLocked(w)
		}
		if counted {
			g.demandEndLocked()
		}
		g.mu.Unlock()
		return nil, ctx.Err()
	}
}

func (g *gate) free(low bool) bool {
	return g.used < g.size && (!low || g.lowUsed < g.lowMax)
}

func (g *gate) take(low bool) {
	g.used++
	if low {
		g.lowUsed++
	}
}

func (g *gate) releaser(low, counted bool) func() {
	return sync.OnceFunc(func() {
		g.mu.Lock()
		g.putLocked(low)
		if counted {
			g.demandEndLocked()
		}
		g.mu.Unlock()
	})
}

func (g *gate) demandBeginLocked() {
	if g.demand == 0 {
		g.idle = make(chan struct{})
	}
	g.demand++
}

func (g *gate) demandEndLocked() {
	g.demand--
	if g.demand == 0 {
		close(g.idle)
	}
}

// readingAhead counts a read-ahead as the workload's until the returned
// func is called: a read-ahead is a background fetch for the gate (demand
// reads go first), but it fetches what a reader going on through a file is
// about to read, so a prefetch yields the link to it as to a demand read.
func (g *gate) readingAhead() func() {
	g.mu.Lock()
	g.demandBeginLocked()
	g.mu.Unlock()
	return sync.OnceFunc(func() {
		g.mu.Lock()
		g.demandEndLocked()
		g.mu.Unlock()
	})
}

// acquireIdle takes a background slot at a moment no request of the
// workload (demand read or read-ahead) that the running replay did not
// predict is in flight or waiting for a slot, waiting for one. A prefetch request started
// beside a demand read shares the link with it and delays it by its own
// bytes (the gate orders slots, not bandwidth): a prefetch yields the link
// to demand, and only its requests already in flight go on. A slot granted
// while demand came meanwhile is handed back.
func (g *gate) acquireIdle(ctx context.Context) (func(), error) {
	for {
		g.mu.Lock()
		busy, idle := g.demand > 0, g.idle
		g.mu.Unlock()
		if busy {
			select {
			case <-idle:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			continue
		}
		release, err := g.acquire(ctx, true)
		if err != nil {
			return nil, err
		}
		g.mu.Lock()
		busy = g.demand > 0
		g.mu.Unlock()
		if !busy {
			return release, nil
		}
		release()
	}
}

// putLocked gives a slot back and grants the waiters that can go now:
// demand reads first.
func (g *gate) putLocked(low bool) {
	g.used--
	if low {
		g.lowUsed--
	}
	for {
		var w *gateWaiter
		switch {
		case len(g.high) > 0 && g.free(false):
			w, g.high = g.high[0], g.high[1:]
		case len(g.low) > 0 && g.free(true):
			w, g.low = g.low[0], g.low[1:]
		default:
			return
		}
		g.take(w.low)
		w.granted = true
		close(w.ch)
	}
}

func (g *gate) removeLocked(w *gateWaiter) {
	q := &g.high
	if w.low {
		q = &g.low
	}
	for i, o := range *q {
		if o == w {
			*q = append((*q)[:i:i], (*q)[i+1:]...)
			return
		}
	}
}

// heldSlot marks the context of a background fetch that took its slot
// from the gate before locking its spans in the store: the requests made
// under it use that slot rather than queue for another (a fetch that holds
// store locks must not then wait behind demand reads that may be waiting
// for those very locks).
type heldSlot struct{}

func withHeldSlot(ctx context.Context) context.Context {
	return context.WithValue(ctx, heldSlot{}, true)
}

func slotHeld(ctx context.Context) bool {
	held, _ := ctx.Value(heldSlot{}).(bool)
	return held
}

// predictedFetch marks the context of a fetch of spans that the replay
// running now has in its plan (layerSet.predicts).
type predictedFetch struct{}

func withPredicted(ctx context.Context) context.Context {
	return context.WithValue(ctx, predictedFetch{}, true)
}

func predicted(ctx context.Context) bool {
	p, _ := ctx.Value(predictedFetch{}).(bool)
	return p
}
