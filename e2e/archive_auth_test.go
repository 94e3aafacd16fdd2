package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/clipd/clipd/internal/testenv"
	"golang.org/x/crypto/bcrypt"
)

// postArchiveMount asks d to mount archive at mp (not created beforehand:
// the daemon creates it under its mount root) and returns the status, the
// decoded answer and how long the request took.
func postArchiveMount(t testing.TB, d *daemon, archive, mp string) (int, map[string]any, time.Duration) {
	t.Helper()
	b, _ := json.Marshal(map[string]any{"archive": archive, "mountpoint": mp})
	req, _ := http.NewRequest(http.MethodPost, "http://clipd/v1/mounts", bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/json")
	start := time.Now()
	resp, err := d.client().Do(req)
	if err != nil {
		t.Fatalf("POST /v1/mounts %s: %v", archive, err)
	}
	defer resp.Body.Close()
	took := time.Since(start)
	raw, _ := io.ReadAll(resp.Body)
	t.Logf("timing: POST /v1/mounts archive %s: %d in %s: %s", filepath.Base(archive), resp.StatusCode, took.Round(time.Millisecond), tail(raw, 400))
	var out map[string]any
	_ = json.Unmarshal(raw, &out)
	return resp.StatusCode, out, took
}

// TestArchiveMountCredentialsCheckedEarly: an archive whose layers are in
// a registry with htpasswd. A daemon without credentials for it refuses the
// mount with 401 registry_unauthorized naming the registry, leaving no
// mount, serving process or mountpoint directory; a daemon with them
// (DOCKER_CONFIG) mounts it and reads the tree exactly; a registry that is
// down or stalled at mount time does not fail the mount (lazy loading reads
// once it is back), and a stalled one costs the mount the check's bound.
func TestArchiveMountCredentialsCheckedEarly(t *testing.T) {
	requireE2ETools(t)
	const user, pass = "clipd-arch", "arch-PaSS-3c9d"
	layout := testenv.DebianPythonLayout(t)
	dir := t.TempDir()
	hash, err := bcrypt.GenerateFromPassword([]byte(pass), bcrypt.DefaultCost)
	if err != nil {
		t.Fatal(err)
	}
	htp := filepath.Join(dir, "htpasswd")
	if err := os.WriteFile(htp, []byte(user+":"+string(hash)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	reg, err := testenv.RunRegistryWith(ctx, t.TempDir(), fmt.Sprintf("auth:\n  htpasswd:\n    realm: clipd-test\n    path: %s\n", htp))
	if err != nil {
		t.Fatalf("start docker-registry with htpasswd: %v", err)
	}
	t.Cleanup(reg.Stop)
	host := reg.Addr
	proxy := testenv.StartFaultProxy(t, host)

	dockerCfg := t.TempDir()
	auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
	cfg := fmt.Sprintf(`{"auths":{%q:{"auth":%q},%q:{"auth":%q}}}`, host, auth, proxy.Addr, auth)
	if err := os.WriteFile(filepath.Join(dockerCfg, "config.json"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	env := []string{"DOCKER_CONFIG=" + dockerCfg}
	ref := host + "/private/debian:minbase"
	runEnv(t, env, clipdBin(t), "index", "oci-layout:"+layout+":minbase", "--to", ref)
	direct := filepath.Join(dir, "direct.clip")
	runEnv(t, env, clipdBin(t), "index", "-o", direct, ref)
	// The same image named through the fault proxy, to stall it.
	proxied := filepath.Join(dir, "proxied.clip")
	runEnv(t, env, clipdBin(t), "index", "-o", proxied, proxy.Addr+"/private/debian:minbase")
	oracle := snapshot(t, umociUnpack(t, layout, "minbase"))

	start := func(dockerConfig string) *daemon {
		d := newDaemonConfig(t, "", "")
		cmd := exec.Command(d.bin, "serve", "--config", d.config)
		cmd.Env = append(os.Environ(), "DOCKER_CONFIG="+dockerConfig)
		nd := relaunchCmd(t, d, cmd)
		waitHealthy(t, nd, time.Now())
		return nd
	}

	// No credentials: refused at the request, nothing left behind.
	none := start(t.TempDir())
	parent := filepath.Join(none.mountRoot, "private")
	mp := filepath.Join(parent, "noauth")
	st, ans, took := postArchiveMount(t, none, direct, mp)
	t.Logf("figure: archive mount refused for want of credentials in %s", took.Round(time.Millisecond))
	if st != http.StatusUnauthorized || errCode(ans) != "registry_unauthorized" || !strings.Contains(fmt.Sprint(ans), host) {
		t.Fatalf("archive mount without credentials: %d %v, want 401 registry_unauthorized naming %s", st, ans, host)
	}
	if mounted(t, mp) {
		t.Error("a refused mount is mounted")
	}
	if _, err := os.Stat(parent); !os.IsNotExist(err) {
		t.Errorf("the mountpoint directories the daemon created are still there: %v", err)
	}
	var left []int
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if left = servingPIDs(t, none.mountRoot); len(left) == 0 || time.Now().After(deadline) {
			break
		}
	}
	if len(left) > 0 {
		t.Errorf("serving processes left after a refused mount: %v", left)
	}
	if list := none.ls(t); len(list) != 0 {
		t.Errorf("clipd ls lists %d mounts after a refused mount", len(list))
	}
	if l, _ := os.ReadFile(none.log); bytes.Contains(l, []byte(pass)) {
		t.Error("the password is in the daemon's log")
	}

	// Daemon-wide credentials: mounted, and the tree reads exactly.
	with := start(dockerCfg)
	mp = filepath.Join(with.mountRoot, "auth")
	st, ans, took = postArchiveMount(t, with, direct, mp)
	if st != http.StatusCreated {
		t.Fatalf("archive mount with credentials: %d %v", st, ans)
	}
	t.Logf("figure: archive mount with credentials (access check included) in %s", took.Round(time.Millisecond))
	requireEqual(t, "private archive (daemon-wide credentials)", oracle, snapshot(t, mp))
	with.umount(t, ans["id"].(string), mp)

	// The latency the check adds: each mount is a new serving process, so
	// each pays the ping, the token and the HEAD (logged by the serving
	// process at DEBUG with its elapsed time), against the whole request.
	var mounts []time.Duration
	for i := range 5 {
		mp := filepath.Join(with.mountRoot, fmt.Sprintf("cycle%d", i))
		st, ans, took := postArchiveMount(t, with, direct, mp)
		if st != http.StatusCreated {
			t.Fatalf("archive mount %d with credentials: %d %v", i, st, ans)
		}
		mounts = append(mounts, took)
		with.umount(t, ans["id"].(string), mp)
	}
	checks := accessCheckTimes(t, with.log)
	t.Logf("figure: archive mount with credentials, 5 cycles: POST /v1/mounts median %s (%v); access check median %s (%v)",
		median(mounts), mounts, median(checks), checks)
	if len(checks) < len(mounts) {
		t.Errorf("%d access checks logged for %d mounts (and one before them)", len(checks), len(mounts))
	}

	// Stalled at mount time: mounted after the check's bound, and the
	// reads succeed once the registry answers again.
	proxy.SetFault("", testenv.Stall())
	mp = filepath.Join(with.mountRoot, "stalled")
	st, ans, took = postArchiveMount(t, with, proxied, mp)
	t.Logf("figure: archive mount with the registry stalled: %d in %s", st, took.Round(time.Millisecond))
	proxy.Clear()
	if st != http.StatusCreated {
		t.Fatalf("archive mount with the registry stalled: %d %v, want 201 (lazy)", st, ans)
	}
	if b, err := os.ReadFile(filepath.Join(mp, "etc/os-release")); err != nil || len(b) == 0 {
		t.Errorf("read after the stall cleared: %v", err)
	}
	with.umount(t, ans["id"].(string), mp)

	// Down at mount time (connection refused): mounted; reads work once
	// it is back.
	reg.Stop()
	mp = filepath.Join(with.mountRoot, "down")
	st, ans, took = postArchiveMount(t, with, direct, mp)
	t.Logf("figure: archive mount with the registry down: %d in %s", st, took.Round(time.Millisecond))
	if st != http.StatusCreated {
		t.Fatalf("archive mount with the registry down: %d %v, want 201 (lazy)", st, ans)
	}
	if err := reg.Restart(ctx); err != nil {
		t.Fatalf("restart the registry: %v", err)
	}
	var rerr error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		var b []byte
		if b, rerr = os.ReadFile(filepath.Join(mp, "etc/os-release")); rerr == nil && len(b) > 0 {
			break
		}
	}
	if rerr != nil {
		t.Errorf("read after the registry came back: %v", rerr)
	}
	with.umount(t, ans["id"].(string), mp)
}

// accessCheckTimes are the elapsed times of the access checks the serving
// processes logged (DEBUG "registry access checked").
func accessCheckTimes(t testing.TB, log string) []time.Duration {
	t.Helper()
	b, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	var out []time.Duration
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.Contains(line, "registry access checked") {
			continue
		}
		_, v, ok := strings.Cut(line, "elapsed=")
		if !ok {
			continue
		}
		v, _, _ = strings.Cut(v, " ")
		if d, err := time.ParseDuration(strings.Trim(v, `"`)); err == nil {
			out = append(out, d)
		}
	}
	return out
}
