package e2e

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/clipd/clipd/internal/testenv"
)

// skopeoPush copies layout:tag to the registry at host as debian:tag.
func skopeoPush(t testing.TB, layout, tag, ref string) {
	t.Helper()
	defer timed(t, "skopeo copy "+tag)()
	run(t, "skopeo", "copy", "--quiet", "--dest-tls-verify=false", "oci:"+layout+":"+tag, "docker://"+ref)
}

// TestDebianPython indexes a real Debian image from a registry and from its
// OCI layout, mounts each index through the daemon, and requires the mount
// to equal umoci's extraction of the same tag exactly; python3 must run in
// the python mount.
//
// No ignores: every layer of this image has a "./" entry and lists every
// directory it writes into, so there are no implicit directories whose
// attributes umoci would invent at extraction time.
func TestDebianPython(t *testing.T) {
	requireE2ETools(t)
	defer timed(t, "TestDebianPython")()
	layout := testenv.DebianPythonLayout(t)
	host := testenv.StartRegistry(t)
	tags := []string{"minbase", "python"}
	for _, tag := range tags {
		skopeoPush(t, layout, tag, host+"/debian:"+tag)
	}
	d := startDaemon(t)
	work := t.TempDir()

	for _, tag := range tags {
		oracle := snapshot(t, umociUnpack(t, layout, tag))
		sources := []struct{ name, source string }{
			{"registry", host + "/debian:" + tag},
			{"layout", "oci-layout:" + layout + ":" + tag},
		}
		for _, src := range sources {
			name := tag + "-" + src.name
			archive := d.index(t, src.source, filepath.Join(work, name+".clip"))
			id, mp := d.mount(t, archive, name)
			requireEqual(t, name, oracle, snapshot(t, mp))
			if tag == "python" {
				requirePython(t, mp)
			}
			logFigures(t, d, id)
			d.umount(t, id, mp)
		}
	}
	if left := leftoverClipd(t, d.mountRoot); len(left) > 0 {
		t.Errorf("clipd mounts left in /proc/self/mountinfo after umount: %v", left)
	}
	if list := d.ls(t); len(list) != 0 {
		t.Errorf("clipd ls --json after umount lists %d mounts: %v", len(list), list)
	}
}

// requirePython runs the image's python3 in the mount.
func requirePython(t testing.TB, mp string) {
	t.Helper()
	start := time.Now()
	out := run(t, "chroot", mp, "/usr/bin/python3", "-c", `import json,sqlite3,email; print("ok")`)
	t.Logf("timing: chroot python3 in %s: %s", mp, time.Since(start).Round(time.Millisecond))
	if strings.TrimSpace(out) != "ok" {
		t.Errorf("python3 in %s printed %q, want ok", mp, out)
	}
}

// logFigures logs what the daemon reports for mount id (bytes fetched...).
func logFigures(t testing.TB, d *daemon, id string) {
	t.Helper()
	for _, m := range d.ls(t) {
		if m["id"] == id {
			b, _ := json.Marshal(m["stats"])
			t.Logf("mount %s figures: %s", id, b)
			return
		}
	}
	t.Errorf("clipd ls --json does not list mount %s", id)
}
