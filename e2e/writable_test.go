package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// writableMount is the part of a mount answer these tests read.
type writableMount struct {
	ID         string `json:"id"`
	Mountpoint string `json:"mountpoint"`
	State      string `json:"state"`
	PID        int    `json:"pid"`
	Writable   bool   `json:"writable"`
	UpperDir   string `json:"upper_dir"`
	Lower      string `json:"lower"`
	Note       string `json:"note"`
}

// stateDir is the daemon's state_dir (newDaemonConfig puts it beside the
// mount root).
func (d *daemon) stateDir() string { return filepath.Join(filepath.Dir(d.mountRoot), "state") }

// mountWritable asks for a writable mount of archive at <mount root>/name.
func (d *daemon) mountWritable(t testing.TB, archive, name string) writableMount {
	t.Helper()
	mp := filepath.Join(d.mountRoot, name)
	body, _ := json.Marshal(map[string]any{"archive": archive, "mountpoint": mp, "writable": true})
	status, out, err := d.request(http.MethodPost, "/v1/mounts", body)
	if err != nil || status != http.StatusCreated {
		t.Fatalf("writable mount at %s: %d %s %v", mp, status, out, err)
	}
	var m writableMount
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatalf("writable mount answer: %v: %s", err, out)
	}
	if !m.Writable || m.UpperDir == "" || m.Lower == "" {
		t.Fatalf("writable mount answer lacks writable, upper_dir or lower: %s", out)
	}
	return m
}

// deleteMount sends DELETE with query q and returns the status, body and
// how long the answer took.
func (d *daemon) deleteMount(t testing.TB, id, q string) (int, []byte, time.Duration) {
	t.Helper()
	start := time.Now()
	status, out, err := d.request(http.MethodDelete, "/v1/mounts/"+id+q, nil)
	took := time.Since(start)
	if err != nil {
		t.Fatalf("DELETE %s%s: %v", id, q, err)
	}
	return status, out, took
}

// mountsUnder lists the mounts at or below dir, as "mountpoint (fstype)".
func mountsUnder(t testing.TB, dir string) []string {
	var out []string
	for _, m := range readMountinfo(t) {
		if m.mountpoint == dir || strings.HasPrefix(m.mountpoint, dir+"/") {
			out = append(out, m.mountpoint+" ("+m.fstype+")")
		}
	}
	return out
}

// fuseUnder counts FUSE mounts below dir.
func fuseUnder(t testing.TB, dir string) int {
	n := 0
	for _, m := range readMountinfo(t) {
		if strings.HasPrefix(m.mountpoint, dir+"/") && strings.HasPrefix(m.fstype, "fuse") {
			n++
		}
	}
	return n
}

// cleanupMounts detaches whatever is left under the daemon's directory
// before the temporary directory is removed (a failed test may leave a
// shared mount in the state dir, outside the mount root).
func cleanupMounts(t testing.TB, d *daemon) {
	t.Cleanup(func() {
		for _, m := range clipdMounts(t, filepath.Dir(d.mountRoot)) {
			_ = unix.Unmount(m, unix.MNT_DETACH)
		}
	})
}

// debianPythonArchive pushes debian-python to a fresh registry and indexes
// it with d.
func debianPythonArchive(t testing.TB, d *daemon) string {
	t.Helper()
	_, host := pushedDebianPython(t)
	return d.index(t, host+"/debian:python", filepath.Join(t.TempDir(), "python.clip"))
}

