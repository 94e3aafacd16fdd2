package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/clipd/clipd/api"
	"github.com/clipd/clipd/index"
	"github.com/clipd/clipd/internal/testenv"
	"github.com/clipd/clipd/profile"
)

// startProfileDaemon starts a daemon with prefetchKeys in its [prefetch]
// table.
func startProfileDaemon(t testing.TB, prefetchKeys string) *daemon {
	t.Helper()
	d := launch(t, newDaemonConfig(t, "", "\n[prefetch]\n"+prefetchKeys+"\n"))
	cleanupMounts(t, d)
	return d
}

// profileDir is the daemon's profile store (state_dir/profiles).
func (d *daemon) profileDir() string {
	return filepath.Join(filepath.Dir(d.config), "state", profile.Dir)
}

// mountStats returns the figures the daemon reports for mount id, decoded
// as JSON keys (prefetch_* included).
func (d *daemon) mountStats(t testing.TB, id string) map[string]float64 {
	t.Helper()
	status, body, err := d.request(http.MethodGet, "/v1/mounts/"+id, nil)
	if err != nil || status != http.StatusOK {
		t.Fatalf("GET /v1/mounts/%s: %d %v %s", id, status, err, body)
	}
	var mi struct {
		Stats map[string]any `json:"stats"`
	}
	if err := json.Unmarshal(body, &mi); err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for k, v := range mi.Stats {
		if f, ok := v.(float64); ok {
			out[k] = f
		}
	}
	return out
}

func (d *daemon) profiles(t testing.TB) []api.ProfileSummary {
	t.Helper()
	var list []api.ProfileSummary
	if out := d.clipd(t, "profile", "ls", "--json"); json.Unmarshal([]byte(out), &list) != nil {
		t.Fatalf("clipd profile ls --json: %s", out)
	}
	return list
}

// waitLog waits until d's log holds s.
func (d *daemon) waitLog(t testing.TB, s string, within time.Duration) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%q in the daemon's log", s), within, func() bool {
		b, _ := os.ReadFile(d.log)
		return strings.Contains(string(b), s)
	})
}

func (d *daemon) logCount(s string) int {
	b, _ := os.ReadFile(d.log)
	return strings.Count(string(b), s)
}

// pythonStart is the workload: python3 starting and importing modules.
func pythonStart(t testing.TB, mp string) time.Duration {
	t.Helper()
	start := time.Now()
	out := run(t, "chroot", mp, "/usr/bin/python3", "-c", `import json,sqlite3,email,decimal; print("ok")`)
	if strings.TrimSpace(out) != "ok" {
		t.Fatalf("python3 in %s printed %q", mp, out)
	}
	return time.Since(start)
}

