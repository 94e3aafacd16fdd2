package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/clipd/clipd/fetcher"
	"github.com/clipd/clipd/internal/testenv"
	"golang.org/x/crypto/bcrypt"
)

// Mounting by image reference: the index published once beside the image
// (clipd index --push, or --to for a local build) and mounted by another
// node that has neither the index nor any cached span.

// runEnv runs the clipd CLI with extra environment (DOCKER_CONFIG).
func runEnv(t testing.TB, env []string, name string, args ...string) (string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	var o, e bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = &o, &e
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\nstdout:\n%s\nstderr:\n%s", name, strings.Join(args, " "), err, o.String(), e.String())
	}
	return o.String(), e.String()
}

// mountRef asks d to mount by reference; body gets "mountpoint" at
// <mount root>/name (created). It returns the status and the answer.
func (d *daemon) mountRef(t testing.TB, name string, body map[string]any, header http.Header) (int, map[string]any, string) {
	t.Helper()
	mp := filepath.Join(d.mountRoot, name)
	if err := os.MkdirAll(mp, 0o755); err != nil {
		t.Fatal(err)
	}
	body["mountpoint"] = mp
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest(http.MethodPost, "http://clipd/v1/mounts", bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/json")
	for k, v := range header {
		req.Header[k] = v
	}
	start := time.Now()
	resp, err := d.client().Do(req)
	if err != nil {
		t.Fatalf("POST /v1/mounts %s: %v", body["image"], err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	t.Logf("timing: POST /v1/mounts %v: %d in %s: %s", body["image"], resp.StatusCode, time.Since(start).Round(time.Millisecond), tail(raw, 400))
	var out map[string]any
	_ = json.Unmarshal(raw, &out)
	return resp.StatusCode, out, mp
}

// errCode is the code of an error answer.
func errCode(ans map[string]any) string {
	e, _ := ans["error"].(map[string]any)
	c, _ := e["code"].(string)
	return c
}

// requireHealthy checks the daemon still answers.
func requireHealthy(t testing.TB, d *daemon) {
	t.Helper()
	st, b, err := d.request(http.MethodGet, "/v1/health", nil)
	if err != nil || st != http.StatusOK {
		t.Fatalf("daemon unhealthy: %d %s %v", st, b, err)
	}
}

// TestIndexPushMountByReference: node A publishes the index with clipd
// index --push; node B, with an empty state and cache, mounts the image by
// reference: the index comes from the registry and the tree is exactly
// umoci's. A second mount finds it in the store.
func TestIndexPushMountByReference(t *testing.T) {
	requireE2ETools(t)
	layout := testenv.DebianPythonLayout(t)
	host := testenv.StartRegistry(t)
	ref := host + "/debian:python"
	testenv.PushLayout(t, layout, "python", ref)

	out, _ := runEnv(t, nil, clipdBin(t), "index", "--push", ref)
	t.Logf("node A: %s", strings.TrimSpace(out))
	if !strings.Contains(out, "published index") {
		t.Fatalf("clipd index --push printed %q", out)
	}
	// What a node fetches before a mount is ready: the compressed .clip
	// without its windows, at most 1.5 % of the image's compressed size.
	if m := regexp.MustCompile(`, ([0-9.]+)% of the image's`).FindStringSubmatch(out); m == nil {
		t.Errorf("clipd index --push does not report the up-front share: %q", out)
	} else if share, _ := strconv.ParseFloat(m[1], 64); share > 1.5 {
		t.Errorf("index fetched up front is %.2f%% of the image, want at most 1.5%%", share)
	}

	b := startDaemon(t)
	st, ans, mp := b.mountRef(t, "python", map[string]any{"image": ref}, nil)
	if st != http.StatusCreated {
		t.Fatalf("mount by reference: %d %v", st, ans)
	}
	if ans["index_source"] != "registry" || ans["image_ref"] != ref || !strings.HasPrefix(fmt.Sprint(ans["manifest_digest"]), "sha256:") {
		t.Errorf("answer %v: want index_source registry, image_ref %s and a manifest digest", ans, ref)
	}
	requireEqual(t, "python by reference", snapshot(t, umociUnpack(t, layout, "python")), snapshot(t, mp))
	requirePython(t, mp)
	id := ans["id"].(string)
	logFigures(t, b, id)

	// The mount table and clipd images say what is mounted.
	for _, m := range b.ls(t) {
		if m["id"] == id && (m["image_ref"] != ref || m["manifest_digest"] != ans["manifest_digest"]) {
			t.Errorf("clipd ls --json: %v, want image_ref and manifest_digest", m)
		}
	}
	var imgs []map[string]any
	if err := json.Unmarshal([]byte(b.clipd(t, "images", "--json")), &imgs); err != nil || len(imgs) != 1 {
		t.Fatalf("clipd images --json: %v %v", imgs, err)
	}
	if ms, _ := imgs[0]["mounts"].([]any); len(ms) != 1 || ms[0] != id || imgs[0]["index_source"] != "registry" {
		t.Errorf("clipd images: %v, want one user %s", imgs[0], id)
	}
	state, _ := os.ReadFile(filepath.Join(filepath.Dir(b.socket), "state", "mounts.json"))
	if !bytes.Contains(state, []byte(`"image_ref": "`+ref+`"`)) {
		t.Errorf("mounts.json does not record the image:\n%s", state)
	}

	st, ans, mp2 := b.mountRef(t, "python2", map[string]any{"image": ref}, nil)
	if st != http.StatusCreated || ans["index_source"] != "store" {
		t.Fatalf("second mount: %d %v, want 201 from the store", st, ans)
	}
	b.umount(t, ans["id"].(string), mp2)
	b.umount(t, id, mp)
	// Unused now: prune removes it.
	if out := b.clipd(t, "images", "prune"); !strings.Contains(out, "removed 1 indexes") {
		t.Errorf("clipd images prune: %q", out)
	}
}

// TestIndexLayoutToRegistry: clipd index oci-layout:DIR:TAG --to REF pushes
// the local build (same manifest digest), indexes it from the local bytes
// (no layer blob is read from the registry) and publishes the index; node
// B mounts REF oracle-exact.
func TestIndexLayoutToRegistry(t *testing.T) {
	requireE2ETools(t)
	layout := testenv.DebianPythonLayout(t)
	host := testenv.StartRegistry(t)
	proxy := testenv.StartCountingProxy(t, host)
	ref := proxy.Addr + "/team/app:minbase"

	out, errOut := runEnv(t, nil, clipdBin(t), "index", "oci-layout:"+layout+":minbase", "--to", ref)
	t.Logf("clipd index --to: %s%s", out, errOut)
	var want struct {
		Manifests []struct {
			Digest      string            `json:"digest"`
			Annotations map[string]string `json:"annotations"`
		} `json:"manifests"`
	}
	raw, err := os.ReadFile(filepath.Join(layout, "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	json.Unmarshal(raw, &want)
	var layoutDigest string
	for _, m := range want.Manifests {
		if m.Annotations["org.opencontainers.image.ref.name"] == "minbase" {
			layoutDigest = m.Digest
		}
	}
	insp := run(t, "skopeo", "inspect", "--tls-verify=false", "docker://"+ref)
	var got struct{ Digest string }
	json.Unmarshal([]byte(insp), &got)
	if layoutDigest == "" || got.Digest != layoutDigest {
		t.Fatalf("skopeo inspect %s: digest %q, want the layout's %q", ref, got.Digest, layoutDigest)
	}
	// Layer blobs: only HEAD (exists?) and uploads, never a GET.
	m, err := os.ReadFile(filepath.Join(layout, "blobs", "sha256", strings.TrimPrefix(layoutDigest, "sha256:")))
	if err != nil {
		t.Fatal(err)
	}
	var man struct{ Layers []struct{ Digest string } }
	json.Unmarshal(m, &man)
	for _, l := range man.Layers {
		for _, r := range proxy.Blob(l.Digest) {
			if r.Method == http.MethodGet {
				t.Errorf("layer %s was downloaded during clipd index --to: %+v", l.Digest, r)
			}
		}
	}

	b := startDaemon(t)
	st, ans, mp := b.mountRef(t, "app", map[string]any{"image": ref}, nil)
	if st != http.StatusCreated || ans["index_source"] != "registry" || ans["manifest_digest"] != layoutDigest {
		t.Fatalf("mount %s: %d %v", ref, st, ans)
	}
	requireEqual(t, "local build by reference", snapshot(t, umociUnpack(t, layout, "minbase")), snapshot(t, mp))
	b.umount(t, ans["id"].(string), mp)
}

// TestIndexForAnotherImage: an index of image A attached to image B's
// manifest is refused with 422 naming the mismatch; nothing is mounted and
// nothing is stored.
func TestIndexForAnotherImage(t *testing.T) {
	requireE2ETools(t)
	layout := testenv.DebianPythonLayout(t)
	host := testenv.StartRegistry(t)
	testenv.PushLayout(t, layout, "python", host+"/debian:python")
	testenv.PushLayout(t, layout, "minbase", host+"/debian:minbase")
	clip := filepath.Join(t.TempDir(), "python.clip")
	run(t, clipdBin(t), "index", "-o", clip, host+"/debian:python")
	b, err := os.ReadFile(clip)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	img, src, err := fetcher.ResolveImage(ctx, host+"/debian:minbase", nil, fetcher.Options{})
	if err != nil {
		t.Fatal(err)
	}
	subject, err := fetcher.SubjectOf(img)
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := fetcher.ParseReference(host+"/debian:minbase", nil)
	// The annotations claim minbase: only the index's content can tell.
	if _, _, err := fetcher.PublishIndex(ctx, ref.Context(), subject, b, nil, fetcher.IndexAnnotations(1, src.Manifest, 1<<20), fetcher.Options{}); err != nil {
		t.Fatal(err)
	}

	d := startDaemon(t)
	st, ans, mp := d.mountRef(t, "minbase", map[string]any{"image": host + "/debian:minbase"}, nil)
	if st != http.StatusUnprocessableEntity || errCode(ans) != "index_mismatch" {
		t.Fatalf("mount with a foreign index: %d %v, want 422 index_mismatch", st, ans)
	}
	msg := fmt.Sprint(ans["error"])
	if !strings.Contains(msg, src.Manifest) {
		t.Errorf("error does not name the manifest %s: %s", src.Manifest, msg)
	}
	if mounted(t, mp) || len(d.ls(t)) != 0 {
		t.Errorf("something is mounted after a 422")
	}
	if list := d.clipd(t, "images", "--json"); strings.Contains(list, "sha256") {
		t.Errorf("the foreign index was stored: %s", list)
	}
	requireHealthy(t, d)
}

// TestMountByReferenceBadReferences: no such tag, no such platform, an
// unreachable registry, malformed requests: clear 4xx/5xx, daemon healthy.
func TestMountByReferenceBadReferences(t *testing.T) {
	requireE2ETools(t)
	layout := testenv.DebianPythonLayout(t)
	host := testenv.StartRegistry(t)
	testenv.PushLayout(t, layout, "minbase", host+"/debian:minbase")
	d := startDaemon(t)
	cases := []struct {
		name string
		body map[string]any
		code int
		err  string
	}{
		{"notag", map[string]any{"image": host + "/debian:nope"}, 404, "image_not_found"},
		{"norepo", map[string]any{"image": host + "/nothing:here"}, 404, "image_not_found"},
		{"platform", map[string]any{"image": host + "/debian:minbase", "platform": "linux/s390x"}, 404, "platform_not_found"},
		{"unreachable", map[string]any{"image": "127.0.0.1:1/debian:minbase"}, 502, "registry_unavailable"},
		{"badref", map[string]any{"image": "127.0.0.1:1/Debian:::x"}, 400, "bad_reference"},
		{"layout", map[string]any{"image": "oci-layout:" + layout}, 400, "bad_reference"},
		{"both", map[string]any{"image": host + "/debian:minbase", "archive": "/x.clip"}, 400, "bad_request"},
	}
	for _, c := range cases {
		st, ans, mp := d.mountRef(t, c.name, c.body, nil)
		if st != c.code || errCode(ans) != c.err {
			t.Errorf("%s: %d %v, want %d %s", c.name, st, ans, c.code, c.err)
		}
		if mounted(t, mp) {
			t.Errorf("%s: mounted after an error", c.name)
		}
		requireHealthy(t, d)
	}
	if n := len(d.ls(t)); n != 0 {
		t.Errorf("%d mounts after only failures", n)
	}

	// No index anywhere and index.build_missing off: 404, nothing built.
	off := launch(t, newDaemonConfig(t, "", "\n[index]\nbuild_missing = false\n"))
	st, ans, _ := off.mountRef(t, "off", map[string]any{"image": host + "/debian:minbase"}, nil)
	if st != http.StatusNotFound || errCode(ans) != "index_not_found" {
		t.Errorf("build_missing off: %d %v, want 404 index_not_found", st, ans)
	}

	// With it on (the default), clipd pull builds the index by streaming;
	// the mount then takes it from the store, oracle-exact.
	out := d.clipd(t, "pull", host+"/debian:minbase")
	if !strings.Contains(out, "built by streaming") {
		t.Errorf("clipd pull of an unindexed image: %q", out)
	}
	st, ans, mp := d.mountRef(t, "built", map[string]any{"image": host + "/debian:minbase"}, nil)
	if st != http.StatusCreated || ans["index_source"] != "store" {
		t.Fatalf("mount after clipd pull: %d %v, want 201 from the store", st, ans)
	}
	requireEqual(t, "built index by reference", snapshot(t, umociUnpack(t, layout, "minbase")), snapshot(t, mp))
	d.umount(t, ans["id"].(string), mp)
}

// startAuthRegistry runs docker-registry with htpasswd authentication.
func startAuthRegistry(t *testing.T, user, pass string) string {
	t.Helper()
	testenv.RequireTools(t, "docker-registry")
	dir := t.TempDir()
	hash, err := bcrypt.GenerateFromPassword([]byte(pass), bcrypt.DefaultCost)
	if err != nil {
		t.Fatal(err)
	}
	htp := filepath.Join(dir, "htpasswd")
	if err := os.WriteFile(htp, []byte(user+":"+string(hash)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return testenv.StartRegistryWith(t, fmt.Sprintf("auth:\n  htpasswd:\n    realm: clipd-test\n    path: %s\n", htp))
}

// TestMountByReferenceCredentials: a registry with htpasswd. Node A
// publishes with daemon-wide credentials (DOCKER_CONFIG); node B's daemon
// has none: a mount without credentials or with wrong ones fails at once
// with 401 naming the registry; per-mount credentials (header or body)
// work, and the password is in no file under state_dir, no log line, and
// not in the serving process's arguments or environment.
func TestMountByReferenceCredentials(t *testing.T) {
	requireE2ETools(t)
	const user, pass = "clipd-user", "s3cret-PaSS-9f1e"
	layout := testenv.DebianPythonLayout(t)
	host := startAuthRegistry(t, user, pass)
	ref := host + "/private/debian:minbase"

	dockerCfg := t.TempDir()
	auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
	os.WriteFile(filepath.Join(dockerCfg, "config.json"), []byte(`{"auths":{"`+host+`":{"auth":"`+auth+`"}}}`), 0o600)
	env := []string{"DOCKER_CONFIG=" + dockerCfg}
	out, errOut := runEnv(t, env, clipdBin(t), "index", "oci-layout:"+layout+":minbase", "--to", ref)
	t.Logf("node A: %s%s", out, errOut)

	// Node B: a daemon whose environment has no docker config.
	nb := newDaemonConfig(t, "", "")
	cmd := exec.Command(nb.bin, "serve", "--config", nb.config)
	cmd.Env = append(os.Environ(), "DOCKER_CONFIG="+t.TempDir())
	b := relaunchCmd(t, nb, cmd)
	waitHealthy(t, b, time.Now())

	st, ans, _ := b.mountRef(t, "none", map[string]any{"image": ref}, nil)
	if st != http.StatusUnauthorized || errCode(ans) != "registry_unauthorized" || !strings.Contains(fmt.Sprint(ans), host) {
		t.Errorf("no credentials: %d %v, want 401 registry_unauthorized naming %s", st, ans, host)
	}
	wrong := base64.URLEncoding.EncodeToString([]byte(`{"username":"` + user + `","password":"wrong"}`))
	st, ans, _ = b.mountRef(t, "wrong", map[string]any{"image": ref}, http.Header{"X-Registry-Auth": {wrong}})
	if st != http.StatusUnauthorized || errCode(ans) != "registry_unauthorized" {
		t.Errorf("wrong credentials: %d %v, want 401 registry_unauthorized", st, ans)
	}

	oracle := snapshot(t, umociUnpack(t, layout, "minbase"))
	good := base64.URLEncoding.EncodeToString([]byte(`{"username":"` + user + `","password":"` + pass + `"}`))
	st, ans, mp := b.mountRef(t, "header", map[string]any{"image": ref}, http.Header{"X-Registry-Auth": {good}})
	if st != http.StatusCreated {
		t.Fatalf("credentials in X-Registry-Auth: %d %v", st, ans)
	}
	// Reading every file makes the serving process fetch with them.
	requireEqual(t, "private image (header credentials)", oracle, snapshot(t, mp))
	pid := int(ans["pid"].(float64))
	for _, f := range []string{"cmdline", "environ"} {
		if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, f)); bytes.Contains(b, []byte(pass)) {
			t.Errorf("the password is in the serving process's %s", f)
		}
	}
	st, ans, mp2 := b.mountRef(t, "body", map[string]any{"image": ref, "auth": map[string]string{"username": user, "password": pass}}, nil)
	if st != http.StatusCreated {
		t.Fatalf("credentials in the body: %d %v", st, ans)
	}
	if err := exec.Command("cat", filepath.Join(mp2, "etc/os-release")).Run(); err != nil {
		t.Errorf("read through the body-credentials mount: %v", err)
	}

	// Nowhere on disk or in the log.
	stateDir := filepath.Join(filepath.Dir(b.socket), "state")
	filepath.WalkDir(stateDir, func(p string, de fs.DirEntry, err error) error {
		if err != nil || !de.Type().IsRegular() {
			return nil
		}
		if c, _ := os.ReadFile(p); bytes.Contains(c, []byte(pass)) || bytes.Contains(c, []byte(good)) {
			t.Errorf("the password is in %s", p)
		}
		return nil
	})
	if l, _ := os.ReadFile(b.log); bytes.Contains(l, []byte(pass)) || bytes.Contains(l, []byte(good)) {
		t.Errorf("the password is in the daemon's log")
	}
	b.umount(t, ans["id"].(string), mp2)
}
