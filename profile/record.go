package profile

import (
	"crypto/sha256"
	"fmt"
	"io"
	"time"

	"github.com/clipd/clipd/index"
)

// Recording is what one mount's first seconds touched.
type Recording struct {
	Image  string
	Layers []Geometry // by index into index.Archive.Layers
	// Touches are in order of first touch, each span once.
	Touches []Touch
}

// Geometry is a layer of a Recording: its digest and the geometry of the
// decompression index its spans are numbered in (zero when the layer had
// none: its touches are dropped).
type Geometry struct {
	Digest    string
	SpanSize  int64
	SpanCount int
}

// Touch is a span first touched At after the mount.
type Touch struct {
	Ref
	At time.Duration
}

// NewRecording returns an empty recording of image with the geometry of
// a's layers.
func NewRecording(image string, a *index.Archive) Recording {
	r := Recording{Image: image, Layers: make([]Geometry, len(a.Layers))}
	for i, l := range a.Layers {
		r.Layers[i].Digest = l.Digest
		if l.Spans != nil {
			r.Layers[i].SpanSize, r.Layers[i].SpanCount = l.Spans.SpanSize, len(l.Spans.Spans)
		}
	}
	return r
}

// Merge folds r into p (a new profile when p is nil) and returns the
// result; p is not changed. A span's time becomes the mean over the
// recordings that touched it; spans no recording touched for
// keepRecordings recordings are dropped; a layer recorded against another
// geometry than p's (the image was indexed again) starts afresh.
func Merge(p *Profile, r Recording, now time.Time) (*Profile, error) {
	if !ValidImage(r.Image) {
		return nil, fmt.Errorf("merge recording: %w: image %q is not a sha256 digest", ErrInvalid, r.Image)
	}
	out := &Profile{Version: Version, Image: r.Image, Updated: now.UTC()}
	if p != nil {
		if p.Image != r.Image {
			return nil, fmt.Errorf("merge recording of %s into profile of %s: %w", r.Image, p.Image, ErrInvalid)
		}
		out.Recordings = p.Recordings
	}
	out.Recordings++
	n := out.Recordings

	type key struct {
		digest string
		size   int64
		count  int
	}
	layers := map[key]map[int]Span{}
	var order []key
	add := func(k key) map[int]Span {
		m := layers[k]
		if m == nil {
			m = map[int]Span{}
			layers[k] = m
			order = append(order, k)
		}
		return m
	}
	if p != nil {
		for _, l := range p.Layers {
			m := add(key{l.Digest, l.SpanSize, l.SpanCount})
			for _, s := range l.Spans {
				m[s.Index] = s
			}
		}
	}
	for _, t := range r.Touches {
		if t.Layer < 0 || t.Layer >= len(r.Layers) {
			continue
		}
		g := r.Layers[t.Layer]
		if g.SpanCount == 0 || t.Span < 0 || t.Span >= g.SpanCount || !ValidImage(g.Digest) {
			continue
		}
		k := key{g.Digest, g.SpanSize, g.SpanCount}
		// Another geometry of a layer already in p: the old spans name
		// other bytes; the new recording replaces them.
		for _, o := range order {
			if o.digest == k.digest && o != k && layers[o] != nil {
				delete(layers, o)
			}
		}
		m := add(k)
		ms := int64(t.At / time.Millisecond)
		s, ok := m[t.Span]
		if !ok {
			m[t.Span] = Span{Index: t.Span, At: ms, Seen: 1, Last: n}
			continue
		}
		if s.Last == n {
			continue // touched twice in one recording: the first counts
		}
		// A running mean, weighted at most keepRecordings deep, so that a
		// workload that changes moves the order within a few starts.
		w := int64(min(s.Seen, keepRecordings))
		s.At = (s.At*w + ms) / (w + 1)
		s.Seen++
		s.Last = n
		m[t.Span] = s
	}
	for _, k := range order {
		m := layers[k]
		if m == nil {
			continue
		}
		l := Layer{Digest: k.digest, SpanSize: k.size, SpanCount: k.count}
		for _, s := range m {
			if n-s.Last < keepRecordings {
				l.Spans = append(l.Spans, s)
			}
		}
		if len(l.Spans) == 0 {
			continue
		}
		sortSpans(l.Spans)
		out.Layers = append(out.Layers, l)
	}
	if err := out.check(); err != nil {
		return nil, err
	}
	return out, nil
}

// Key returns the profile key of a mounted archive: its manifest digest
// when the file names one, else the digest of the .clip file read from r.
func Key(a *index.Archive, r io.Reader) (string, error) {
	if ValidImage(a.Source.Manifest) {
		return a.Source.Manifest, nil
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.LimitReader(r, index.MaxIndexBytes+index.MaxExtensionBytes)); err != nil {
		return "", fmt.Errorf("digest of %s: %w", a.Path, err)
	}
	return fmt.Sprintf("sha256:%x", h.Sum(nil)), nil
}