// isWhiteout reports whether p is an overlayfs whiteout (a 0:0 character
// device).
func isWhiteout(p string) bool {
	var st unix.Stat_t
	return unix.Lstat(p, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == 0
}

// TestWritableShared makes two writable mounts of debian-python: a write in
// one lands in its upper directory while the other sees the pristine image,
// and both share one read-only FUSE mount and one serving process. Deleting
// them removes the overlays and upper directories (keep_upper keeps one and
// says where), and the shared mount and its process go with the last. Then
// 20 writable mounts of the image: processes, RSS and mount times are
// logged.
func TestWritableShared(t *testing.T) {
	requireE2ETools(t)
	defer timed(t, "TestWritableShared")()
	d := startDaemon(t)
	cleanupMounts(t, d)
	archive := debianPythonArchive(t, d)
	upperDir := filepath.Join(d.stateDir(), "upper")
	lowerDir := filepath.Join(d.stateDir(), "lower")

	a := d.mountWritable(t, archive, "a")
	b := d.mountWritable(t, archive, "b")
	if a.Lower != b.Lower || a.PID != b.PID || a.UpperDir == b.UpperDir {
		t.Fatalf("two writable mounts of one image: a %+v, b %+v: want one lower and pid, two upper dirs", a, b)
	}
	if n := fuseUnder(t, lowerDir); n != 1 {
		t.Errorf("FUSE mounts under %s: %d, want 1 (%v)", lowerDir, n, mountsUnder(t, lowerDir))
	}
	if n := len(servingPIDs(t, lowerDir)); n != 1 {
		t.Errorf("serving processes for %s: %d, want 1", lowerDir, n)
	}
	for _, m := range []writableMount{a, b} {
		if got := mountsUnder(t, m.Mountpoint); len(got) != 1 || !strings.HasSuffix(got[0], "(overlay)") {
			t.Errorf("mounts at %s: %v, want one overlay", m.Mountpoint, got)
		}
	}

	var lst, ast unix.Stat_t
	if err := unix.Stat(a.Lower, &lst); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(a.Mountpoint, &ast); err != nil {
		t.Fatal(err)
	}
	if ast.Mode != lst.Mode || ast.Uid != lst.Uid || ast.Gid != lst.Gid {
		t.Errorf("root of the writable mount: mode %o uid %d gid %d; image root: mode %o uid %d gid %d", ast.Mode, ast.Uid, ast.Gid, lst.Mode, lst.Uid, lst.Gid)
	}
	out := run(t, "chroot", a.Mountpoint, "sh", "-c", "echo x >/tmp/f && cat /tmp/f && rm /etc/hostname")
	if strings.TrimSpace(out) != "x" {
		t.Errorf("chroot write in a printed %q, want x", out)
	}
	if got, err := os.ReadFile(filepath.Join(a.UpperDir, "upper", "tmp", "f")); err != nil || string(got) != "x\n" {
		t.Errorf("upper directory of a: tmp/f = %q, %v; want \"x\\n\"", got, err)
	}
	if !isWhiteout(filepath.Join(a.UpperDir, "upper", "etc", "hostname")) {
		t.Errorf("upper directory of a: etc/hostname is not a whiteout")
	}
	if _, err := os.Lstat(filepath.Join(a.Mountpoint, "etc", "hostname")); !os.IsNotExist(err) {
		t.Errorf("a/etc/hostname after rm: %v, want not exist", err)
	}
	if _, err := os.Lstat(filepath.Join(b.Mountpoint, "tmp", "f")); !os.IsNotExist(err) {
		t.Errorf("b/tmp/f: %v, want not exist (b must see the pristine image)", err)
	}
	if _, err := os.Stat(filepath.Join(b.Mountpoint, "etc", "hostname")); err != nil {
		t.Errorf("b/etc/hostname: %v, want the image's file", err)
	}
	if _, err := os.Stat(filepath.Join(a.Lower, "etc", "hostname")); err != nil {
		t.Errorf("shared read-only mount lost etc/hostname: %v", err)
	}
	requirePython(t, b.Mountpoint)

	// keep_upper: the overlay goes, the upper directory stays and the
	// answer says where.
	status, body, _ := d.deleteMount(t, a.ID, "?keep_upper=true")
	var del writableMount
	if status != http.StatusOK || json.Unmarshal(body, &del) != nil || !strings.Contains(del.Note, filepath.Join(a.UpperDir, "upper")) {
		t.Fatalf("DELETE a?keep_upper=true: %d %s; want 200 with a note naming %s", status, body, a.UpperDir)
	}
	if got, err := os.ReadFile(filepath.Join(a.UpperDir, "upper", "tmp", "f")); err != nil || string(got) != "x\n" {
		t.Errorf("kept upper directory: tmp/f = %q, %v", got, err)
	}
	if got := mountsUnder(t, a.Mountpoint); len(got) != 0 {
		t.Errorf("mounts left at a: %v", got)
	}
	if n := fuseUnder(t, lowerDir); n != 1 {
		t.Errorf("after deleting a, b still uses the shared mount: FUSE mounts %d, want 1", n)
	}
	if err := os.RemoveAll(a.UpperDir); err != nil {
		t.Fatal(err)
	}
	if status, body, _ := d.deleteMount(t, b.ID, ""); status != http.StatusOK {
		t.Fatalf("DELETE b: %d %s", status, body)
	}
	if _, err := os.Stat(b.UpperDir); !os.IsNotExist(err) {
		t.Errorf("upper directory of b after DELETE: %v, want removed", err)
	}
	waitFor(t, "shared mount gone after its last user", 15*time.Second, func() bool { return fuseUnder(t, lowerDir) == 0 })
	waitGone(t, b.PID)
	if got := mountsUnder(t, filepath.Dir(d.mountRoot)); len(got) != 0 {
		t.Errorf("mounts left in /proc/self/mountinfo: %v", got)
	}
	if left, _ := os.ReadDir(upperDir); len(left) != 0 {
		t.Errorf("left under upper_dir: %v", left)
	}

	// 20 writable mounts of one image.
	const n = 20
	var times []time.Duration
	var ms []writableMount
	for i := range n {
		start := time.Now()
		ms = append(ms, d.mountWritable(t, archive, fmt.Sprintf("w%02d", i)))
		times = append(times, time.Since(start))
	}
	pids := servingPIDs(t, lowerDir)
	if len(pids) != 1 || fuseUnder(t, lowerDir) != 1 {
		t.Errorf("%d writable mounts: %d serving processes, %d FUSE mounts; want 1 and 1", n, len(pids), fuseUnder(t, lowerDir))
	}
	for _, m := range ms {
		if m.PID != ms[0].PID {
			t.Errorf("mount %s served by pid %d, mount %s by %d", m.ID, m.PID, ms[0].ID, ms[0].PID)
		}
	}
	run(t, "chroot", ms[n-1].Mountpoint, "/usr/bin/python3", "-c", "print(1)")
	var total, worst time.Duration
	for _, x := range times[1:] {
		total += x
		worst = max(worst, x)
	}
	t.Logf("figures: %d writable mounts of debian-python: %d serving process(es), %d FUSE mount(s), %d overlays; serving process RSS %d KiB (VmHWM %d KiB); mount time: first %s, others mean %s, max %s",
		n, len(pids), fuseUnder(t, lowerDir), n, vmKiB(t, fmt.Sprintf("/proc/%d/status", ms[0].PID), "VmRSS"),
		vmKiB(t, fmt.Sprintf("/proc/%d/status", ms[0].PID), "VmHWM"),
		times[0].Round(time.Millisecond), (total / time.Duration(n-1)).Round(time.Microsecond), worst.Round(time.Microsecond))
	start := time.Now()
	for _, m := range ms {
		if status, body, _ := d.deleteMount(t, m.ID, ""); status != http.StatusOK {
			t.Fatalf("DELETE %s: %d %s", m.ID, status, body)
		}
	}
	t.Logf("figures: %d writable mounts deleted in %s", n, time.Since(start).Round(time.Millisecond))
	waitGone(t, ms[0].PID)
	if got := mountsUnder(t, filepath.Dir(d.mountRoot)); len(got) != 0 {
		t.Errorf("mounts left in /proc/self/mountinfo: %v", got)
	}
	if left, _ := os.ReadDir(upperDir); len(left) != 0 {
		t.Errorf("left under upper_dir: %v", left)
	}
}

// startWriter runs a shell inside dir that appends a line to dir/log every
// 20ms until killed.
func startWriter(t *testing.T, dir string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sh", "-c", `i=0; while :; do echo $i >>log; i=$((i+1)); sleep 0.02; done`)
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); _ = cmd.Wait() })
	return cmd
}

