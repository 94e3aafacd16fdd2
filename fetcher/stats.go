package fetcher

import (
	"io"
	"sync/atomic"
)

// Stats count what one set of layer readers did.
type Stats struct {
	BytesFetched int64 // bytes received from the blob source
	Requests     int64 // blob requests made (each retry counts)
	CacheHits    int64 // reads served from the cache
	Reads        int64 // ReadAt calls
}

type counters struct {
	bytesFetched, requests, cacheHits, reads atomic.Int64
}

func (c *counters) snapshot() Stats {
	return Stats{
		BytesFetched: c.bytesFetched.Load(),
		Requests:     c.requests.Load(),
		CacheHits:    c.cacheHits.Load(),
		Reads:        c.reads.Load(),
	}
}

// countingReader adds what it reads to n.
type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	k, err := c.r.Read(p)
	c.n.Add(int64(k))
	return k, err
}
