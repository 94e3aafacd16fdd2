package daemon

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestStatsCallsBoundedOncePerScrape: /metrics and the listing ask every
// serving process for its figures once, concurrently, under one deadline,
// and the host totals reuse those figures. Ten wedged serving processes
// hold a scrape up for statsTimeout, not ten (or twenty) times that.
func TestStatsCallsBoundedOncePerScrape(t *testing.T) {
	h := newHarness(t)
	h.fm.wedged = true
	h.start()
	ctx := context.Background()
	const n = 10
	var mounts []*fakeMounted
	for i := range n {
		mi := h.mount(h.mp(fmt.Sprint("m", i)))
		mounts = append(mounts, h.fm.get(mi.Mountpoint))
	}
	// Sequential calls would take n*statsTimeout; twice that per scrape
	// before the fix.
	bound := statsTimeout + statsTimeout/2

	start := time.Now()
	m, err := h.client.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > bound {
		t.Errorf("scrape with %d wedged serving processes took %s, want at most %s", n, d, bound)
	}
	for i, fm := range mounts {
		if c := fm.statsCalls.Load(); c != 1 {
			t.Errorf("mount %d asked %d times for its figures in one scrape, want 1", i, c)
		}
	}
	// The host totals: 3 cache hits and 4096 fetched bytes per mount.
	for _, want := range []string{"\nclipd_cache_hits_total 30\n", "\nclipd_registry_fetched_bytes_total 40960\n"} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %q:\n%s", want, m)
		}
	}

	start = time.Now()
	list, err := h.client.List(ctx)
	if err != nil || len(list) != n || list[n-1].Stats.Reads != 7 {
		t.Fatalf("list: %+v %v", list, err)
	}
	if d := time.Since(start); d > bound {
		t.Errorf("listing with %d wedged serving processes took %s, want at most %s", n, d, bound)
	}
	for i, fm := range mounts {
		if c := fm.statsCalls.Load(); c != 2 {
			t.Errorf("mount %d asked %d times after a scrape and a listing, want 2", i, c)
		}
	}
}