// stopWriter ends a writer and its children.
func stopWriter(cmd *exec.Cmd) {
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	_ = cmd.Wait()
}

// logGrows waits until the writer's log (in the upper directory) grows.
func logGrows(t *testing.T, path string) {
	t.Helper()
	st, _ := os.Stat(path)
	var before int64
	if st != nil {
		before = st.Size()
	}
	waitFor(t, "writer's log grows in "+path, 15*time.Second, func() bool {
		st, err := os.Stat(path)
		return err == nil && st.Size() > before
	})
}

// TestWritableRestart kills the daemon with SIGKILL while a process writes
// in a writable mount: it keeps writing, and the new daemon lists both
// writable mounts, served by the same shared process, and unmounts them.
func TestWritableRestart(t *testing.T) {
	requireE2ETools(t)
	defer timed(t, "TestWritableRestart")()
	d, archive := indexedFixture(t)
	a := d.mountWritable(t, archive, "a")
	b := d.mountWritable(t, archive, "b")
	// c, on a copy of the archive (another shared mount), stands for a
	// mount the daemon was killed while making: its shared mount is up but
	// the table does not record it.
	archiveC := filepath.Join(filepath.Dir(archive), "copy.clip")
	run(t, "cp", archive, archiveC)
	c := d.mountWritable(t, archiveC, "c")
	if c.Lower == a.Lower {
		t.Fatalf("a copy of the archive shares the shared mount of the original: %s", c.Lower)
	}
	w := startWriter(t, a.Mountpoint)
	logPath := filepath.Join(a.UpperDir, "upper", "log")
	logGrows(t, logPath)

	if err := d.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-d.exited
	forgetMount(t, d, c.ID)
	if err := unix.Unmount(c.Mountpoint, 0); err != nil {
		t.Fatal(err)
	}
	logGrows(t, logPath) // the overlay needs no daemon

	d2 := relaunch(t, d, nil)
	waitHealthy(t, d2, time.Now())
	var after map[string]apiMount
	waitFor(t, "restarted daemon lists both mounts", 15*time.Second, func() bool { after = listMounts(t, d2); return len(after) == 2 })
	for _, m := range []writableMount{a, b} {
		if got := after[m.ID]; got.State != "active" || got.PID != a.PID {
			t.Errorf("mount %s after the restart: %+v, want active, pid %d", m.ID, got, a.PID)
		}
	}
	var mi writableMount
	status, body, _ := d2.request(http.MethodGet, "/v1/mounts/"+a.ID, nil)
	if status != http.StatusOK || json.Unmarshal(body, &mi) != nil || !mi.Writable || mi.UpperDir != a.UpperDir || mi.Lower != a.Lower {
		t.Errorf("GET %s after the restart: %d %s", a.ID, status, body)
	}
	logGrows(t, logPath)
	waitGone(t, c.PID) // the shared mount nobody records was swept
	if n := fuseUnder(t, filepath.Join(d.stateDir(), "lower")); n != 1 {
		t.Errorf("shared mounts after the restart: %d, want 1 (%v)", n, mountsUnder(t, filepath.Join(d.stateDir(), "lower")))
	}
	if err := os.RemoveAll(c.UpperDir); err != nil {
		t.Fatal(err)
	}
	if status, body, _ := d2.deleteMount(t, a.ID, ""); status != http.StatusConflict {
		t.Errorf("DELETE of a writable mount a process works in: %d %s, want 409", status, body)
	}
	stopWriter(w)
	for _, m := range []writableMount{a, b} {
		if status, body, _ := d2.deleteMount(t, m.ID, ""); status != http.StatusOK {
			t.Fatalf("DELETE %s after the restart: %d %s", m.ID, status, body)
		}
	}
	waitGone(t, a.PID)
	if got := mountsUnder(t, filepath.Dir(d.mountRoot)); len(got) != 0 {
		t.Errorf("mounts left: %v", got)
	}
	if left, _ := os.ReadDir(filepath.Join(d.stateDir(), "upper")); len(left) != 0 {
		t.Errorf("left under upper_dir: %v", left)
	}
}

