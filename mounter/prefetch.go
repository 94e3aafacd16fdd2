package mounter

import (
	"context"
	"log/slog"
	"time"

	"github.com/clipd/clipd/fetcher"
	"github.com/clipd/clipd/index"
)

// prefetch fetches every span of every layer into the cache before the
// workload asks for them ("prefetch": true). Layers with a decompression
// index go through the layers' Prefetcher: its requests are background
// fetches, which yield the link to demand reads and are not recorded as
// the workload's touches (a profile recorded meanwhile stays the
// workload's). A layer without an index in the file (written by clip) is
// read once instead: the first read streams the layer whole, which caches
// it all. It stops when ctx ends or the layers are closed (the mount went
// away); a failed span is left to demand reads.
func prefetch(ctx context.Context, a *index.Archive, layers fetcher.Layers, log *slog.Logger) {
	start := time.Now()
	var plan []fetcher.SpanRef
	for i, l := range a.Layers {
		if l.Spans == nil {
			if _, err := layers.ReaderAt(i).ReadAt(make([]byte, 1), 0); err != nil && ctx.Err() == nil {
				log.Debug("prefetch", "layer", l.Digest, "err", err)
			}
			continue
		}
		for s := range l.Spans.Spans {
			plan = append(plan, fetcher.SpanRef{Layer: i, Span: s})
		}
	}
	if p, ok := layers.(fetcher.Prefetcher); ok && len(plan) > 0 {
		if err := p.Prefetch(ctx, plan); err != nil {
			if ctx.Err() != nil {
				return
			}
			log.Warn("prefetch of the image incomplete; the rest is fetched on demand", "archive", a.Path, "err", err)
		}
	}
	log.Info("prefetched image", "archive", a.Path, "spans", len(plan), "duration", time.Since(start).Round(time.Millisecond))
}
