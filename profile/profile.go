package profile

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"time"

	"github.com/clipd/clipd/index"
)

// Version is the profile format this package writes and reads.
const Version = 1

// MediaType is the media type of a profile as a blob (its JSON).
const MediaType = "application/vnd.clipd.profile.v1+json"

// Bounds on a decoded profile: a profile comes from state_dir or from a
// registry, and decoding it must not cost more than a real one could.
const (
	MaxBytes  = 32 << 20 // encoded size
	MaxLayers = 1024     // layers of one image
	MaxSpans  = 1 << 20  // spans over all layers
)

// keepRecordings is how many recordings a span survives without being
// touched: a span that a single start touched (a log rotation, a one-off
// command) falls out of the profile after this many starts without it,
// while spans every start touches stay put. The order converges because a
// span's time is a mean over the recordings that touched it.
const keepRecordings = 4

// Profile is the prefetch profile of one image.
type Profile struct {
	Version int `json:"version"`
	// Image is the manifest digest of the image, or the digest of the
	// .clip file for an archive that names no manifest ("sha256:<hex>").
	Image string `json:"image"`
	// Recordings is how many recordings were merged into the profile.
	Recordings int       `json:"recordings"`
	Updated    time.Time `json:"updated"`
	Layers     []Layer   `json:"layers"`
}

// Layer is the part of a profile for one layer.
type Layer struct {
	Digest string `json:"digest"` // compressed digest of the layer
	// SpanSize and SpanCount are the geometry of the decompression index
	// the spans were recorded against.
	SpanSize  int64  `json:"span_size"`
	SpanCount int    `json:"span_count"`
	Spans     []Span `json:"spans"`
}

// Span is one span of a layer's decompression index that starts touched.
type Span struct {
	Index int `json:"index"`
	// At is the mean time after the mount at which the recordings that
	// touched the span first touched it, in milliseconds.
	At int64 `json:"at_ms"`
	// Seen is how many recordings touched the span; Last the number of the
	// recording (1-based, counting Profile.Recordings) that last did.
	Seen int `json:"seen"`
	Last int `json:"last"`
}

// Ref names span Span of layer Layer, an index into index.Archive.Layers.
type Ref struct{ Layer, Span int }

var digestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// ValidImage reports whether s is a valid profile image key.
func ValidImage(s string) bool { return digestRE.MatchString(s) }

// Decode reads a profile, bounded by MaxBytes, and checks that it is well
// formed (not that it fits an image: Verify does that).
func Decode(r io.Reader) (*Profile, error) {
	b, err := io.ReadAll(io.LimitReader(r, MaxBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read profile: %w", err)
	}
	if len(b) > MaxBytes {
		return nil, fmt.Errorf("profile larger than %d bytes", MaxBytes)
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	var p Profile
	if err := d.Decode(&p); err != nil {
		return nil, fmt.Errorf("decode profile: %w", err)
	}
	if err := p.check(); err != nil {
		return nil, err
	}
	return &p, nil
}

// Encode writes p as JSON.
func (p *Profile) Encode(w io.Writer) error {
	b, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("encode profile of %s: %w", p.Image, err)
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// check verifies what a profile must satisfy whatever image it is used
// with.
func (p *Profile) check() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("profile of %s: %w: %s", p.Image, ErrInvalid, fmt.Sprintf(format, a...))
	}
	if p.Version != Version {
		return fmt.Errorf("profile of %s: %w: version %d (this clipd reads %d)", p.Image, ErrInvalid, p.Version, Version)
	}
	if !ValidImage(p.Image) {
		return fmt.Errorf("profile: %w: image %q is not a sha256 digest", ErrInvalid, p.Image)
	}
	if len(p.Layers) > MaxLayers {
		return bad("%d layers (at most %d)", len(p.Layers), MaxLayers)
	}
	total := 0
	for _, l := range p.Layers {
		if !ValidImage(l.Digest) {
			return bad("layer digest %q is not a sha256 digest", l.Digest)
		}
		if l.SpanSize <= 0 || l.SpanCount <= 0 {
			return bad("layer %s: span size %d, span count %d", l.Digest, l.SpanSize, l.SpanCount)
		}
		total += len(l.Spans)
		if total > MaxSpans {
			return bad("more than %d spans", MaxSpans)
		}
		seen := make(map[int]bool, len(l.Spans))
		for _, s := range l.Spans {
			if s.Index < 0 || s.Index >= l.SpanCount {
				return bad("layer %s: span %d out of range (the layer has %d)", l.Digest, s.Index, l.SpanCount)
			}
			if seen[s.Index] {
				return bad("layer %s: span %d listed twice", l.Digest, s.Index)
			}
			seen[s.Index] = true
		}
	}
	return nil
}

// ErrInvalid is a profile that is malformed, or does not fit the image it
// is used with.
var ErrInvalid = errors.New("invalid prefetch profile")

// Verify checks that p was recorded for image (its key: see Key) against
// the decompression indexes a has, and returns the replay plan: every span
// of the profile in the order of first touch. A layer whose index is not
// known yet (a .clip written by clip, indexed on first read) is left out of
// the plan; a layer the image does not have, or an index with another
// geometry, refuses the whole profile.
func Verify(p *Profile, image string, a *index.Archive) ([]Ref, error) {
	if err := p.check(); err != nil {
		return nil, err
	}
	if p.Image != image {
		return nil, fmt.Errorf("profile of %s: %w: recorded for another image than %s", p.Image, ErrInvalid, image)
	}
	layerOf := make(map[string]int, len(a.Layers))
	for i, l := range a.Layers {
		if _, dup := layerOf[l.Digest]; !dup {
			layerOf[l.Digest] = i
		}
	}
	type timed struct {
		Ref
		at int64
	}
	var plan []timed
	for _, l := range p.Layers {
		i, ok := layerOf[l.Digest]
		if !ok {
			return nil, fmt.Errorf("profile of %s: %w: layer %s is not a layer of the image", p.Image, ErrInvalid, l.Digest)
		}
		x := a.Layers[i].Spans
		if x == nil {
			continue
		}
		if x.SpanSize != l.SpanSize || len(x.Spans) != l.SpanCount {
			return nil, fmt.Errorf("profile of %s: %w: layer %s was recorded against %d spans of %d bytes, the index has %d of %d",
				p.Image, ErrInvalid, l.Digest, l.SpanCount, l.SpanSize, len(x.Spans), x.SpanSize)
		}
		for _, s := range l.Spans {
			plan = append(plan, timed{Ref{i, s.Index}, s.At})
		}
	}
	slices.SortStableFunc(plan, func(a, b timed) int {
		if a.at != b.at {
			return cmp.Compare(a.at, b.at)
		}
		if a.Layer != b.Layer {
			return a.Layer - b.Layer
		}
		return a.Span - b.Span
	})
	refs := make([]Ref, len(plan))
	for i, t := range plan {
		refs[i] = t.Ref
	}
	return refs, nil
}

// Spans is the number of spans p lists.
func (p *Profile) Spans() int {
	n := 0
	for _, l := range p.Layers {
		n += len(l.Spans)
	}
	return n
}

func sortSpans(s []Span) {
	slices.SortFunc(s, func(a, b Span) int {
		if c := cmp.Compare(a.At, b.At); c != 0 {
			return c
		}
		return cmp.Compare(a.Index, b.Index)
	})
}
