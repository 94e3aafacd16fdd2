package daemon

import (
	"bufio"
	"fmt"

	"github.com/clipd/clipd/cache"
)

// writeCacheMetrics adds the host's cache figures: hits, misses and bytes of
// every mount, and the shared store's size, budget and evictions (read from
// the store's ledger, which every process sharing it keeps up to date).
// The mounts' figures come from the Mounter's totals, which the scrape's
// per-mount calls have just refreshed.
func (s *Server) writeCacheMetrics(b *bufio.Writer) {
	host := s.mounter.HostStats()
	cfg := s.config()
	used, evictions, err := cache.ReadUsage(cfg.Cache.Dir)
	if err != nil {
		s.log.Debug("metrics: cache usage", "err", err)
	}
	for _, m := range []struct {
		name, kind, help string
		v                int64
	}{
		{"clipd_cache_hits_total", "counter", "Span reads served from the cache, all mounts.", host.CacheHits},
		{"clipd_cache_misses_total", "counter", "Span reads that needed a fetch, all mounts.", host.CacheMisses},
		{"clipd_cache_bytes_from_cache_total", "counter", "Bytes read from the cache, all mounts.", host.BytesFromCache},
		{"clipd_cache_bytes_from_registry_total", "counter", "Bytes received from the registry, all mounts.", host.BytesFetched},
		{"clipd_cache_evictions_total", "counter", "Cache entries evicted, by any process sharing the cache.", evictions},
		{"clipd_cache_size_bytes", "gauge", "Bytes held by the cache.", used},
		{"clipd_cache_max_size_bytes", "gauge", "Budget of the cache (cache.max_size).", int64(cfg.Cache.MaxSize)},
		{"clipd_cache_min_free_bytes", "gauge", "Free space kept on the cache's file system (cache.min_free).", int64(cfg.Cache.MinFree)},
	} {
		fmt.Fprintf(b, "# HELP %s %s\n# TYPE %s %s\n%s %d\n", m.name, m.help, m.name, m.kind, m.name, m.v)
	}
}
