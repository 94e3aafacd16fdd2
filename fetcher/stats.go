package fetcher

import "sync/atomic"

// Stats count what one set of layer readers (one mount) did, or, from
// Fetcher.Stats, every set of the process.
type Stats struct {
	BytesFetched   int64 // bytes received from the blob source
	Requests       int64 // blob requests made (each retry counts)
	CacheHits      int64 // span reads served from the cache
	CacheMisses    int64 // span reads that needed a fetch (or waited for one)
	BytesFromCache int64 // bytes read from the cache
	ReadAheads     int64 // spans fetched ahead of reads
	Reads          int64 // ReadAt calls
}

// Add returns the sum of s and o.
func (s Stats) Add(o Stats) Stats {
	return Stats{
		BytesFetched:   s.BytesFetched + o.BytesFetched,
		Requests:       s.Requests + o.Requests,
		CacheHits:      s.CacheHits + o.CacheHits,
		CacheMisses:    s.CacheMisses + o.CacheMisses,
		BytesFromCache: s.BytesFromCache + o.BytesFromCache,
		ReadAheads:     s.ReadAheads + o.ReadAheads,
		Reads:          s.Reads + o.Reads,
	}
}

type counters struct {
	bytesFetched, requests, cacheHits, cacheMisses, bytesFromCache, readAheads, reads atomic.Int64
}

func (c *counters) snapshot() Stats {
	return Stats{
		BytesFetched:   c.bytesFetched.Load(),
		Requests:       c.requests.Load(),
		CacheHits:      c.cacheHits.Load(),
		CacheMisses:    c.cacheMisses.Load(),
		BytesFromCache: c.bytesFromCache.Load(),
		ReadAheads:     c.readAheads.Load(),
		Reads:          c.reads.Load(),
	}
}
