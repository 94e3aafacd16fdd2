package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/clipd/clipd/internal/fixture"
	"golang.org/x/sys/unix"
)

// spares lists the spare serving processes (serve-mount --spare-fd) of the
// daemons using d's cache directory.
func spares(t testing.TB, d *daemon) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		i := slices.Index(args, "--cache")
		if slices.Contains(args, "serve-mount") && slices.Contains(args, "--spare-fd") && i >= 0 && i+1 < len(args) && args[i+1] == d.cacheDir {
			if st, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat")); err == nil && !strings.Contains(string(st), ") Z ") {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// waitSpare waits for d's one spare serving process other than not.
func waitSpare(t testing.TB, d *daemon, not ...int) int {
	t.Helper()
	return waitSpareWith(t, d, false, not)
}

// waitSpareReady is waitSpare, and waits for the daemon (logging at debug)
// to log the spare ready: a spare prepares the start-up work that does not
// depend on a request first, and a request that comes before does not
// wait for it.
func waitSpareReady(t testing.TB, d *daemon, not ...int) int {
	t.Helper()
	return waitSpareWith(t, d, true, not)
}

func waitSpareWith(t testing.TB, d *daemon, ready bool, not []int) int {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); ; {
		// A spare that took a request keeps its command line: the
		// caller names those in not.
		s := slices.DeleteFunc(spares(t, d), func(p int) bool { return slices.Contains(not, p) })
		if len(s) == 1 {
			if !ready {
				return s[0]
			}
			log, _ := os.ReadFile(d.log)
			if bytes.Contains(log, []byte(fmt.Sprintf("msg=\"spare serving process ready\" pid=%d ", s[0]))) {
				return s[0]
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no (single) new spare serving process (ready: %v): %v (not %v)\n%s", ready, spares(t, d), not, d.logTail())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func procArgs(pid int) []string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
}

// sharesFile reports whether pid's descriptor fd is the same open file
// (kcmp(2) KCMP_FILE: inherited or passed, not opened again) as one of
// other's descriptors ofds.
func sharesFile(t testing.TB, other int, ofds []string, pid int, fd string) bool {
	t.Helper()
	n, _ := strconv.Atoi(fd)
	for _, ofd := range ofds {
		o, _ := strconv.Atoi(ofd)
		const kcmpFile = 0
		r, _, errno := unix.Syscall6(unix.SYS_KCMP, uintptr(other), uintptr(pid), kcmpFile, uintptr(o), uintptr(n), 0)
		if errno != 0 {
			t.Fatalf("kcmp pid %d fd %d, pid %d fd %d: %v", other, o, pid, n, errno)
		}
		if r == 0 {
			return true
		}
	}
	return false
}

// fdTargets are the targets of pid's descriptors from 3 on.
func fdTargets(t testing.TB, pid int) map[string]string {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range ents {
		if n, _ := strconv.Atoi(e.Name()); n < 3 {
			continue
		}
		if l, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil {
			out[e.Name()] = l
		}
	}
	return out
}

// TestSpareServingProcess: a mount is served by the spare started in
// advance, which has the limits of any serving process and none of the
// daemon's descriptors; a new spare follows; the spare dies with the
// daemon; the mount it serves is adopted after a restart.
func TestSpareServingProcess(t *testing.T) {
	requireE2ETools(t)
	defer timed(t, "TestSpareServingProcess")()
	d, archive := layoutFixture(t)
	cleanupMounts(t, d)
	sp := waitSpareReady(t, d)

	// Sockets (the API listener, the daemon's end of the spare's
	// socket) and files of the daemon's directory (the state-dir lock)
	// must not leak into the spare. Other shared targets (/dev/null, the
	// runtime's cgroup files, anon inodes) are not the daemon's.
	tmp := filepath.Dir(d.config)
	daemonFDs := map[string][]string{}
	for fd, l := range fdTargets(t, d.cmd.Process.Pid) {
		daemonFDs[l] = append(daemonFDs[l], fd)
	}
	for fd, l := range fdTargets(t, sp) {
		leaked := strings.HasPrefix(l, "socket:") && len(daemonFDs[l]) > 0
		if strings.HasPrefix(l, tmp+"/") {
			// The spare opens the cache itself before its request: its
			// own descriptors of the cache's files are fine, the
			// daemon's (the same open file, inherited) are not.
			leaked = !strings.HasPrefix(l, d.cacheDir+"/") || sharesFile(t, d.cmd.Process.Pid, daemonFDs[l], sp, fd)
		}
		if leaked {
			t.Errorf("spare pid %d holds the daemon's descriptor %s (fd %s)", sp, l, fd)
		}
	}
	env, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", sp))
	if bytes.Contains(env, []byte("CLIPD_PEER=")) || bytes.Contains(env, []byte("CLIPD_MOUNTPOINT_FD=")) {
		t.Errorf("spare environment has request variables: %q", env)
	}
	if !bytes.Contains(env, []byte("GOMEMLIMIT=")) {
		t.Errorf("spare environment has no GOMEMLIMIT")
	}
	limits, _ := os.ReadFile(fmt.Sprintf("/proc/%d/limits", sp))
	if !lineHasField(string(limits), "Max data size", "1073741824") {
		t.Errorf("spare RLIMIT_DATA not set:\n%s", limits)
	}
	if sid, _ := unix.Getsid(sp); sid != sp {
		t.Errorf("spare pid %d is in session %d, not its own", sp, sid)
	}

	id, mp := d.mount(t, archive, "a")
	if m := listMounts(t, d)[id]; m.PID != sp || m.State != "active" {
		t.Fatalf("mount %+v is not served by the spare pid %d", m, sp)
	}
	if got, err := os.ReadFile(filepath.Join(mp, "big", "blob")); err != nil || !bytes.Equal(got, fixture.Big()) {
		t.Fatalf("read through the spare-served mount: %d bytes, %v", len(got), err)
	}
	// ps shows it as a serving process started for this mount.
	if args := procArgs(sp); !slices.Contains(args, mp) || !slices.Contains(args, id) || slices.Contains(args, "--spare-fd") {
		t.Errorf("command line of the spare serving %s: %q", mp, args)
	}
	sp2 := waitSpare(t, d, sp)

	// The daemon dies: its spare must not stay behind; the mount stays.
	if err := d.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-d.exited
	waitGone(t, sp2)
	if got, err := os.ReadFile(filepath.Join(mp, "big", "blob")); err != nil || !bytes.Equal(got, fixture.Big()) {
		t.Fatalf("read while the daemon is dead: %d bytes, %v", len(got), err)
	}
	d2 := relaunch(t, d, nil)
	waitHealthy(t, d2, time.Now())
	var m apiMount
	for deadline := time.Now().Add(30 * time.Second); ; {
		if m = listMounts(t, d2)[id]; m.State == "active" || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if m.PID != sp || m.State != "active" {
		t.Fatalf("after the restart the mount is %+v, want active, served by pid %d", m, sp)
	}
	sp3 := waitSpare(t, d2, sp, sp2)
	if got, err := os.ReadFile(filepath.Join(mp, "big", "blob")); err != nil || !bytes.Equal(got, fixture.Big()) {
		t.Fatalf("read after the restart: %d bytes, %v", len(got), err)
	}
	d2.umount(t, id, mp)
	waitGone(t, sp)

	// Stopped cleanly, the daemon takes its spare along.
	d2.stop(t)
	waitGone(t, sp3)
}

// lineHasField tells whether a line of text starts with prefix and holds
// field.
func lineHasField(text, prefix, field string) bool {
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, prefix) && slices.Contains(strings.Fields(l), field) {
			return true
		}
	}
	return false
}

// TestSpareReplacedOnReload: a reload that changes a setting the spare was
// started with replaces it; turning spares off leaves none, and mounts
// start their own serving process.
func TestSpareReplacedOnReload(t *testing.T) {
	requireE2ETools(t)
	defer timed(t, "TestSpareReplacedOnReload")()
	d, archive := layoutFixture(t)
	cleanupMounts(t, d)
	sp := waitSpare(t, d)
	if !slices.Contains(procArgs(sp), "debug") {
		t.Fatalf("spare args %q: want --log-level debug", procArgs(sp))
	}
	reload := func(from, to string) {
		t.Helper()
		b, err := os.ReadFile(d.config)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(b, []byte(from)) {
			t.Fatalf("config has no %q", from)
		}
		if err := os.WriteFile(d.config, bytes.Replace(b, []byte(from), []byte(to), 1), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}
	reload(`log_level = "debug"`, `log_level = "info"`)
	waitGone(t, sp)
	sp2 := waitSpare(t, d, sp)
	if args := procArgs(sp2); !slices.Contains(args, "info") {
		t.Errorf("new spare args %q: want --log-level info", args)
	}

	reload(`log_level = "info"`, "log_level = \"info\"\nspare_serving_process = false")
	waitGone(t, sp2)
	time.Sleep(300 * time.Millisecond)
	if s := spares(t, d); len(s) != 0 {
		t.Fatalf("spares %v left with spare_serving_process = false", s)
	}
	id, mp := d.mount(t, archive, "a")
	m := listMounts(t, d)[id]
	if args := procArgs(m.PID); !slices.Contains(args, "--id") || slices.Contains(args, "--spare-fd") {
		t.Errorf("mount served by pid %d %q, want an exec'd serving process", m.PID, args)
	}
	if s := spares(t, d); len(s) != 0 {
		t.Errorf("spare %v started after a mount with spare_serving_process = false", s)
	}
	d.umount(t, id, mp)
}

// TestSpareKilledFallsBackToExec: a spare that died just before a request
// costs nothing but the speed-up: the mount starts its own process.
func TestSpareKilledFallsBackToExec(t *testing.T) {
	requireE2ETools(t)
	defer timed(t, "TestSpareKilledFallsBackToExec")()
	d, archive := layoutFixture(t)
	cleanupMounts(t, d)
	sp := waitSpare(t, d)
	if err := syscall.Kill(sp, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	id, mp := d.mount(t, archive, "a")
	m := listMounts(t, d)[id]
	if m.PID == sp || m.State != "active" {
		t.Fatalf("mount %+v after the spare pid %d was killed", m, sp)
	}
	if got, err := os.ReadFile(filepath.Join(mp, "big", "blob")); err != nil || !bytes.Equal(got, fixture.Big()) {
		t.Fatalf("read: %d bytes, %v", len(got), err)
	}
	waitSpare(t, d, sp, m.PID)
	d.umount(t, id, mp)
}

// TestSpareRejectsGarbage talks to a spare directly: anything but a
// well-formed request with the descriptors it announces makes it exit with
// an error, mounting nothing; a closed socket makes it exit quietly.
func TestSpareRejectsGarbage(t *testing.T) {
	requireE2ETools(t)
	bin := clipdBin(t)
	dir := t.TempDir()
	mp := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mp, 0o755); err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(dir, "x.clip")
	os.WriteFile(archive, []byte("not an archive"), 0o644)
	req := func(extra string) []byte {
		return []byte(fmt.Sprintf(`{"id":"x","archive":%q,"mountpoint":%q,"control":%q%s}`, archive, mp, filepath.Join(dir, "x.sock"), extra))
	}
	cases := []struct {
		name     string
		msg      []byte
		withDir  bool // send the mountpoint directory
		withPipe bool // send a pipe
		wantOK   bool
	}{
		{name: "garbage", msg: []byte("\x00\xffhello"), withDir: true, withPipe: true},
		{name: "unknown field", msg: req(`,"mount_anyway":true`), withPipe: true},
		{name: "too many descriptors", msg: req(""), withDir: true, withPipe: true},
		{name: "missing descriptors", msg: req(`,"dir":true`), withPipe: true},
		{name: "no descriptors", msg: req("")},
		{name: "closed", wantOK: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			ours, theirs := os.NewFile(uintptr(pair[0]), "ours"), os.NewFile(uintptr(pair[1]), "theirs")
			defer ours.Close()
			var stderr bytes.Buffer
			cmd := exec.Command(bin, "serve-mount", "--spare-fd", "3", "--cache", filepath.Join(dir, "cache"), "--log-level", "debug")
			cmd.ExtraFiles = []*os.File{theirs}
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			theirs.Close()
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			buf := make([]byte, 16)
			if n, err := unix.Read(int(ours.Fd()), buf); err != nil || string(buf[:n]) != "ready" {
				t.Fatalf("spare said %q, %v; want ready", buf[:n], err)
			}
			if c.msg == nil {
				ours.Close()
			} else {
				var fds []int
				rd, wr, _ := os.Pipe()
				defer rd.Close()
				defer wr.Close()
				if c.withPipe {
					fds = append(fds, int(wr.Fd()))
				}
				if c.withDir {
					df, err := os.Open(mp)
					if err != nil {
						t.Fatal(err)
					}
					defer df.Close()
					fds = append(fds, int(df.Fd()))
				}
				var oob []byte
				if len(fds) > 0 {
					oob = unix.UnixRights(fds...)
				}
				if err := unix.Sendmsg(int(ours.Fd()), c.msg, oob, nil, 0); err != nil {
					t.Fatal(err)
				}
			}
			select {
			case err := <-exited:
				var ee *exec.ExitError
				if c.wantOK && err != nil {
					t.Errorf("spare exited with %v, want 0:\n%s", err, stderr.String())
				}
				if !c.wantOK && !errors.As(err, &ee) {
					t.Errorf("spare exited with %v, want an error:\n%s", err, stderr.String())
				}
			case <-time.After(10 * time.Second):
				_ = cmd.Process.Kill()
				<-exited
				t.Fatalf("spare still running 10s after the message:\n%s", stderr.String())
			}
			if mounted(t, mp) {
				_ = unix.Unmount(mp, unix.MNT_DETACH)
				t.Fatalf("the spare mounted something at %s", mp)
			}
			if _, err := os.Stat(filepath.Join(dir, "x.sock")); err == nil {
				t.Errorf("the spare created its control socket")
			}
			t.Logf("spare: %v; stderr: %s", c.name, strings.TrimSpace(stderr.String()))
		})
	}
}
