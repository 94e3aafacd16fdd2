package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/clipd/clipd/fetcher"
	"github.com/clipd/clipd/index"
	"github.com/clipd/clipd/indexstore"
	"github.com/clipd/clipd/internal/testenv"
	"github.com/clipd/clipd/profile"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Publishing prefetch profiles: clipd profile push on one node, a mount by
// reference on another that fetches the profile with the index.

// profilePath is where d's profile store keeps the profile of manifest.
func (d *daemon) profilePath(manifest string) string {
	return filepath.Join(d.stateDir(), profile.Dir, strings.Replace(manifest, ":", "-", 1)+".json")
}

// storedArchive opens the index of manifest in d's index store.
func (d *daemon) storedArchive(t testing.TB, manifest string) *index.Archive {
	t.Helper()
	p, err := indexstore.OpenReadOnly(filepath.Join(d.stateDir(), indexstore.Dir)).Path(manifest)
	if err != nil {
		t.Fatal(err)
	}
	a, err := index.Open(p)
	if err != nil {
		t.Fatalf("stored index of %s: %v", manifest, err)
	}
	return a
}

// syntheticRecording touches n spans of a spread over its indexed layers,
// in a fixed order, as a workload's first start would.
func syntheticRecording(manifest string, a *index.Archive, n int) profile.Recording {
	r := profile.NewRecording(manifest, a)
	var all []profile.Ref
	for i, l := range a.Layers {
		if l.Spans == nil {
			continue
		}
		for s := range l.Spans.Spans {
			all = append(all, profile.Ref{Layer: i, Span: s})
		}
	}
	step := max(1, len(all)/n)
	for i := 0; i < len(all) && len(r.Touches) < n; i += step {
		r.Touches = append(r.Touches, profile.Touch{Ref: all[i], At: time.Duration(len(r.Touches)) * 7 * time.Millisecond})
	}
	return r
}

// resolveSubject resolves ref to its platform manifest's descriptor.
func resolveSubject(t testing.TB, ref string) (name.Repository, v1.Descriptor) {
	t.Helper()
	img, _, err := fetcher.ResolveImage(context.Background(), ref, nil, fetcher.Options{})
	if err != nil {
		t.Fatal(err)
	}
	subject, err := fetcher.SubjectOf(img)
	if err != nil {
		t.Fatal(err)
	}
	r, err := fetcher.ParseReference(ref, nil)
	if err != nil {
		t.Fatal(err)
	}
	return r.Context(), subject
}

