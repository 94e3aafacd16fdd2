package fetcher

import (
	"slices"
	"testing"

	"github.com/clipd/clipd/index"
	"github.com/clipd/clipd/zran"
)

// TestSpanKeyBindsTheSpan: the cache is shared by every mount and indexes
// come from archives peers write, so two indexes that claim the same layer
// digest share a span's entry only when they describe the same span.
func TestSpanKeyBindsTheSpan(t *testing.T) {
	const d = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	legit := &index.SpanIndex{Compression: zran.Gzip, SpanSize: 1 << 20, Spans: []zran.Span{
		{UOff: 0, USize: 1 << 20, COff: 0, CEnd: 4000, Digest: [32]byte{1}},
		{UOff: 1 << 20, USize: 1 << 20, COff: 4000, CEnd: 8000, Bits: 3, Window: []byte("window"), Digest: [32]byte{2}},
	}}
	clone := func(mod func(s *zran.Span)) *index.SpanIndex {
		x := *legit
		x.Spans = slices.Clone(legit.Spans)
		mod(&x.Spans[1])
		return &x
	}
	base := spanKey(d, legit, 1, "registry:r/a")
	if got := spanKey(d, clone(func(*zran.Span) {}), 1, "registry:other/b"); got != base {
		t.Errorf("the same verified span from another source: %s, want the shared %s", got, base)
	}
	for name, x := range map[string]*index.SpanIndex{
		"forged window": clone(func(s *zran.Span) { s.Window = []byte("forged") }),
		"forged digest": clone(func(s *zran.Span) { s.Digest = [32]byte{9} }),
		"forged bits":   clone(func(s *zran.Span) { s.Bits = 4 }),
		"forged offset": clone(func(s *zran.Span) { s.COff = 3999 }),
		"forged size":   clone(func(s *zran.Span) { s.USize = 1<<20 - 1 }),
		"member":        clone(func(s *zran.Span) { s.Member = true }),
	} {
		if got := spanKey(d, x, 1, "registry:r/a"); got == base {
			t.Errorf("%s: same key %s as the genuine span", name, got)
		}
	}
	// A window kept in the windows blob is bound by its digest.
	external := func(w byte) *index.SpanIndex {
		x := clone(func(s *zran.Span) { s.Window = nil })
		x.Refs = []index.WindowRef{{}, {Offset: 0, Length: 6, Digest: [32]byte{w}}}
		return x
	}
	if spanKey(d, external(1), 1, "registry:r/a") == spanKey(d, external(2), 1, "registry:r/a") {
		t.Error("forged external window: same key as the genuine span")
	}
	// Spans without a digest are taken as they came: their source counts.
	plain := &index.SpanIndex{Compression: zran.None, SpanSize: 1 << 20, Spans: []zran.Span{{UOff: 0, USize: 1 << 20, COff: 0, CEnd: 1 << 20}}}
	if spanKey(d, plain, 0, "registry:r/a") == spanKey(d, plain, 0, "registry:evil/a") {
		t.Error("an unverified span from another source shares the genuine one's entry")
	}
	// Stable: a copy of the same index gives the same key.
	again := *plain
	again.Spans = slices.Clone(plain.Spans)
	if spanKey(d, plain, 0, "registry:r/a") != spanKey(d, &again, 0, "registry:r/a") {
		t.Error("span keys are not stable")
	}
}