// TestUnmountBusy: DELETE of a mount that something holds answers 409 at
// once naming it (a bind mount inside a read-only mount, an overlay over
// it, a process working in a writable mount), and force=true answers at
// once too; the filesystems then go once their last user leaves.
func TestUnmountBusy(t *testing.T) {
	requireE2ETools(t)
	defer timed(t, "TestUnmountBusy")()
	d, archive := indexedFixture(t)
	const bound = time.Second

	// A bind mount on a directory of a read-only mount.
	id, mp := d.mount(t, archive, "ro")
	pid := servingPID(t, d, id)
	sub := ""
	ents, err := os.ReadDir(mp)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.IsDir() {
			sub = filepath.Join(mp, e.Name())
			break
		}
	}
	if sub == "" {
		t.Fatalf("fixture has no directory at its top")
	}
	if err := unix.Mount(t.TempDir(), sub, "", unix.MS_BIND, ""); err != nil {
		t.Fatalf("bind mount on %s: %v", sub, err)
	}
	status, body, took := d.deleteMount(t, id, "")
	if status != http.StatusConflict || !strings.Contains(string(body), sub) || took >= bound {
		t.Errorf("DELETE under a bind mount: %d %s in %s; want 409 naming %s within %s", status, body, took, sub, bound)
	}
	t.Logf("timing: DELETE under a bind mount: %d in %s", status, took)

	// An overlay over the read-only mount, made by hand.
	ovl := filepath.Join(t.TempDir(), "ovl")
	up, wk := filepath.Join(filepath.Dir(ovl), "up"), filepath.Join(filepath.Dir(ovl), "wk")
	for _, p := range []string{ovl, up, wk} {
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Unmount(sub, 0); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("overlay", ovl, "overlay", 0, "lowerdir="+mp+",upperdir="+up+",workdir="+wk); err != nil {
		t.Fatalf("overlay over %s: %v", mp, err)
	}
	status, body, took = d.deleteMount(t, id, "")
	if status != http.StatusConflict || !strings.Contains(string(body), ovl) || took >= bound {
		t.Errorf("DELETE under an overlay: %d %s in %s; want 409 naming %s within %s", status, body, took, ovl, bound)
	}
	t.Logf("timing: DELETE under an overlay: %d in %s", status, took)
	status, body, took = d.deleteMount(t, id, "?force=true")
	if status != http.StatusOK || took >= bound {
		t.Errorf("DELETE ?force=true under an overlay: %d %s in %s; want 200 within %s", status, body, took, bound)
	}
	t.Logf("timing: DELETE ?force=true under an overlay: %d in %s", status, took)
	if mounted(t, mp) {
		t.Errorf("%s still mounted after a forced DELETE", mp)
	}
	if err := unix.Unmount(ovl, 0); err != nil {
		t.Fatal(err)
	}
	waitGone(t, pid) // its last user left

	// A process working in a writable mount.
	w := d.mountWritable(t, archive, "rw")
	cmd := exec.Command("sleep", "600")
	cmd.Dir = w.Mountpoint
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	status, body, took = d.deleteMount(t, w.ID, "")
	if status != http.StatusConflict || !strings.Contains(string(body), fmt.Sprintf("pid %d", cmd.Process.Pid)) || took >= bound {
		t.Errorf("DELETE with a process inside: %d %s in %s; want 409 naming pid %d within %s", status, body, took, cmd.Process.Pid, bound)
	}
	t.Logf("timing: DELETE with a process inside: %d in %s: %s", status, took, body)
	status, body, took = d.deleteMount(t, w.ID, "?force=true")
	if status != http.StatusOK || took >= bound {
		t.Errorf("DELETE ?force=true with a process inside: %d %s in %s; want 200 within %s", status, body, took, bound)
	}
	t.Logf("timing: DELETE ?force=true with a process inside: %d in %s: %s", status, took, body)
	// The process still works in the detached overlay.
	if _, err := os.ReadDir(fmt.Sprintf("/proc/%d/cwd", cmd.Process.Pid)); err != nil {
		t.Errorf("process inside the detached overlay: %v", err)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	waitGone(t, w.PID)

	// A container: another mount namespace holds a copy of the overlay
	// (runc makes one); the daemon's own unmount would succeed and pull
	// the upper directory from under it.
	c := d.mountWritable(t, archive, "ctr")
	ns := exec.Command("unshare", "--mount", "--propagation", "private", "sleep", "600")
	ns.Dir = "/"
	if err := ns.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ns.Process.Kill(); _ = ns.Wait() })
	waitFor(t, "unshare's namespace", 15*time.Second, func() bool {
		a, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", ns.Process.Pid))
		b, _ := os.Readlink("/proc/self/ns/mnt")
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", ns.Process.Pid))
		return a != "" && a != b && strings.TrimSpace(string(comm)) == "sleep"
	})
	status, body, took = d.deleteMount(t, c.ID, "")
	if status != http.StatusConflict || !strings.Contains(string(body), fmt.Sprintf("mount namespace of pid %d", ns.Process.Pid)) || took >= bound {
		t.Errorf("DELETE of a mount another namespace holds: %d %s in %s; want 409 naming pid %d within %s", status, body, took, ns.Process.Pid, bound)
	}
	t.Logf("timing: DELETE of a mount another namespace holds: %d in %s", status, took)
	status, body, took = d.deleteMount(t, c.ID, "?force=true")
	if status != http.StatusOK || !strings.Contains(string(body), "upper directory kept") || took >= bound {
		t.Errorf("DELETE ?force=true of a mount another namespace holds: %d %s in %s; want 200 keeping the upper directory within %s", status, body, took, bound)
	}
	_ = ns.Process.Kill()
	_ = ns.Wait()
	waitGone(t, c.PID)
	if got := mountsUnder(t, filepath.Dir(d.mountRoot)); len(got) != 0 {
		t.Errorf("mounts left: %v", got)
	}
	if list := listMounts(t, d); len(list) != 0 {
		t.Errorf("mounts listed: %v", list)
	}
}

