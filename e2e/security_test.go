package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/clipd/clipd/internal/fixture"
	"github.com/clipd/clipd/internal/testenv"
)

// nobodyArgs is the local user of the attacks below (setpriv arguments): not root, not allowed on
// the socket, in no group.
var nobodyArgs = []string{"--reuid=65534", "--regid=65534", "--clear-groups"}

// asNobody runs argv as uid/gid 65534 and returns its trimmed stdout and
// stderr. Through env: setpriv puts the capabilities of its caller (root)
// back after changing uid, so its own execve would still pass directories
// closed to uid 65534 (CAP_DAC_OVERRIDE); env, started without them, looks
// argv[0] up as the user itself would.
func asNobody(argv ...string) (string, string, error) {
	stdout, stderr, err := runErr("setpriv", append(slices.Concat(nobodyArgs, []string{"env"}), argv...)...)
	return strings.TrimSpace(stdout), strings.TrimSpace(stderr), err
}

// openUpTo makes dir and its parents up to os.TempDir() traversable by
// everyone: t.TempDir's directories are 0700, which would hide a mount root
// below them from other users whatever clipd does.
func openUpTo(t testing.TB, dir string) {
	t.Helper()
	for p := dir; p != os.TempDir() && p != "/"; p = filepath.Dir(p) {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// setuidArchive indexes fixture.SetuidImage (a setuid-root copy of the
// host's /usr/bin/id) and returns the .clip file.
func setuidArchive(t testing.TB, d *daemon) string {
	t.Helper()
	bin, err := os.ReadFile("/usr/bin/id")
	if err != nil {
		t.Fatal(err)
	}
	img, err := fixture.SetuidImage(bin)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	layout := filepath.Join(dir, "layout")
	if err := fixture.WriteImageLayout(layout, "setuid", img); err != nil {
		t.Fatal(err)
	}
	return d.index(t, "oci-layout:"+layout+":setuid", filepath.Join(dir, "setuid.clip"))
}

// mountOptions returns the per-mount options of mp in /proc/self/mountinfo.
func mountOptions(t testing.TB, mp string) []string {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 5 && unescapeMountinfo(fields[4]) == mp {
			return strings.Split(fields[5], ",")
		}
	}
	t.Fatalf("%s is not in /proc/self/mountinfo", mp)
	return nil
}

// listSetuid returns the "setuid" field GET /v1/mounts reports per mountpoint.
func listSetuid(t testing.TB, d *daemon) map[string]bool {
	t.Helper()
	status, body, err := d.request(http.MethodGet, "/v1/mounts", nil)
	if err != nil || status != http.StatusOK {
		t.Fatalf("GET /v1/mounts: %d %v %s", status, err, body)
	}
	var list []map[string]any
	if err := json.Unmarshal(body, &list); err != nil {
		t.Fatalf("GET /v1/mounts: %v\n%s", err, body)
	}
	out := map[string]bool{}
	for _, m := range list {
		v, ok := m["setuid"].(bool)
		if !ok {
			t.Fatalf("GET /v1/mounts: mount %v has no boolean \"setuid\"", m["mountpoint"])
		}
		out[m["mountpoint"].(string)] = v
	}
	return out
}

// TestNoPrivilegeThroughMount is the attack of a local user with no API
// access on an image's setuid-root binary, against both layers of defence:
// the mount root clipd creates is 0700 (the user cannot reach the mount at
// all), and mounts are nosuid unless asked (under a root opened by the
// operator the binary runs with the user's own uid). A setuid mount under
// a traversable root is refused; under a 0700 root it is made, and a
// runtime gets working setuid binaries through a bind mount in its own
// mount namespace while the host's users still cannot reach them.
func TestNoPrivilegeThroughMount(t *testing.T) {
	requireE2ETools(t)
	testenv.RequireTools(t, "setpriv", "unshare", "mount")
	d := newDaemonConfig(t, "", "")
	// clipd must create the root itself, below directories everyone can
	// traverse (as /run/clipd is).
	if err := os.Remove(d.mountRoot); err != nil {
		t.Fatal(err)
	}
	openUpTo(t, filepath.Dir(d.mountRoot))
	d = launch(t, d)
	root := d.mountRoot
	if fi, err := os.Stat(root); err != nil {
		t.Fatal(err)
	} else if fi.Mode().Perm() != 0o700 {
		t.Errorf("mount root %s created by clipd has mode %04o, want 0700", root, fi.Mode().Perm())
	}
	archive := setuidArchive(t, d)

	// The user is not allowed on the socket.
	if out, errOut, err := asNobody(d.bin, "ls", "--socket", d.socket); err == nil {
		t.Errorf("uid 65534 listed the mounts:\n%s\n%s", out, errOut)
	}

	_, mp := d.mount(t, archive, "plain")
	bin := filepath.Join(mp, fixture.SetuidPath)
	if fi, err := os.Stat(bin); err != nil || fi.Mode()&os.ModeSetuid == 0 {
		t.Fatalf("%s: %v %v, want the image's setuid bit shown", bin, fi, err)
	}
	if !slices.Contains(mountOptions(t, mp), "nosuid") {
		t.Errorf("default mount options %v lack nosuid", mountOptions(t, mp))
	}

	// Layer 1: the 0700 root keeps the user away from the mount.
	out, errOut, err := asNobody(bin, "-u")
	if err == nil || out == "0" {
		t.Fatalf("uid 65534 ran %s under a 0700 root: stdout %q, err %v", bin, out, err)
	}
	if !strings.Contains(errOut, "Permission denied") {
		t.Errorf("uid 65534 running %s: %q, want permission denied", bin, errOut)
	}

	// Layer 2: the operator opens the root; nosuid still keeps euid 0 out.
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	warning := fmt.Sprintf("mount root %s (mode 0755, owner 0:0) can be traversed by users other than root", root)
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(readLog(d), warning); {
		if time.Now().After(deadline) {
			t.Fatalf("no warning %q in the log after a reload", warning)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if out, errOut, err := asNobody(bin, "-u"); err != nil || out != "65534" {
		t.Fatalf("uid 65534 ran the setuid-root %s in a default mount: euid %q (%v, %s), want 65534", bin, out, err, errOut)
	}

	// A setuid mount under the open root is refused, naming the root.
	suidMP := filepath.Join(root, "suid")
	body, _ := json.Marshal(map[string]any{"archive": archive, "mountpoint": suidMP, "setuid": true})
	status, resp, err := d.request(http.MethodPost, "/v1/mounts", body)
	if err != nil {
		t.Fatal(err)
	}
	msg, _ := errorMessage(resp)
	if status != http.StatusForbidden || !strings.Contains(msg, root) || !strings.Contains(msg, "0755") {
		t.Fatalf("setuid mount under a 0755 root: %d %s, want 403 naming %s and its mode", status, resp, root)
	}
	if _, err := os.Lstat(suidMP); err == nil {
		t.Errorf("the refused request left %s behind", suidMP)
	}

	// Closed again, the setuid mount is made (through the CLI this time).
	if err := os.Chmod(root, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(suidMP, 0o755); err != nil {
		t.Fatal(err)
	}
	d.clipd(t, "mount", "--setuid", archive, suidMP)
	if opts := mountOptions(t, suidMP); slices.Contains(opts, "nosuid") || !slices.Contains(opts, "nodev") {
		t.Errorf("setuid mount options %v, want nodev without nosuid", opts)
	}
	if got := listSetuid(t, d); len(got) != 2 || got[mp] || !got[suidMP] {
		t.Errorf("GET /v1/mounts setuid per mountpoint: %v, want %s false and %s true", got, mp, suidMP)
	}
	suidBin := filepath.Join(suidMP, fixture.SetuidPath)
	if out, _, err := asNobody(suidBin, "-u"); err == nil || out == "0" {
		t.Fatalf("uid 65534 ran %s of a setuid mount under a 0700 root: stdout %q", suidBin, out)
	}
	// What a runtime does: bind the image into the container's own mount
	// namespace; there setuid works, and the host sees no new mount.
	pub := filepath.Join(filepath.Dir(root), "container-rootfs")
	if err := os.Mkdir(pub, 0o755); err != nil {
		t.Fatal(err)
	}
	script := fmt.Sprintf("mount --bind %s %s && exec setpriv %s env %s -u", suidMP, pub, strings.Join(nobodyArgs, " "),
		filepath.Join(pub, fixture.SetuidPath))
	if out := strings.TrimSpace(run(t, "unshare", "--mount", "--propagation", "private", "sh", "-c", script)); out != "0" {
		t.Errorf("setuid binary in the container's namespace: euid %q, want 0", out)
	}
	if mounted(t, pub) {
		t.Errorf("the container's bind mount %s leaked to the host", pub)
	}
}

// TestServingProcessLimits checks that serving processes do not keep the
// daemon's protection from the OOM killer, and run under the configured
// memory limit (and still start and serve under it).
func TestServingProcessLimits(t *testing.T) {
	requireE2ETools(t)
	for _, c := range []struct {
		name, keys string
		oom        int
		memory     int64
	}{
		{"defaults", "", 0, 1 << 30},
		{"configured", "serve_oom_score_adj = 250\nserve_memory_limit = \"768MiB\"\n", 250, 768 << 20},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := newDaemonConfig(t, "", "")
			cfg, err := os.ReadFile(d.config)
			if err != nil {
				t.Fatal(err)
			}
			cfg = []byte(strings.Replace(string(cfg), "log_level = \"debug\"\n", "log_level = \"debug\"\n"+c.keys, 1))
			if err := os.WriteFile(d.config, cfg, 0o644); err != nil {
				t.Fatal(err)
			}
			d = launch(t, d)
			// A score of the daemon's own that the serving processes must
			// not inherit. clipd.service gives the daemon -500; setting a
			// negative score needs CAP_SYS_RESOURCE, which the test may
			// lack, so this uses a positive one: the inheritance is the same.
			if err := os.WriteFile(fmt.Sprintf("/proc/%d/oom_score_adj", d.cmd.Process.Pid), []byte("600"), 0); err != nil {
				t.Fatal(err)
			}
			archive := setuidArchive(t, d)
			id, mp := d.mount(t, archive, "limits")
			pid := servingPID(t, d, id)

			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/oom_score_adj", pid))
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.TrimSpace(string(b)); got != strconv.Itoa(c.oom) {
				t.Errorf("serving process pid %d: oom_score_adj %s, want %d (not the daemon's 600)", pid, got, c.oom)
			}
			limits, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
			if err != nil {
				t.Fatal(err)
			}
			want := []string{"Max", "data", "size", strconv.FormatInt(c.memory, 10), strconv.FormatInt(c.memory, 10), "bytes"}
			found := false
			for _, line := range strings.Split(string(limits), "\n") {
				if slices.Equal(strings.Fields(line), want) {
					found = true
				}
			}
			if !found {
				t.Errorf("serving process pid %d: no %q in /proc/PID/limits:\n%s", pid, strings.Join(want, " "), limits)
			}
			env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
			if err != nil {
				t.Fatal(err)
			}
			if soft := "GOMEMLIMIT=" + strconv.FormatInt(c.memory/4*3, 10); !slices.Contains(strings.Split(string(env), "\x00"), soft) {
				t.Errorf("serving process pid %d: environment lacks %s", pid, soft)
			}
			// It serves under the limit.
			got, err := os.ReadFile(filepath.Join(mp, fixture.SetuidPath))
			if err != nil {
				t.Fatal(err)
			}
			want2, _ := os.ReadFile("/usr/bin/id")
			if string(got) != string(want2) {
				t.Errorf("read %d bytes through the mount, want the %d of /usr/bin/id", len(got), len(want2))
			}
		})
	}
}

// servingPID is the pid GET /v1/mounts/{id} reports.
func servingPID(t testing.TB, d *daemon, id string) int {
	t.Helper()
	status, body, err := d.request(http.MethodGet, "/v1/mounts/"+id, nil)
	if err != nil || status != http.StatusOK {
		t.Fatalf("GET /v1/mounts/%s: %d %v %s", id, status, err, body)
	}
	var m struct {
		PID int `json:"pid"`
	}
	if err := json.Unmarshal(body, &m); err != nil || m.PID <= 0 {
		t.Fatalf("GET /v1/mounts/%s: pid %d %v", id, m.PID, err)
	}
	if m.PID == d.cmd.Process.Pid {
		t.Fatalf("mount %s is served by the daemon itself", id)
	}
	return m.PID
}

// readLog returns the daemon's whole log so far.
func readLog(d *daemon) string {
	b, _ := os.ReadFile(d.log)
	return string(b)
}

// TestDeadMountSwappedParent: while the daemon is down, a mount's serving
// process dies and whoever can write in the mount root swaps the
// mountpoint's parent for a link to a directory outside the roots, where
// another mount (a tmpfs) sits under the same name. The next daemon marks
// the mount failed, and neither its start nor deleting the mount detaches
// anything through the link.
func TestDeadMountSwappedParent(t *testing.T) {
	requireE2ETools(t)
	defer timed(t, "TestDeadMountSwappedParent")()
	dir, layout := fixtureLayout(t)
	d := startDaemon(t, "--keep-mounts")
	archive := d.index(t, "oci-layout:"+layout+":fixture", filepath.Join(dir, "fixture.clip"))
	id, mp := d.mount(t, archive, "p/mp")
	pid := servingPID(t, d, id)
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-d.exited
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); syscall.Kill(pid, 0) == nil; {
		if time.Now().After(deadline) {
			t.Fatalf("serving process %d still there 10s after SIGKILL", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}

	outside := filepath.Join(t.TempDir(), "outside")
	victim := filepath.Join(outside, "mp")
	if err := os.MkdirAll(victim, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", victim, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(victim, syscall.MNT_DETACH) })
	parent, moved := filepath.Dir(mp), filepath.Dir(mp)+"-moved"
	if err := os.Rename(parent, moved); err != nil {
		t.Fatalf("rename the dead mount's parent: %v", err)
	}
	if err := os.Symlink(outside, parent); err != nil {
		t.Fatal(err)
	}

	d2 := relaunch(t, d, nil)
	waitHealthy(t, d2, time.Now())
	if m := listMounts(t, d2)[id]; m.State != "failed" {
		t.Errorf("mount %s after its serving process died: %+v, want failed", id, m)
	}
	if !mounted(t, victim) {
		t.Fatal("the tmpfs outside the roots was unmounted through the swapped parent at start")
	}
	if status, body, err := d2.request(http.MethodDelete, "/v1/mounts/"+id, nil); err != nil || status != http.StatusOK {
		t.Fatalf("DELETE %s: %d %s %v", id, status, body, err)
	}
	if !mounted(t, victim) {
		t.Fatal("the tmpfs outside the roots was unmounted through the swapped parent by DELETE")
	}
	if !mounted(t, filepath.Join(moved, "mp")) {
		t.Fatal("the dead FUSE mount is gone: the test did not leave it where the link hid it")
	}

	// The refused detach is logged; the parent goes back in place so that
	// the harness's cleanup finds (and detaches) the dead mount.
	if err := os.Remove(parent); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(moved, parent); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(readLog(d2), "dead mount: detach failed") {
		t.Errorf("the refused detach is not logged:\n%s", d2.logTail())
	}
}
