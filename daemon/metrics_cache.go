package daemon

import (
	"github.com/clipd/clipd/cache"
	"github.com/prometheus/client_golang/prometheus"
)

// collectHostMetrics adds the host's figures: reads, hits, misses and
// bytes of every mount, ended ones included (so the counters never go
// down), and the shared cache's size, budget and evictions (read from the
// store's ledger, which every process sharing it keeps up to date). The
// mounts' figures come from the Mounter's totals, which the scrape's
// per-mount calls have just refreshed.
func (s *Server) collectHostMetrics(ch chan<- prometheus.Metric) {
	host := s.mounter.HostStats()
	cfg := s.config()
	used, evictions, err := cache.ReadUsage(cfg.Cache.Dir)
	if err != nil {
		s.log.Debug("metrics: cache usage", "err", err)
	}
	for _, m := range []struct {
		name, help string
		kind       prometheus.ValueType
		v          int64
	}{
		{"clipd_read_errors_total", "Reads answered with an error (EIO), all mounts.", prometheus.CounterValue, host.ReadErrors},
		{"clipd_cache_hits_total", "Reads served from the cache alone, all mounts.", prometheus.CounterValue, host.CacheHits},
		{"clipd_cache_misses_total", "Span reads that needed a fetch, all mounts.", prometheus.CounterValue, host.CacheMisses},
		{"clipd_cache_read_bytes_total", "Bytes read from the cache, all mounts.", prometheus.CounterValue, host.BytesFromCache},
		{"clipd_registry_fetched_bytes_total", "Bytes received from registries, all mounts.", prometheus.CounterValue, host.BytesFetched},
		{"clipd_cache_evictions_total", "Cache entries evicted, by any process sharing the cache.", prometheus.CounterValue, evictions},
		{"clipd_cache_size_bytes", "Bytes held by the cache.", prometheus.GaugeValue, used},
		{"clipd_cache_max_size_bytes", "Budget of the cache (cache.max_size).", prometheus.GaugeValue, int64(cfg.Cache.MaxSize)},
		{"clipd_cache_min_free_bytes", "Free space kept on the cache's file system (cache.min_free).", prometheus.GaugeValue, int64(cfg.Cache.MinFree)},
	} {
		ch <- prometheus.MustNewConstMetric(prometheus.NewDesc(m.name, m.help, nil, nil), m.kind, float64(m.v))
	}
}