// TestProfileRecordReplay: a writable mount (its shared read-only mount's
// serving process) records what python3's start reads; after a cache
// wipe, the next mount of the image fetches those spans at once and the
// same start reads them from the cache; without the profile (clipd
// profile rm) the start is cold again. A replay against a slow registry
// is cancelled by the unmount.
func TestProfileRecordReplay(t *testing.T) {
	requireE2ETools(t)
	_, host := pushedDebianPython(t)
	proxy := testenv.StartFaultProxy(t, host)
	d := startProfileDaemon(t, `record_seconds = "5m"`)
	archive := d.index(t, proxy.Addr+"/debian:python", filepath.Join(t.TempDir(), "python.clip"))
	a, err := index.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	key := a.Source.Manifest
	prune := func() { run(t, d.bin, "cache", "prune", "--all", "--config", d.config) }
	figures := func(what string, st map[string]float64, took time.Duration) {
		t.Logf("%s: python3 start %s; fetched %.0f bytes in %.0f requests, %.0f cache misses, %.0f hits; prefetch planned %.0f fetched %.0f used %.0f wasted %.0f",
			what, took.Round(time.Millisecond), st["bytes_fetched"], st["requests"], st["cache_misses"], st["cache_hits"],
			st["prefetch_planned"], st["prefetch_fetched"], st["prefetch_used"], st["prefetch_wasted"])
	}

	// 1. Cold, no profile, a writable mount: recorded at the unmount.
	prune()
	mp := filepath.Join(d.mountRoot, "w1")
	os.MkdirAll(mp, 0o755)
	id := strings.TrimSpace(d.clipd(t, "mount", "--writable", archive, mp))
	cold := pythonStart(t, mp)
	st1 := d.mountStats(t, id)
	figures("cold, no profile (writable)", st1, cold)
	if st1["prefetch_planned"] != 0 {
		t.Errorf("a mount without a profile planned a prefetch: %v", st1)
	}
	d.umount(t, id, mp)
	d.waitLog(t, "prefetch profile recorded", 15*time.Second)
	list := d.profiles(t)
	if len(list) != 1 || list[0].Image != key || list[0].Spans == 0 || list[0].Recordings != 1 || list[0].Error != "" {
		t.Fatalf("clipd profile ls after a recorded mount: %+v, want one profile of %s", list, key)
	}
	recorded := list[0].Spans
	var shown profile.Profile
	if out := d.clipd(t, "profile", "show", key); json.Unmarshal([]byte(out), &shown) != nil || shown.Image != key || shown.Spans() != recorded {
		t.Fatalf("clipd profile show %s: %s", key, out)
	}

	// 2. Cold again, with the profile: replayed.
	prune()
	id, mp = d.mount(t, archive, "r2")
	warm := pythonStart(t, mp)
	d.waitLog(t, "prefetch profile replayed", 30*time.Second)
	st2 := d.mountStats(t, id)
	figures("cold, profile replayed", st2, warm)
	if st2["prefetch_planned"] != float64(recorded) || st2["prefetch_fetched"] == 0 || st2["prefetch_used"] == 0 {
		t.Errorf("replay figures: planned %v (profile has %d spans), fetched %v, used %v; want planned = profile, fetched and used > 0",
			st2["prefetch_planned"], recorded, st2["prefetch_fetched"], st2["prefetch_used"])
	}
	// clipd ls --json shows them as they are.
	for _, m := range d.ls(t) {
		if s, _ := m["stats"].(map[string]any); m["id"] == id && s["prefetch_planned"] == nil {
			t.Errorf("clipd ls --json: no prefetch_planned in %v", s)
		}
	}
	ended := d.logCount("mount ended")
	d.umount(t, id, mp)
	d.waitLog(t, "prefetch profile recorded", 15*time.Second)
	waitFor(t, "the unmount's summary line", 10*time.Second, func() bool { return d.logCount("mount ended") > ended })
	if b, _ := os.ReadFile(d.log); !strings.Contains(string(b), "prefetch_planned=") {
		t.Errorf("the mount's summary line does not give the prefetch figures:\n%s", d.logTail())
	}
	if list := d.profiles(t); len(list) != 1 || list[0].Recordings != 2 {
		t.Errorf("after a second recording: %+v, want 2 recordings merged", list)
	}

	// 3. Cold, profile removed: no replay (and a fresh recording).
	if out := d.clipd(t, "profile", "rm", key); !strings.Contains(out, key) {
		t.Errorf("clipd profile rm printed %q", out)
	}
	if list := d.profiles(t); len(list) != 0 {
		t.Fatalf("clipd profile ls after rm: %+v", list)
	}
	prune()
	id, mp = d.mount(t, archive, "c3")
	cold3 := pythonStart(t, mp)
	st3 := d.mountStats(t, id)
	figures("cold, profile removed", st3, cold3)
	if st3["prefetch_planned"] != 0 {
		t.Errorf("a mount after profile rm planned a prefetch: %v", st3)
	}
	d.umount(t, id, mp)
	t.Logf("python3 start: cold %s and %s, with the profile replayed %s (%.2fx of the mean cold)",
		cold.Round(time.Millisecond), cold3.Round(time.Millisecond), warm.Round(time.Millisecond),
		float64(warm)/float64((cold+cold3)/2))

	// 4. The same pair over a registry that sends each response at 2 MiB/s
	// (a far registry: a fetch costs time, parallel fetches overlap).
	waitFor(t, "the profile recorded again", 15*time.Second, func() bool { return len(d.profiles(t)) == 1 })
	proxy.SetFault("/blobs/", testenv.Trickle(2<<20))
	prune()
	id, mp = d.mount(t, archive, "slow-warm")
	slowWarm := pythonStart(t, mp)
	figures("2 MiB/s per response, profile replayed", d.mountStats(t, id), slowWarm)
	d.umount(t, id, mp)
	d.waitLog(t, "prefetch profile recorded", 15*time.Second)
	saved := d.clipd(t, "profile", "show", key)
	d.clipd(t, "profile", "rm", key)
	prune()
	id, mp = d.mount(t, archive, "slow-cold")
	slowCold := pythonStart(t, mp)
	figures("2 MiB/s per response, no profile", d.mountStats(t, id), slowCold)
	d.umount(t, id, mp)
	t.Logf("python3 start over 2 MiB/s per response: cold %s, with the profile replayed %s (%.2fx)",
		slowCold.Round(time.Millisecond), slowWarm.Round(time.Millisecond), float64(slowWarm)/float64(slowCold))
	proxy.Clear()
	if !strings.Contains(saved, key) {
		t.Fatalf("clipd profile show: %s", saved)
	}

	// 5. A replay against a registry that trickles: the unmount stops it
	// at once and the serving process exits. The replay starts at the
	// first read of a span of the profile: libc's first bytes (its ELF
	// header, which python3's start read), read at full speed from their
	// layer while the other layers trickle.
	waitFor(t, "the profile recorded again", 15*time.Second, func() bool { return len(d.profiles(t)) == 1 })
	prune()
	const libc = "/usr/lib/x86_64-linux-gnu/libc.so.6"
	libcLayer := -1
	for _, n := range a.Nodes {
		if n.Path == libc {
			libcLayer = n.Layer
		}
	}
	if libcLayer < 0 {
		t.Fatalf("%s not in the image", libc)
	}
	for i, l := range a.Layers {
		if i != libcLayer {
			proxy.SetFault(l.Digest, testenv.Trickle(32<<10))
		}
	}
	id, mp = d.mount(t, archive, "slow")
	if st := d.mountStats(t, id); st["prefetch_planned"] != 0 {
		t.Errorf("the replay started before any read: %v", st)
	}
	f, err := os.Open(filepath.Join(mp, libc))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Read(make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	f.Close()
	waitFor(t, "the replay started", 15*time.Second, func() bool { return d.mountStats(t, id)["prefetch_planned"] > 0 })
	time.Sleep(300 * time.Millisecond) // requests in flight
	start := time.Now()
	d.umount(t, id, mp)
	took := time.Since(start)
	waitFor(t, "the serving process exits", 10*time.Second, func() bool { return len(servingPIDs(t, d.mountRoot)) == 0 })
	t.Logf("unmount during a replay over a 32 KiB/s registry: %s; serving process gone %s after it began",
		took.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	if took > 10*time.Second {
		t.Errorf("unmount during a replay took %s", took)
	}
	proxy.Clear()
}

// TestProfileRefusedAndAPI: a corrupt profile and another image's profile
// stored under the image's name are refused with a warning naming the
// file; the mount goes on, without a replay. The profile calls answer 404
// and 400.
func TestProfileRefusedAndAPI(t *testing.T) {
	requireE2ETools(t)
	dir, layout := fixtureLayout(t)
	host := testenv.StartRegistry(t)
	testenv.PushLayout(t, layout, "fixture", host+"/fixture:v1")
	d := startProfileDaemon(t, `record_seconds = "30s"`)
	archive := d.index(t, host+"/fixture:v1", filepath.Join(dir, "fixture.clip"))
	a, err := index.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	key := a.Source.Manifest
	other := "sha256:" + strings.Repeat("e", 64)
	if err := os.MkdirAll(d.profileDir(), 0o700); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(d.profileDir(), strings.Replace(key, ":", "-", 1)+".json")
	for _, c := range []struct{ name, content string }{
		{"corrupt", `{"version":1,"image":"` + key + `","layers":[{"dig`},
		{"foreign", `{"version":1,"image":"` + other + `","recordings":1,"updated":"2026-01-01T00:00:00Z","layers":[` +
			`{"digest":"` + a.Layers[0].Digest + `","span_size":1048576,"span_count":1,"spans":[{"index":0,"at_ms":0,"seen":1,"last":1}]}]}`},
	} {
		if err := os.WriteFile(file, []byte(c.content), 0o600); err != nil {
			t.Fatal(err)
		}
		refused := d.logCount("prefetch profile refused")
		mp := filepath.Join(d.mountRoot, c.name)
		os.MkdirAll(mp, 0o755)
		body, _ := json.Marshal(api.CreateMount{Archive: archive, Mountpoint: mp})
		status, resp, err := d.request(http.MethodPost, "/v1/mounts", body)
		if err != nil || status != http.StatusCreated {
			t.Fatalf("%s profile: mount answered %d %v %s", c.name, status, err, resp)
		}
		var mi api.MountInfo
		json.Unmarshal(resp, &mi)
		waitFor(t, c.name+": the refusal logged", 10*time.Second, func() bool { return d.logCount("prefetch profile refused") > refused })
		b, _ := os.ReadFile(d.log)
		line := lastLine(string(b), "prefetch profile refused")
		if !strings.Contains(line, file) || !strings.Contains(line, "WARN") {
			t.Errorf("%s profile: the warning does not name %s at WARN: %s", c.name, file, line)
		}
		t.Logf("%s profile: %s", c.name, line)
		if st := d.mountStats(t, mi.ID); st["prefetch_planned"] != 0 {
			t.Errorf("%s profile replayed: %v", c.name, st)
		}
		list := d.profiles(t)
		if len(list) != 1 || list[0].Error == "" {
			t.Errorf("%s profile: clipd profile ls %+v, want it listed with its error", c.name, list)
		}
		d.umount(t, mi.ID, mp)
	}
	if d.logCount("prefetch profile armed") != 0 {
		t.Errorf("a refused profile was replayed:\n%s", d.logTail())
	}
	// The mounts read nothing: the file is left as it was, then removed.
	d.clipd(t, "profile", "rm", key)
	if _, err := os.Stat(file); !os.IsNotExist(err) {
		t.Errorf("clipd profile rm left %s: %v", file, err)
	}

	for _, c := range []struct {
		path   string
		status int
		code   string
	}{
		{"/v1/profiles/" + key, 404, api.CodeProfileNotFound},
		{"/v1/profiles/latest", 400, api.CodeBadRequest},
		{"/v1/profiles/sha256:abc", 400, api.CodeBadRequest},
	} {
		for _, method := range []string{http.MethodGet, http.MethodDelete} {
			status, body, err := d.request(method, c.path, nil)
			code, _ := apiError(t, body)
			if err != nil || status != c.status || code != c.code {
				t.Errorf("%s %s: %d %s (%v), want %d %s", method, c.path, status, body, err, c.status, c.code)
			}
		}
	}
	if out, stderr, err := runErr(d.bin, "profile", "show", "--socket", d.socket, key); err == nil || !strings.Contains(stderr, "no prefetch profile") {
		t.Errorf("clipd profile show of a missing profile: %v %q %q", err, out, stderr)
	}
}

// lastLine returns the last line of s that holds sub.
func lastLine(s, sub string) string {
	lines := strings.Split(s, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], sub) {
			return lines[i]
		}
	}
	return ""
}
