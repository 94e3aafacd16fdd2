package mounter

import (
	"fmt"
	"log/slog"
	"runtime"
	"runtime/debug"

	"github.com/clipd/clipd/cache"
)

// SpareHeap is the heap a spare serving process touches before it is
// handed a request (WarmSpare): about what decoding debian-python's index
// allocates (6,600 files; a 100,000-file index needs more, and faults the
// rest in as before).
const SpareHeap = 16 << 20

// Warm is what a spare serving process prepared before its request
// (WarmSpare), handed to ServeMount in ServeOptions.
type Warm struct {
	// gcPercent is the collector's setting before WarmSpare turned it off.
	gcPercent int
}

// WarmSpare does, in a spare serving process waiting for its request, the
// start-up work that does not depend on the request, so that the request
// pays only for what does:
//
//   - it opens the cache into cfg.Store: the open walks the whole cache
//     directory to size it, which grows with the cache;
//   - it turns the collector off (ServeMount does for the start-up anyway,
//     and a spare allocates nothing while it waits) and touches heap pages
//     of heap bytes, then frees them. On the test machine a fresh process
//     spent 30-40 ms decoding debian-python's index, 7-11 ms once its heap
//     had been touched: the first use of each page (a fault, the kernel
//     zeroing it) costs more than the decode writing it. With the
//     collector off nothing gives the freed pages back to the system (the
//     scavenger's goal follows GOGC; GOMEMLIMIT still bounds it), so the
//     decode reuses them. They stay resident while the spare waits, and
//     count in the serving process's peak only if its mount needs less.
//
// The returned Warm goes into ServeOptions.Warm.
func WarmSpare(cfg *Config, heap int, log *slog.Logger) (*Warm, error) {
	if cfg.Store == nil {
		store, err := cache.OpenWith(cfg.CacheDir, cache.Options{MaxSize: cfg.CacheMaxSize, MinFree: cfg.CacheMinFree, Logger: log})
		if err != nil {
			return nil, fmt.Errorf("open cache %s: %w", cfg.CacheDir, err)
		}
		cfg.Store = store
	}
	w := &Warm{gcPercent: debug.SetGCPercent(-1)}
	if heap > 0 {
		touchHeap(heap)
		// Frees the touched bytes for the decode; an explicit collection
		// runs with the collector off.
		runtime.GC()
	}
	return w, nil
}

// touchHeap allocates n bytes and writes one byte in each page, then lets
// them go.
func touchHeap(n int) {
	b := make([]byte, n)
	for i := 0; i < len(b); i += 4096 {
		b[i] = 1
	}
	runtime.KeepAlive(b)
}