// TestProfilePushMountByReference: node A mounts debian-python by
// reference (index from the registry, no profile anywhere), records a
// profile and pushes it with clipd profile push; node B, with an empty
// state_dir, mounts by reference and finds the profile in its store after
// the mount, exactly A's, with the index. The requests each mount sent
// through a counting proxy are logged: B's extra ones are the profile's.
func TestProfilePushMountByReference(t *testing.T) {
	requireE2ETools(t)
	layout := testenv.DebianPythonLayout(t)
	host := testenv.StartRegistry(t)
	testenv.PushLayout(t, layout, "python", host+"/debian:python")
	proxy := testenv.StartCountingProxy(t, host)
	ref := proxy.Addr + "/debian:python"
	runEnv(t, nil, clipdBin(t), "index", "--push", ref)

	a := startDaemon(t)
	proxy.Reset()
	start := time.Now()
	st, ans, mp := a.mountRef(t, "python", map[string]any{"image": ref}, nil)
	baseTime, baseReqs := time.Since(start), proxy.Requests()
	if st != http.StatusCreated || ans["index_source"] != "registry" {
		t.Fatalf("node A: mount by reference: %d %v", st, ans)
	}
	manifest := ans["manifest_digest"].(string)
	if _, err := os.Stat(a.profilePath(manifest)); err == nil {
		t.Fatalf("node A has a profile before anything was recorded or pushed")
	}
	requirePython(t, mp)
	a.umount(t, ans["id"].(string), mp)

	// What a recording would leave in A's store: 40 spans (the issue's
	// python-import touches 34), merged twice.
	arch := a.storedArchive(t, manifest)
	store, err := profile.Open(filepath.Join(a.stateDir(), profile.Dir))
	if err != nil {
		t.Fatal(err)
	}
	rec := syntheticRecording(manifest, arch, 40)
	for range 2 {
		if _, err := store.Merge(rec); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(a.profilePath(manifest))
	if err != nil {
		t.Fatal(err)
	}
	out, _ := runEnv(t, nil, clipdBin(t), "profile", "push", "--config", a.config, ref)
	t.Logf("node A: %s", strings.TrimSpace(out))
	t.Logf("figure: pushed profile of debian-python: %d bytes, %d spans over %d layers", len(want), len(rec.Touches), len(arch.Layers))
	if !strings.Contains(out, "published profile") || !strings.Contains(out, manifest) {
		t.Fatalf("clipd profile push printed %q", out)
	}
	if out, _ := runEnv(t, nil, clipdBin(t), "profile", "push", "--config", a.config, ref); !strings.Contains(out, "already published") {
		t.Errorf("pushing the same profile again: %q, want already published", out)
	}

	b := startDaemon(t)
	proxy.Reset()
	start = time.Now()
	st, ans, mp = b.mountRef(t, "python", map[string]any{"image": ref}, nil)
	profTime, profReqs := time.Since(start), proxy.Requests()
	if st != http.StatusCreated || ans["index_source"] != "registry" || ans["manifest_digest"] != manifest {
		t.Fatalf("node B: mount by reference: %d %v", st, ans)
	}
	t.Logf("figure: mount by reference without a profile in the registry: %d requests, %s; with one: %d requests, %s",
		baseReqs, baseTime.Round(time.Millisecond), profReqs, profTime.Round(time.Millisecond))
	got, err := os.ReadFile(b.profilePath(manifest))
	if err != nil {
		t.Fatalf("node B has no profile after the mount: %v\n%s", err, b.logTail())
	}
	if !bytes.Equal(got, want) {
		t.Errorf("node B's profile differs from node A's:\n%s\n%s", got, want)
	}
	if _, err := os.Stat(filepath.Join(b.stateDir(), indexstore.Dir, strings.Replace(manifest, ":", "-", 1)+".clip")); err != nil {
		t.Errorf("node B has no index after the mount: %v", err)
	}
	requirePython(t, mp)
	b.umount(t, ans["id"].(string), mp)
}

// TestProfileFromRegistryRefused: profile artifacts that do not fit the
// image (another manifest's, spans out of range of the layer or of the
// image's index, larger than profile.MaxBytes, not a profile) are ignored
// with a warning: the mount succeeds and nothing is stored. A good one is
// stored; the node's own profile is never replaced by one from the
// registry.
func TestProfileFromRegistryRefused(t *testing.T) {
	requireE2ETools(t)
	dir, layout := fixtureLayout(t)
	host := testenv.StartRegistry(t)
	d := startDaemon(t)
	cleanupMounts(t, d)
	var arch *index.Archive
	var manifest string
	good := func() *profile.Profile {
		p, err := profile.Merge(nil, syntheticRecording(manifest, arch, 8), time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	encode := func(p *profile.Profile) []byte {
		var b bytes.Buffer
		if err := p.Encode(&b); err != nil {
			t.Fatal(err)
		}
		return b.Bytes()
	}
	cases := []struct {
		name   string
		data   func() []byte
		stored bool
	}{
		{"foreign", func() []byte {
			p := good()
			p.Image = "sha256:" + strings.Repeat("ab", 32)
			return encode(p)
		}, false},
		{"outofrange", func() []byte {
			b := encode(good())
			return bytes.Replace(b, []byte(`"spans":[{"index":`), []byte(`"spans":[{"index":100000`), 1)
		}, false},
		{"geometry", func() []byte {
			// In range of what it claims, not of the image's index.
			p := good()
			p.Layers[0].SpanCount += 1000
			p.Layers[0].Spans[0].Index = p.Layers[0].SpanCount - 1
			return encode(p)
		}, false},
		{"huge", func() []byte { return bytes.Repeat([]byte(" "), profile.MaxBytes+1) }, false},
		{"garbage", func() []byte { return []byte("\x00\x01garbage{{") }, false},
		{"good", func() []byte { return encode(good()) }, true},
	}
	for i, c := range cases {
		ref := fmt.Sprintf("%s/%s/fixture:v1", host, c.name)
		testenv.PushLayout(t, layout, "fixture", ref)
		runEnv(t, nil, clipdBin(t), "index", "--push", ref)
		if i == 0 {
			clip := d.index(t, ref, filepath.Join(dir, "fixture.clip"))
			a, err := index.Open(clip)
			if err != nil {
				t.Fatal(err)
			}
			arch, manifest = a, a.Source.Manifest
		}
		repo, subject := resolveSubject(t, ref)
		if _, err := fetcher.PublishProfile(context.Background(), repo, subject, c.data(), 1, time.Now(), fetcher.Options{}); err != nil {
			t.Fatalf("%s: publish: %v", c.name, err)
		}
		before, _ := os.ReadFile(d.log)
		st, ans, mp := d.mountRef(t, c.name, map[string]any{"image": ref}, nil)
		if st != http.StatusCreated || ans["index_source"] != "registry" {
			t.Fatalf("%s: mount: %d %v", c.name, st, ans)
		}
		after, _ := os.ReadFile(d.log)
		logged := string(after[len(before):])
		_, err := os.Stat(d.profilePath(manifest))
		if stored := err == nil; stored != c.stored {
			t.Errorf("%s: profile stored %v, want %v\n%s", c.name, stored, c.stored, logged)
		}
		warned := strings.Contains(logged, "level=WARN") && strings.Contains(logged, "prefetch profile in the registry")
		if warned == c.stored {
			t.Errorf("%s: warning logged %v, want %v:\n%s", c.name, warned, !c.stored, logged)
		}
		for _, l := range strings.Split(logged, "\n") {
			if strings.Contains(l, "prefetch profile") {
				t.Logf("%s: %s", c.name, l)
			}
		}
		d.umount(t, ans["id"].(string), mp)
	}

	// The node's own profile (what the good case stored, merged with a
	// recording of its own) is not replaced by a newer one in the registry.
	store, err := profile.Open(filepath.Join(d.stateDir(), profile.Dir))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Merge(syntheticRecording(manifest, arch, 3)); err != nil {
		t.Fatal(err)
	}
	own, _ := os.ReadFile(d.profilePath(manifest))
	ref := host + "/local/fixture:v1"
	testenv.PushLayout(t, layout, "fixture", ref)
	runEnv(t, nil, clipdBin(t), "index", "--push", ref)
	repo, subject := resolveSubject(t, ref)
	remote := good()
	remote.Recordings = 99
	if _, err := fetcher.PublishProfile(context.Background(), repo, subject, encode(remote), 99, time.Now(), fetcher.Options{}); err != nil {
		t.Fatal(err)
	}
	st, ans, mp := d.mountRef(t, "local", map[string]any{"image": ref}, nil)
	if st != http.StatusCreated || ans["index_source"] != "registry" {
		t.Fatalf("local: mount: %d %v", st, ans)
	}
	if now, _ := os.ReadFile(d.profilePath(manifest)); !bytes.Equal(now, own) {
		t.Errorf("the node's own profile was replaced by the registry's:\n%s\nwas\n%s", now, own)
	}
	d.umount(t, ans["id"].(string), mp)
	requireHealthy(t, d)
}

// TestProfilePushErrors: no local profile names the manifest digest; a
// registry that refuses the push, or every request (authentication), is
// named in the error.
func TestProfilePushErrors(t *testing.T) {
	requireE2ETools(t)
	// No credentials but those a test gives.
	t.Setenv("DOCKER_CONFIG", t.TempDir())
	dir, layout := fixtureLayout(t)
	host := testenv.StartRegistry(t)
	ref := host + "/fixture:v1"
	testenv.PushLayout(t, layout, "fixture", ref)
	d := newDaemonConfig(t, "", "")

	_, errOut, err := runErr(clipdBin(t), "profile", "push", "--config", d.config, ref)
	_, subject := resolveSubject(t, ref)
	if err == nil || !strings.Contains(errOut, subject.Digest.String()) || !strings.Contains(errOut, "no prefetch profile") {
		t.Errorf("push without a local profile: %v %q, want an error naming %s", err, errOut, subject.Digest)
	}

	// A profile, and a registry that refuses writes.
	clip := filepath.Join(dir, "fixture.clip")
	run(t, clipdBin(t), "index", "-o", clip, ref)
	a, err := index.Open(clip)
	if err != nil {
		t.Fatal(err)
	}
	store, err := profile.Open(filepath.Join(d.stateDir(), profile.Dir))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Merge(syntheticRecording(a.Source.Manifest, a, 5)); err != nil {
		t.Fatal(err)
	}
	proxy := testenv.StartCountingProxy(t, host)
	proxy.SetFail(func(r *http.Request) int {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			return http.StatusForbidden
		}
		return 0
	})
	_, errOut, err = runErr(clipdBin(t), "profile", "push", "--config", d.config, proxy.Addr+"/fixture:v1")
	if err == nil || !strings.Contains(errOut, proxy.Addr) || !strings.Contains(errOut, "403") {
		t.Errorf("push to a registry refusing writes: %v %q, want an error naming %s", err, errOut, proxy.Addr)
	}
	t.Logf("refused push: %s", strings.TrimSpace(errOut))

	// A registry with authentication, no credentials.
	const user, pass = "u", "p-3f9a"
	auth := startAuthRegistry(t, user, pass)
	dockerCfg := t.TempDir()
	cred := base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
	os.WriteFile(filepath.Join(dockerCfg, "config.json"), []byte(`{"auths":{"`+auth+`":{"auth":"`+cred+`"}}}`), 0o600)
	private := auth + "/private/fixture:v1"
	runEnv(t, []string{"DOCKER_CONFIG=" + dockerCfg}, clipdBin(t), "index", "oci-layout:"+layout+":fixture", "--to", private)
	_, errOut, err = runErr(clipdBin(t), "profile", "push", "--config", d.config, private)
	if err == nil || !strings.Contains(errOut, auth) || !strings.Contains(errOut, "401") {
		t.Errorf("push without credentials: %v %q, want an error naming %s", err, errOut, auth)
	}
	t.Logf("unauthenticated push: %s", strings.TrimSpace(errOut))
	// With them, it works (the profile's manifest is the same image's).
	out, _ := runEnv(t, []string{"DOCKER_CONFIG=" + dockerCfg}, clipdBin(t), "profile", "push", "--config", d.config, private)
	if !strings.Contains(out, "published profile") {
		t.Errorf("push with credentials: %q", out)
	}
}
