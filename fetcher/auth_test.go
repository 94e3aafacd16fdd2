package fetcher

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/clipd/clipd/index"
	"github.com/clipd/clipd/internal/testenv"
)

// startTokenGate puts a bearer-token gate in front of a real registry, the
// way Docker Hub and most registries authenticate: a request without a
// token gets 401 with a Bearer challenge; the token endpoint hands out a
// token for the right basic credentials only.
func startTokenGate(t testing.TB, registry, user, pass string) string {
	t.Helper()
	const token = "clipd-test-token"
	target, _ := url.Parse("http://" + registry)
	rp := httputil.NewSingleHostReverseProxy(target)
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/token" {
			u, p, ok := r.BasicAuth()
			if !ok || u != user || p != pass {
				http.Error(w, "bad credentials", http.StatusUnauthorized)
				return
			}
			json.NewEncoder(w).Encode(map[string]string{"token": token, "access_token": token})
			return
		}
		if r.Header.Get("Authorization") != "Bearer "+token {
			w.Header().Set("WWW-Authenticate", `Bearer realm="`+srv.URL+`/token",service="clipd-test",scope="repository:test/img:pull"`)
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED"}]}`, http.StatusUnauthorized)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// writeDockerConfig points DOCKER_CONFIG at a config.json holding
// credentials for host, as `docker login` writes them.
func writeDockerConfig(t *testing.T, host, user, pass string) {
	t.Helper()
	dir := t.TempDir()
	auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
	b, _ := json.Marshal(map[string]any{"auths": map[string]any{host: map[string]string{"auth": auth}}})
	if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DOCKER_CONFIG", dir)
}

// Credentials from docker's config.json, exchanged for a bearer token,
// reach both the image resolution and the ranged blob reads; wrong ones
// give a clear error.
func TestDockerConfigBearerAuth(t *testing.T) {
	reg := testenv.StartRegistry(t)
	fix := makeFixture(t)
	fix.push(t, reg+"/test/img:v1")
	gate := startTokenGate(t, reg, "alice", "s3cret")

	writeDockerConfig(t, gate, "alice", "s3cret")
	img, src, err := ResolveImage(t.Context(), gate+"/test/img:v1", nil, Options{})
	if err != nil {
		t.Fatalf("resolve through the token gate: %v", err)
	}
	if _, err := img.Manifest(); err != nil {
		t.Fatal(err)
	}
	f, _ := newFetcher(t, t.TempDir(), Options{})
	a := indexedArchive(t, fix, index.Source{Registry: src.Registry, Repository: src.Repository, Reference: src.Reference}, 256<<10)
	ls := openLayers(t, f, a)
	for i, l := range fix.layers {
		buf := make([]byte, 4096)
		if _, err := ls.ReaderAt(i).ReadAt(buf, 1000); err != nil || !bytes.Equal(buf, l.tar[1000:5096]) {
			t.Fatalf("%s layer through the token gate: %v", l.comp, err)
		}
	}

	writeDockerConfig(t, gate, "alice", "wrong")
	if _, _, err := ResolveImage(t.Context(), gate+"/test/img:v1", nil, Options{}); err == nil ||
		!strings.Contains(err.Error(), gate) {
		t.Fatalf("wrong credentials: %v, want an error naming the source", err)
	} else {
		t.Logf("wrong credentials: %v", err)
	}
}
