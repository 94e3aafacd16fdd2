package fetcher

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/clipd/clipd/internal/testenv"
	"github.com/clipd/clipd/profile"
	"github.com/google/go-containerregistry/pkg/name"
)

// TestPublishFindProfile: profiles published beside an index on
// docker-registry 2.8 (fallback tag) are found by the same listing as the
// index, oldest first by their created annotation whatever order the
// registry lists them in, and fetched byte for byte; the index listing is
// unchanged; a blob larger than profile.MaxBytes is refused before it is
// downloaded.
func TestPublishFindProfile(t *testing.T) {
	host := testenv.StartRegistry(t)
	subject, src := pushFixtureSubject(t, host)
	ctx := context.Background()
	repo, _ := name.NewRepository(host + "/fix")
	if _, _, err := PublishIndex(ctx, repo, subject, bytes.Repeat([]byte("clip"), 100), nil, IndexAnnotations(1, src.Manifest, 1<<20), Options{}); err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	// Pushed newest first: the listing (sorted by digest on the fallback
	// tag) must not decide.
	newer := []byte(`{"newer":true}`)
	older := []byte(`{"older":true}`)
	hNew, err := PublishProfile(ctx, repo, subject, newer, 2, t0.Add(time.Second), Options{})
	if err != nil {
		t.Fatal(err)
	}
	hOld, err := PublishProfile(ctx, repo, subject, older, 1, t0, Options{})
	if err != nil {
		t.Fatal(err)
	}
	refs, err := FindReferrers(ctx, repo, subject.Digest, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(refs.Indexes) != 1 || len(refs.Profiles) != 2 {
		t.Fatalf("FindReferrers: %d indexes, %d profiles; want 1 and 2", len(refs.Indexes), len(refs.Profiles))
	}
	if refs.Profiles[0].Manifest != hOld || refs.Profiles[1].Manifest != hNew || !refs.Profiles[1].Created.Equal(t0.Add(time.Second)) {
		t.Fatalf("profiles %+v: want %s then %s", refs.Profiles, hOld, hNew)
	}
	if arts, err := FindIndexes(ctx, repo, subject.Digest, Options{}); err != nil || len(arts) != 1 {
		t.Fatalf("FindIndexes with profiles attached: %d, %v", len(arts), err)
	}
	got, err := FetchProfile(ctx, repo, refs.Profiles[1], Options{})
	if err != nil || !bytes.Equal(got, newer) {
		t.Fatalf("FetchProfile: %q, %v", got, err)
	}

	huge := bytes.Repeat([]byte(" "), profile.MaxBytes+1)
	if _, err := PublishProfile(ctx, repo, subject, huge, 1, t0.Add(time.Hour), Options{}); err != nil {
		t.Fatal(err)
	}
	proxy := testenv.StartCountingProxy(t, host)
	prepo, _ := name.NewRepository(proxy.Addr + "/fix")
	refs, err = FindReferrers(ctx, prepo, subject.Digest, Options{})
	if err != nil || len(refs.Profiles) != 3 {
		t.Fatalf("FindReferrers: %d profiles, %v", len(refs.Profiles), err)
	}
	proxy.Reset()
	_, err = FetchProfile(ctx, prepo, refs.Profiles[2], Options{})
	if err == nil || !strings.Contains(err.Error(), "declared size") {
		t.Fatalf("FetchProfile of a %d-byte profile: %v", len(huge), err)
	}
	if proxy.Bytes() > 1<<20 {
		t.Errorf("refusing a huge profile downloaded %d bytes", proxy.Bytes())
	}
}
