package mounter

import (
	"context"

	"github.com/clipd/clipd/fetcher"
	"github.com/clipd/clipd/profile"
)

// layerTouches stops the recording of l and returns what demand reads
// touched first, in order, as profile touches; ok false when l does not
// record (fetcher.Recorder).
func layerTouches(l fetcher.Layers) (_ []profile.Touch, ok bool) {
	return nil, false // until fetcher.Recorder lands (fetchpar)
}

// prefetcherOf returns l's Prefetch (fetcher.Prefetcher) taking a profile
// plan; ok false when l cannot prefetch.
func prefetcherOf(l fetcher.Layers) (_ func(context.Context, []profile.Ref) error, ok bool) {
	return nil, false // until fetcher.Prefetcher lands (fetchpar)
}
