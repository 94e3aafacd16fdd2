package fetcher

import "sync"

// hostStats sums the figures of every layer set a Fetcher opened: the live
// ones, plus what closed ones did, so that the totals never go down.
type hostStats struct {
	mu      sync.Mutex
	live    map[*layerSet]struct{}
	retired Stats
}

func (h *hostStats) track(s *layerSet) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.live == nil {
		h.live = map[*layerSet]struct{}{}
	}
	h.live[s] = struct{}{}
}

func (h *hostStats) untrack(s *layerSet) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.live[s]; !ok {
		return
	}
	delete(h.live, s)
	h.retired = h.retired.Add(s.stats.snapshot())
}

// Stats returns the figures of every mount this Fetcher served.
func (f *Fetcher) Stats() Stats {
	f.host.mu.Lock()
	defer f.host.mu.Unlock()
	st := f.host.retired
	for s := range f.host.live {
		st = st.Add(s.stats.snapshot())
	}
	return st
}
