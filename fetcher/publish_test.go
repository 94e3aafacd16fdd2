package fetcher

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/clipd/clipd/index"
	"github.com/clipd/clipd/internal/testenv"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// TestPublishFindIndex: an index published on docker-registry 2.8 (no
// referrers API) is found through the sha256-<hex> fallback tag, with its
// annotations, and fetched byte for byte; another manifest has none.
func TestPublishFindIndex(t *testing.T) {
	host := testenv.StartRegistry(t)
	subject, src := pushFixtureSubject(t, host)
	ctx := context.Background()
	if subject.Digest.String() != src.Manifest {
		t.Fatalf("subject %s, manifest %s", subject.Digest, src.Manifest)
	}
	repo, _ := name.NewRepository(host + "/fix")
	clip := bytes.Repeat([]byte("clip"), 1000)
	ann := IndexAnnotations(1, src.Manifest, 1<<20)
	if _, _, err := PublishIndex(ctx, repo, subject, clip, nil, ann, Options{}); err != nil {
		t.Fatal(err)
	}
	// The registry has no referrers API: the fallback tag must exist.
	resp, err := http.Get("http://" + host + "/v2/fix/tags/list")
	if err != nil {
		t.Fatal(err)
	}
	tags, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := strings.Replace(src.Manifest, ":", "-", 1); !strings.Contains(string(tags), want) {
		t.Errorf("tags %s: no fallback tag %s", tags, want)
	}
	arts, err := FindIndexes(ctx, repo, subject.Digest, Options{})
	if err != nil || len(arts) != 1 {
		t.Fatalf("FindIndexes: %v, %v; want one", arts, err)
	}
	if arts[0].Annotations[AnnotationManifest] != src.Manifest || arts[0].Annotations[AnnotationSpanSize] != "1048576" ||
		arts[0].Layer.MediaType != IndexLayerMediaType {
		t.Errorf("artifact %+v", arts[0])
	}
	var got bytes.Buffer
	if _, err := FetchIndex(ctx, repo, arts[0], &got, Options{}); err != nil || !bytes.Equal(got.Bytes(), clip) {
		t.Fatalf("FetchIndex: %d bytes, %v", got.Len(), err)
	}
	// Publishing again adds nothing.
	if _, _, err := PublishIndex(ctx, repo, subject, clip, nil, ann, Options{}); err != nil {
		t.Fatal(err)
	}
	if arts, _ := FindIndexes(ctx, repo, subject.Digest, Options{}); len(arts) != 1 {
		t.Errorf("after a second publish: %d artifacts", len(arts))
	}
	// A manifest without an index.
	if arts, err := FindIndexes(ctx, repo, v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("0", 64)}, Options{}); err != nil || len(arts) != 0 {
		t.Errorf("FindIndexes of an unindexed digest: %v, %v", arts, err)
	}
}

func TestCheckIndex(t *testing.T) {
	f := makeFixture(t)
	d, _ := f.img.Digest()
	m := d.String()
	good := func() *index.Archive {
		a := f.archive(index.Source{Manifest: m})
		mf, _ := f.img.Manifest()
		for i := range a.Layers {
			a.Layers[i].MediaType = string(mf.Layers[i].MediaType)
		}
		return a
	}
	if err := CheckIndex(good(), f.img, m); err != nil {
		t.Fatalf("matching index refused: %v", err)
	}
	cases := map[string]func(a *index.Archive){
		"manifest":   func(a *index.Archive) { a.Source.Manifest = "sha256:" + strings.Repeat("0", 64) },
		"no digest":  func(a *index.Archive) { a.Source.Manifest = "" },
		"layers":     func(a *index.Archive) { a.Layers = a.Layers[:2] },
		"digest":     func(a *index.Archive) { a.Layers[1].Digest = a.Layers[0].Digest },
		"size":       func(a *index.Archive) { a.Layers[2].Size++ },
		"media type": func(a *index.Archive) { a.Layers[0].MediaType = "application/x-other" },
		"format":     func(a *index.Archive) { a.Format = 1 },
	}
	for name, mutate := range cases {
		a := good()
		mutate(a)
		if err := CheckIndex(a, f.img, m); err == nil {
			t.Errorf("%s: mismatching index accepted", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
}

func TestParseRegistryAuth(t *testing.T) {
	js := `{"username":"u","password":"p+/?=x"}`
	for _, enc := range []*base64.Encoding{base64.URLEncoding, base64.RawURLEncoding, base64.StdEncoding} {
		c, err := ParseRegistryAuth(enc.EncodeToString([]byte(js)))
		if err != nil || c.Username != "u" || c.Password != "p+/?=x" {
			t.Errorf("%v: %v %v", enc, c.Username, err)
		}
	}
	c, err := ParseRegistryAuth(base64.URLEncoding.EncodeToString([]byte(`{"identitytoken":"tok"}`)))
	if err != nil || c.IdentityToken != "tok" {
		t.Errorf("identity token: %v", err)
	}
	for _, bad := range []string{"%%%", base64.URLEncoding.EncodeToString([]byte("secret-not-json"))} {
		_, err := ParseRegistryAuth(bad)
		if err == nil || strings.Contains(err.Error(), "secret") {
			t.Errorf("ParseRegistryAuth(%q) = %v", bad, err)
		}
	}
	secret := Credentials{Username: "u", Password: "hunter2"}
	for _, s := range []string{fmt.Sprint(secret), fmt.Sprintf("%v %+v %#v", secret, secret, secret)} {
		if strings.Contains(s, "hunter2") {
			t.Errorf("credentials printed: %s", s)
		}
	}
}

// pushFixtureSubject pushes the fixture image to host as fix:a and returns
// its descriptor (the subject artifacts attach to) and its source.
func pushFixtureSubject(t *testing.T, host string) (v1.Descriptor, index.Source) {
	t.Helper()
	makeFixture(t).push(t, host+"/fix:a")
	img, src, err := ResolveImage(context.Background(), host+"/fix:a", nil, Options{})
	if err != nil {
		t.Fatal(err)
	}
	subject, err := SubjectOf(img)
	if err != nil {
		t.Fatal(err)
	}
	return subject, src
}
