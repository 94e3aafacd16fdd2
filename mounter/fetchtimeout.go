package mounter

import (
	"time"

	"github.com/clipd/clipd/fetcher"
)

// effectiveFetchTimeout is the fetch timeout a serving process runs with:
// 0 (not configured) is the fetcher's default.
func effectiveFetchTimeout(d time.Duration) time.Duration {
	if d <= 0 {
		return fetcher.DefaultFetchTimeout
	}
	return d
}
