package fetcher

import (
	"bytes"
	"context"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
)

// TestPublishFindIndexReferrersAPI: on a registry with the OCI 1.1
// referrers API (go-containerregistry's in-process registry; no
// registry that has it runs on this machine), the index is found through
// the API and no fallback tag is written.
func TestPublishFindIndexReferrersAPI(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.WithReferrersSupport(true), registry.Logger(nopLogger())))
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")
	subject, src := pushFixtureSubject(t, host)
	ctx := context.Background()
	repo, _ := name.NewRepository(host + "/fix")
	clip := bytes.Repeat([]byte("x"), 4096)
	if _, _, err := PublishIndex(ctx, repo, subject, clip, nil, IndexAnnotations(1, src.Manifest, 1<<20), Options{}); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get(srv.URL + "/v2/fix/tags/list")
	if err != nil {
		t.Fatal(err)
	}
	tags, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if strings.Contains(string(tags), "sha256-") {
		t.Errorf("a fallback tag was written on a registry with the referrers API: %s", tags)
	}
	arts, err := FindIndexes(ctx, repo, subject.Digest, Options{})
	if err != nil || len(arts) != 1 || arts[0].Annotations[AnnotationManifest] != src.Manifest {
		t.Fatalf("FindIndexes: %+v %v", arts, err)
	}
	var got bytes.Buffer
	if _, err := FetchIndex(ctx, repo, arts[0], &got, Options{}); err != nil || !bytes.Equal(got.Bytes(), clip) {
		t.Fatalf("FetchIndex: %v", err)
	}
	// A profile beside it, which this registry lists under the empty
	// config type: found by its annotations, fetched byte for byte.
	prof := []byte(`{"profile":1}`)
	if _, err := PublishProfile(ctx, repo, subject, prof, 1, time.Now(), Options{}); err != nil {
		t.Fatal(err)
	}
	refs, err := FindReferrers(ctx, repo, subject.Digest, Options{})
	if err != nil || len(refs.Indexes) != 1 || len(refs.Profiles) != 1 || refs.Profiles[0].Created.IsZero() {
		t.Fatalf("FindReferrers: %+v %v", refs, err)
	}
	if b, err := FetchProfile(ctx, repo, refs.Profiles[0], Options{}); err != nil || !bytes.Equal(b, prof) {
		t.Fatalf("FetchProfile: %q %v", b, err)
	}
}

func nopLogger() *log.Logger { return log.New(io.Discard, "", 0) }
