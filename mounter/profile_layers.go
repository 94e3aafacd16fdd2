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
	r, ok := l.(fetcher.Recorder)
	if !ok {
		return nil, false
	}
	r.StopRecording()
	ts := r.Touches()
	out := make([]profile.Touch, len(ts))
	for i, t := range ts {
		out[i] = profile.Touch{Ref: profile.Ref{Layer: t.Layer, Span: t.Span}, At: t.At}
	}
	return out, true
}

// replayerOf returns l's Replay (fetcher.Replayer) taking a profile plan;
// ok false when l cannot replay.
func replayerOf(l fetcher.Layers) (_ func(context.Context, []profile.Ref) (fetcher.ReplayEnd, error), ok bool) {
	p, ok := l.(fetcher.Replayer)
	if !ok {
		return nil, false
	}
	return func(ctx context.Context, plan []profile.Ref) (fetcher.ReplayEnd, error) {
		refs := make([]fetcher.SpanRef, len(plan))
		for i, r := range plan {
			refs[i] = fetcher.SpanRef{Layer: r.Layer, Span: r.Span}
		}
		return p.Replay(ctx, refs)
	}, true
}
