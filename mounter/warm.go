package mounter

import (
	"fmt"
	"log/slog"
	"runtime"
	"runtime/debug"
	"sync/atomic"

	"github.com/clipd/clipd/cache"
)

// SpareHeap is the heap a spare serving process touches while it waits
// for a request (WarmSpare): about what decoding debian-python's index
// allocates (6,600 files; a 100,000-file index needs more, and faults the
// rest in as before). In a fresh process decoding that index took 11-20 ms
// after 4 MiB, 7-9 ms after 8 MiB and 6-7 ms after 16 MiB; with 16 MiB a
// 100,000-file mount peaked 4-5 MiB higher (pages touched and not reused).
const SpareHeap = 8 << 20

// warmChunk is the unit of the heap warm-up: a request that comes during
// it waits for at most one chunk.
const warmChunk = 256 << 10

// Warm is the start-up work a spare serving process does while it waits
// for a request (WarmSpare); ServeMount takes what is done (Finish).
type Warm struct {
	stop atomic.Bool
	// cacheDone is closed once store (or cacheErr) is set; heapDone once
	// the heap warm-up has ended and let its bytes go.
	cacheDone, heapDone chan struct{}
	store               *cache.Store
	cacheErr            error
	// gcPercent is the collector's setting before WarmSpare turned it off.
	gcPercent int
}

// WarmSpare starts, in a spare serving process, the start-up work that
// does not depend on the request, in the background: the spare tells the
// daemon it is ready at once, and a request that comes early waits only
// for what it needs (Finish). The work:
//
//   - open the cache (cfg's): the open walks the whole cache directory to
//     size it, which grows with the cache;
//   - turn the collector off (ServeMount does for the start-up anyway,
//     and a spare allocates nothing while it waits) and touch heap bytes
//     of heap pages, then let them go. On the test machine a fresh process
//     spent 30-40 ms decoding debian-python's index, 7-11 ms once its heap
//     had been touched: the first use of each page (a fault, the kernel
//     zeroing it) costs more than the decode writing it. With the
//     collector off nothing gives the freed pages back to the system (the
//     scavenger's goal follows GOGC; GOMEMLIMIT still bounds it), so the
//     decode reuses them. They stay resident while the spare waits, and
//     count in the serving process's peak only if its mount needs less.
func WarmSpare(cfg Config, heap int, log *slog.Logger) *Warm {
	w := &Warm{cacheDone: make(chan struct{}), heapDone: make(chan struct{}),
		gcPercent: debug.SetGCPercent(-1)}
	go func() {
		defer close(w.cacheDone)
		w.store, w.cacheErr = cache.OpenWith(cfg.CacheDir, cache.Options{MaxSize: cfg.CacheMaxSize, MinFree: cfg.CacheMinFree, Logger: log})
		if w.cacheErr != nil {
			w.cacheErr = fmt.Errorf("open cache %s: %w", cfg.CacheDir, w.cacheErr)
		}
	}()
	go func() {
		defer close(w.heapDone)
		var chunks [][]byte
		for n := 0; n < heap && !w.stop.Load(); n += warmChunk {
			b := make([]byte, warmChunk)
			for i := 0; i < len(b); i += 4096 {
				b[i] = 1
			}
			chunks = append(chunks, b)
		}
		if len(chunks) == 0 {
			return
		}
		runtime.KeepAlive(chunks)
		chunks = nil
		// Frees the touched bytes for the decode; an explicit collection
		// runs with the collector off.
		runtime.GC()
	}()
	return w
}

// Finish ends the warm-up: it stops touching the heap, waits for the
// cache to be open and returns it.
func (w *Warm) Finish() (*cache.Store, error) {
	w.stop.Store(true)
	<-w.heapDone
	<-w.cacheDone
	return w.store, w.cacheErr
}
