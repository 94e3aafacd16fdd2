package mounter

import (
	"context"
	"log/slog"
	"time"

	"github.com/clipd/clipd/fetcher"
	"github.com/clipd/clipd/index"
)

// prefetch reads every span of every layer through the mount's own layer
// readers, so that they land in the cache before the workload asks for
// them ("prefetch": true). It runs one span at a time: demand reads take
// the fetcher's other slots first. It stops when ctx ends or the layers are
// closed (the mount went away); a failed span is left to demand reads.
func prefetch(ctx context.Context, a *index.Archive, layers fetcher.Layers, log *slog.Logger) {
	start := time.Now()
	var spans int
	for i, l := range a.Layers {
		r := layers.ReaderAt(i)
		if l.Spans == nil {
			// No index in the file (written by clip): the first read
			// streams the layer whole, which caches it all.
			if _, err := r.ReadAt(make([]byte, 1), 0); err != nil && ctx.Err() == nil {
				log.Debug("prefetch", "layer", l.Digest, "err", err)
			}
			continue
		}
		var buf []byte
		for _, s := range l.Spans.Spans {
			if ctx.Err() != nil {
				return
			}
			if int64(cap(buf)) < s.USize {
				buf = make([]byte, s.USize)
			}
			if _, err := r.ReadAt(buf[:s.USize], s.UOff); err != nil {
				if ctx.Err() != nil {
					return
				}
				log.Debug("prefetch", "layer", l.Digest, "offset", s.UOff, "err", err)
				continue
			}
			spans++
		}
	}
	log.Info("prefetched image", "archive", a.Path, "spans", spans, "duration", time.Since(start).Round(time.Millisecond))
}
