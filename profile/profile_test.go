package profile

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clipd/clipd/index"
	"github.com/clipd/clipd/zran"
)

func digest(n int) string { return fmt.Sprintf("sha256:%064x", n) }

// archive returns an archive of two layers with 10 and 4 spans of 1 MiB.
func archive(manifest string) *index.Archive {
	layer := func(d string, n int) index.Layer {
		return index.Layer{Digest: d, Spans: &index.SpanIndex{SpanSize: 1 << 20, Spans: make([]zran.Span, n)}}
	}
	return &index.Archive{Source: index.Source{Manifest: manifest}, Layers: []index.Layer{layer(digest(100), 10), layer(digest(101), 4)}}
}

func rec(a *index.Archive, touches ...Touch) Recording {
	r := NewRecording(a.Source.Manifest, a)
	r.Touches = touches
	return r
}

func touch(layer, span int, ms int) Touch {
	return Touch{Ref{layer, span}, time.Duration(ms) * time.Millisecond}
}

func TestMergeOrderAndVerify(t *testing.T) {
	a := archive(digest(1))
	p, err := Merge(nil, rec(a, touch(1, 3, 5), touch(0, 7, 10), touch(0, 2, 30), touch(0, 7, 40)), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	plan, err := Verify(p, digest(1), a)
	if err != nil {
		t.Fatal(err)
	}
	want := []Ref{{1, 3}, {0, 7}, {0, 2}}
	if fmt.Sprint(plan) != fmt.Sprint(want) {
		t.Fatalf("plan %v, want %v (order of first touch, each span once)", plan, want)
	}
}

func TestMergeConverges(t *testing.T) {
	a := archive(digest(1))
	var p *Profile
	// A stable workload touches spans 0..4 at the same times every start;
	// each start also touches one span of its own.
	for i := range 12 {
		r := rec(a, touch(0, 0, 0), touch(0, 1, 10), touch(0, 2, 20), touch(0, 3, 30), touch(0, 4, 40), touch(0, 5+i%5, 50+i))
		var err error
		if p, err = Merge(p, r, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	if p.Recordings != 12 {
		t.Fatalf("recordings %d, want 12", p.Recordings)
	}
	plan, err := Verify(p, digest(1), a)
	if err != nil {
		t.Fatal(err)
	}
	// The stable spans lead, in their order; only the one-off spans of the
	// last keepRecordings recordings are left after them.
	for i := range 5 {
		if plan[i] != (Ref{0, i}) {
			t.Fatalf("plan %v: stable spans do not lead in order", plan)
		}
	}
	if len(plan) > 5+keepRecordings {
		t.Fatalf("plan %v keeps %d spans: one-off spans are not dropped", plan, len(plan))
	}
	// Merging the same recording again changes nothing but the count.
	again, _ := Merge(p, rec(a, touch(0, 0, 0), touch(0, 1, 10), touch(0, 2, 20), touch(0, 3, 30), touch(0, 4, 40)), time.Now())
	plan2, _ := Verify(again, digest(1), a)
	for i := range 5 {
		if plan2[i] != plan[i] {
			t.Fatalf("order flapped: %v then %v", plan, plan2)
		}
	}
}

func TestMergeGeometryChangeStartsAfresh(t *testing.T) {
	a := archive(digest(1))
	p, _ := Merge(nil, rec(a, touch(0, 9, 1)), time.Now())
	b := archive(digest(1))
	b.Layers[0].Spans.Spans = make([]zran.Span, 5) // indexed again with bigger spans
	b.Layers[0].Spans.SpanSize = 2 << 20
	q, err := Merge(p, rec(b, touch(0, 4, 1)), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(q, digest(1), b); err != nil {
		t.Fatalf("profile after re-index: %v", err)
	}
	if _, err := Verify(q, digest(1), a); !errors.Is(err, ErrInvalid) {
		t.Fatalf("old geometry accepted a profile of the new one: %v", err)
	}
}

func TestVerifyRefusesForeign(t *testing.T) {
	a := archive(digest(1))
	p, _ := Merge(nil, rec(a, touch(0, 1, 1)), time.Now())
	if _, err := Verify(p, digest(2), a); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "another image") {
		t.Fatalf("profile of another image: %v", err)
	}
	other := archive(digest(1))
	other.Layers[0].Digest = digest(999)
	if _, err := Verify(p, digest(1), other); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "not a layer") {
		t.Fatalf("profile naming a layer the image lacks: %v", err)
	}
	short := archive(digest(1))
	short.Layers[0].Spans.Spans = short.Layers[0].Spans.Spans[:3]
	if _, err := Verify(p, digest(1), short); !errors.Is(err, ErrInvalid) {
		t.Fatalf("profile of another index of the layer: %v", err)
	}
	// A layer without an index yet is left out, not refused.
	lazy := archive(digest(1))
	lazy.Layers[0].Spans = nil
	if plan, err := Verify(p, digest(1), lazy); err != nil || len(plan) != 0 {
		t.Fatalf("layer without index: plan %v, %v", plan, err)
	}
}

func TestDecodeRefusesHostile(t *testing.T) {
	good := fmt.Sprintf(`{"version":1,"image":%q,"recordings":1,"updated":"2026-01-01T00:00:00Z","layers":[{"digest":%q,"span_size":1048576,"span_count":4,"spans":[{"index":1,"at_ms":0,"seen":1,"last":1}]}]}`, digest(1), digest(2))
	if _, err := Decode(strings.NewReader(good)); err != nil {
		t.Fatalf("good profile: %v", err)
	}
	cases := map[string]string{
		"version":       strings.Replace(good, `"version":1`, `"version":9`, 1),
		"image":         strings.Replace(good, digest(1), "sha256:../../etc", 1),
		"layer digest":  strings.Replace(good, digest(2), "x", 1),
		"out of range":  strings.Replace(good, `"index":1`, `"index":4`, 1),
		"negative":      strings.Replace(good, `"index":1`, `"index":-1`, 1),
		"duplicate":     strings.Replace(good, `{"index":1,"at_ms":0,"seen":1,"last":1}`, `{"index":1},{"index":1}`, 1),
		"zero geometry": strings.Replace(good, `"span_size":1048576`, `"span_size":0`, 1),
		"unknown field": strings.Replace(good, `"recordings":1`, `"recordings":1,"exec":"x"`, 1),
		"not json":      "\x00\x01",
		"huge":          `{"version":1,"image":"` + strings.Repeat("a", MaxBytes) + `"}`,
	}
	for name, c := range cases {
		if _, err := Decode(strings.NewReader(c)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestStoreConcurrentMerges(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	a := archive(digest(1))
	if _, err := s.Load(digest(1)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("empty store: %v", err)
	}
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Go(func() {
			if _, err := s.Merge(rec(a, touch(0, i%10, i))); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	p, err := s.Load(digest(1))
	if err != nil {
		t.Fatal(err)
	}
	if p.Recordings != 16 {
		t.Fatalf("%d recordings kept of 16 merged concurrently", p.Recordings)
	}
	list, err := s.List()
	if err != nil || len(list) != 1 || list[0].Recordings != 16 || list[0].Err != "" {
		t.Fatalf("list %+v, %v", list, err)
	}
	if err := s.Remove(digest(1)); err != nil {
		t.Fatal(err)
	}
	if err := s.Remove(digest(1)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("second remove: %v", err)
	}
	if _, err := s.Load("sha256:../x"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("path-like key: %v", err)
	}
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	a := archive(digest(1))
	p, _ := Merge(nil, rec(a, touch(0, 1, 3), touch(1, 2, 4)), time.Now())
	var b bytes.Buffer
	if err := p.Encode(&b); err != nil {
		t.Fatal(err)
	}
	q, err := Decode(&b)
	if err != nil {
		t.Fatal(err)
	}
	if q.Spans() != 2 || q.Image != p.Image {
		t.Fatalf("round trip: %+v", q)
	}
}