// TestUnmountWedged stops a serving process (SIGSTOP): DELETE does not
// hang, it kills the process after a bounded time, detaches its mount and
// says so in the answer.
func TestUnmountWedged(t *testing.T) {
	requireE2ETools(t)
	defer timed(t, "TestUnmountWedged")()
	d, archive := indexedFixture(t)
	id, mp := d.mount(t, archive, "wedged")
	pid := servingPID(t, d, id)
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	status, body, took := d.deleteMount(t, id, "")
	var mi writableMount
	if status != http.StatusOK || json.Unmarshal(body, &mi) != nil || !strings.Contains(mi.Note, "killed") {
		t.Errorf("DELETE of a mount whose serving process is stopped: %d %s; want 200 with a note that it was killed", status, body)
	}
	if took > 20*time.Second {
		t.Errorf("DELETE of a wedged mount took %s, want within 20s", took)
	}
	t.Logf("timing: DELETE of a wedged mount: %d in %s: %s", status, took.Round(time.Millisecond), mi.Note)
	waitGone(t, pid)
	if mounted(t, mp) {
		t.Errorf("%s still mounted", mp)
	}
}

// forgetMount removes mount id from the stopped daemon's mount table, as if
// the daemon had been killed before recording it.
func forgetMount(t *testing.T, d *daemon, id string) {
	t.Helper()
	p := filepath.Join(d.stateDir(), "mounts.json")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	var keep []any
	for _, m := range doc["mounts"].([]any) {
		if m.(map[string]any)["id"] != id {
			keep = append(keep, m)
		}
	}
	doc["mounts"] = keep
	if b, err = json.Marshal(doc); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestWritableLowerCrash kills the serving process of a shared read-only
// mount: every writable mount on it is reported failed, deleting them
// removes their overlays and upper directories, and the next writable mount
// of the image starts a new shared mount.
func TestWritableLowerCrash(t *testing.T) {
	requireE2ETools(t)
	defer timed(t, "TestWritableLowerCrash")()
	d, archive := indexedFixture(t)
	a := d.mountWritable(t, archive, "a")
	b := d.mountWritable(t, archive, "b")
	if err := syscall.Kill(a.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "both writable mounts failed", 15*time.Second, func() bool {
		l := listMounts(t, d)
		return l[a.ID].State == "failed" && l[b.ID].State == "failed"
	})
	waitFor(t, "dead shared mount detached", 15*time.Second, func() bool { return fuseUnder(t, filepath.Join(d.stateDir(), "lower")) == 0 })
	for _, m := range []writableMount{a, b} {
		if status, body, _ := d.deleteMount(t, m.ID, ""); status != http.StatusOK {
			t.Fatalf("DELETE failed writable mount %s: %d %s", m.ID, status, body)
		}
		if mounted(t, m.Mountpoint) {
			t.Errorf("overlay at %s left after DELETE", m.Mountpoint)
		}
		if _, err := os.Stat(m.UpperDir); !os.IsNotExist(err) {
			t.Errorf("upper directory %s after DELETE: %v", m.UpperDir, err)
		}
	}
	c := d.mountWritable(t, archive, "c")
	if c.PID == a.PID {
		t.Errorf("new writable mount served by the killed pid %d", a.PID)
	}
	if _, err := os.ReadDir(c.Mountpoint); err != nil {
		t.Errorf("new writable mount after the crash: %v", err)
	}
	if status, body, _ := d.deleteMount(t, c.ID, ""); status != http.StatusOK {
		t.Fatalf("DELETE %s: %d %s", c.ID, status, body)
	}
	waitGone(t, c.PID)
	if got := mountsUnder(t, filepath.Dir(d.mountRoot)); len(got) != 0 {
		t.Errorf("mounts left: %v", got)
	}
}
