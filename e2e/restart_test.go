package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/clipd/clipd/internal/fixture"
	"github.com/clipd/clipd/internal/testenv"
	"golang.org/x/sys/unix"
)

// relaunch starts another clipd serve on d's config and log, as systemd
// does after a crash, and returns it once /v1/health answers. argv replaces
// the command line when set (socket activation); env is added to it.
func relaunch(t *testing.T, d *daemon, argv []string, env ...string) *daemon {
	t.Helper()
	if argv == nil {
		argv = []string{d.bin, "serve", "--keep-mounts", "--config", d.config}
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	return relaunchCmd(t, d, cmd)
}

// apiMount is the part of a GET /v1/mounts entry these tests read.
type apiMount struct {
	ID         string `json:"id"`
	Mountpoint string `json:"mountpoint"`
	State      string `json:"state"`
	Error      string `json:"error"`
	PID        int    `json:"pid"`
	Version    string `json:"version"`
	Stats      struct {
		Reads int64 `json:"reads"`
	} `json:"stats"`
}

func listMounts(t *testing.T, d *daemon) map[string]apiMount {
	t.Helper()
	status, body, err := d.request(http.MethodGet, "/v1/mounts", nil)
	if err != nil || status != http.StatusOK {
		t.Fatalf("GET /v1/mounts: %d %s %v", status, body, err)
	}
	var list []apiMount
	if err := json.Unmarshal(body, &list); err != nil {
		t.Fatalf("GET /v1/mounts: %v: %s", err, body)
	}
	out := map[string]apiMount{}
	for _, m := range list {
		out[m.ID] = m
	}
	return out
}

// fixtureFiles are the regular files of the fixture with their content.
func fixtureFiles() map[string][]byte {
	out := map[string][]byte{}
	for _, e := range fixture.Expected() {
		if e.Mode&unix.S_IFMT == unix.S_IFREG {
			out[e.Path] = e.Data
		}
	}
	return out
}

// reader reads every file of a mount in a loop, checking every byte, and
// drops the pages it read so that the next pass goes to the FUSE server
// again, not to the page cache.
type reader struct {
	mp    string
	files map[string][]byte

	mu     sync.Mutex
	passes int
	bytes  int64
	errs   []string
	stop   chan struct{}
	done   chan struct{}
}

func startReader(mp string, files map[string][]byte) *reader {
	r := &reader{mp: mp, files: files, stop: make(chan struct{}), done: make(chan struct{})}
	go r.loop()
	return r
}

func (r *reader) loop() {
	defer close(r.done)
	for {
		for p, want := range r.files {
			select {
			case <-r.stop:
				return
			default:
			}
			got, err := readUncached(filepath.Join(r.mp, p))
			r.mu.Lock()
			r.bytes += int64(len(got))
			switch {
			case err != nil:
				r.errs = append(r.errs, fmt.Sprintf("%s: %v", p, err))
			case !bytes.Equal(got, want):
				r.errs = append(r.errs, fmt.Sprintf("%s: %d bytes differ from the image's %d", p, len(got), len(want)))
			}
			r.mu.Unlock()
		}
		r.mu.Lock()
		r.passes++
		r.mu.Unlock()
	}
}

func readUncached(p string) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(f); err != nil {
		return buf.Bytes(), err
	}
	_ = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
	return buf.Bytes(), nil
}

func (r *reader) state() (passes int, errs []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.passes, append([]string(nil), r.errs...)
}

// waitPasses waits until n more passes completed.
func (r *reader) waitPasses(t *testing.T, n int) {
	t.Helper()
	start, _ := r.state()
	for deadline := time.Now().Add(60 * time.Second); ; {
		if p, _ := r.state(); p >= start+n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("reader of %s did not finish %d passes within 60s", r.mp, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (r *reader) finish() (passes int, errs []string) {
	close(r.stop)
	<-r.done
	return r.state()
}

// TestDaemonRestartKeepsMounts kills the daemon with SIGKILL while a reader
// loops over every file of a mount, and starts it again: the reader sees no
// error and every byte right (the serving processes never stopped), the new
// daemon lists the same mounts, served by the same processes, and unmounts
// them.
func TestDaemonRestartKeepsMounts(t *testing.T) {
	requireE2ETools(t)
	defer timed(t, "TestDaemonRestartKeepsMounts")()
	dir, layout := fixtureLayout(t)
	host := testenv.StartRegistry(t)
	testenv.PushLayout(t, layout, "fixture", host+"/fixture:v1")
	d := startDaemon(t)
	archive := d.index(t, host+"/fixture:v1", filepath.Join(dir, "fixture.clip"))
	idA, mpA := d.mount(t, archive, "a")
	idB, mpB := d.mount(t, archive, "b")
	before := listMounts(t, d)
	for _, id := range []string{idA, idB} {
		m := before[id]
		if m.State != "active" || m.PID <= 0 || m.PID == d.cmd.Process.Pid || m.Version == "" {
			t.Fatalf("mount %s before the restart: %+v (daemon pid %d)", id, m, d.cmd.Process.Pid)
		}
	}

	files := fixtureFiles()
	r := startReader(mpA, files)
	r.waitPasses(t, 1)
	readsBefore := listMounts(t, d)[idA].Stats.Reads

	if err := d.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-d.exited
	// The data plane does not need the daemon.
	r.waitPasses(t, 2)
	if got, err := os.ReadFile(filepath.Join(mpB, "big", "blob")); err != nil || !bytes.Equal(got, fixture.Big()) {
		t.Errorf("mount b while the daemon is dead: %d bytes, %v", len(got), err)
	}

	start := time.Now()
	d2 := relaunch(t, d, nil)
	health := waitHealthy(t, d2, start)
	var after map[string]apiMount
	for {
		after = listMounts(t, d2)
		if len(after) == 2 {
			break
		}
		if time.Since(start) > 30*time.Second {
			t.Fatalf("restarted daemon lists %v", after)
		}
	}
	t.Logf("timing: restart: /v1/health answers %s after the new daemon started, /v1/mounts lists the adopted mounts after %s",
		health.Round(time.Microsecond), time.Since(start).Round(time.Microsecond))
	for _, id := range []string{idA, idB} {
		b, a := before[id], after[id]
		if a.State != "active" || a.PID != b.PID || a.Version != b.Version || a.Mountpoint != b.Mountpoint {
			t.Errorf("mount %s after the restart: %+v, before: %+v", id, a, b)
		}
	}
	r.waitPasses(t, 1)
	passes, errs := r.finish()
	if len(errs) > 0 {
		t.Errorf("%d read errors across the daemon restart (of %d passes); first: %s", len(errs), passes, strings.Join(errs[:min(5, len(errs))], "; "))
	}
	if readsAfter := listMounts(t, d2)[idA].Stats.Reads; readsAfter <= readsBefore {
		t.Errorf("reads of mount a: %d before the kill, %d after the restart: the reader did not reach FUSE", readsBefore, readsAfter)
	}
	t.Logf("reader: %d passes over %d files, %d errors", passes, len(files), len(errs))

	d2.umount(t, idA, mpA)
	d2.umount(t, mpB, mpB)
	for _, id := range []string{idA, idB} {
		waitGone(t, before[id].PID)
	}
	if list := listMounts(t, d2); len(list) != 0 {
		t.Errorf("mounts left after unmounting: %v", list)
	}
}

// waitGone waits for a serving process to exit.
func waitGone(t *testing.T, pid int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil || strings.Contains(string(b), ") Z ") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("serving process %d still running 10s after its unmount", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestServingProcessCrash kills one serving process: its mount alone fails
// and is reported (state, error, metrics, log); the other mount keeps
// serving; a restarted daemon still reports the failure; deleting the
// failed mount frees its mountpoint.
func TestServingProcessCrash(t *testing.T) {
	requireE2ETools(t)
	defer timed(t, "TestServingProcessCrash")()
	d, archive := layoutFixture(t, "--keep-mounts")
	idA, mpA := d.mount(t, archive, "a")
	idB, mpB := d.mount(t, archive, "b")
	pidA := listMounts(t, d)[idA].PID
	if err := syscall.Kill(pidA, syscall.SIGKILL); err != nil {
		t.Fatalf("kill serving process %d: %v", pidA, err)
	}
	var a apiMount
	for deadline := time.Now().Add(10 * time.Second); ; {
		if a = listMounts(t, d)[idA]; a.State == "failed" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("mount a not failed 10s after its serving process was killed: %+v", a)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(a.Error, fmt.Sprintf("pid %d died", pidA)) || !strings.Contains(a.Error, "killed") {
		t.Errorf("failure cause: %q", a.Error)
	}
	if b := listMounts(t, d)[idB]; b.State != "active" {
		t.Errorf("mount b: %+v", b)
	}
	if got, err := os.ReadFile(filepath.Join(mpB, "big", "blob")); err != nil || !bytes.Equal(got, fixture.Big()) {
		t.Errorf("mount b after a's serving process died: %d bytes, %v", len(got), err)
	}
	if mounted(t, mpA) {
		t.Errorf("the dead FUSE mount at %s was not detached", mpA)
	}
	status, text, err := d.request(http.MethodGet, "/metrics", nil)
	if err != nil || status != http.StatusOK {
		t.Fatalf("/metrics: %d %v", status, err)
	}
	metrics, err := testenv.ParseMetrics(string(text))
	if err != nil {
		t.Fatal(err)
	}
	metrics.Expect(t, "clipd_serving_process_failures_total", "counter", 1, nil)
	metrics.Expect(t, "clipd_mounts_failed", "gauge", 1, nil)
	metrics.Expect(t, "clipd_mount_up", "gauge", 0, map[string]string{"id": idA})
	metrics.Expect(t, "clipd_mount_up", "gauge", 1, map[string]string{"id": idB})
	if !strings.Contains(d.logTail(), "serving process failed; mount is failed") {
		t.Errorf("no log line for the failure:\n%s", d.logTail())
	}
	// clipd ls shows it too.
	if out := d.clipd(t, "ls"); !strings.Contains(out, "failed") || !strings.Contains(out, "VERSION") {
		t.Errorf("clipd ls:\n%s", out)
	}

	// A daemon that restarts keeps reporting it, and adopts b.
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-d.exited
	d2 := relaunch(t, d, nil)
	waitHealthy(t, d2, time.Now())
	list := listMounts(t, d2)
	if list[idA].State != "failed" || list[idB].State != "active" {
		t.Errorf("after a restart: %+v", list)
	}
	if status, body, err := d2.request(http.MethodDelete, "/v1/mounts/"+idA, nil); err != nil || status != http.StatusOK {
		t.Fatalf("delete failed mount: %d %s %v", status, body, err)
	}
	// The freed mountpoint mounts again.
	status, body, err := d2.request(http.MethodPost, "/v1/mounts", []byte(fmt.Sprintf(`{"archive":%q,"mountpoint":%q}`, archive, mpA)))
	if err != nil || status != http.StatusCreated {
		t.Fatalf("mount at the freed mountpoint: %d %s %v", status, body, err)
	}
	d2.umount(t, mpA, mpA)
	d2.umount(t, idB, mpB)
}

// heldSocket is the API socket as systemd's clipd.socket holds it: open
// across daemon restarts, so that calls made meanwhile wait in its backlog.
type heldSocket struct {
	ln   *net.UnixListener
	file *os.File
}

func holdSocket(t *testing.T, path string) *heldSocket {
	t.Helper()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	f, err := ln.File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close(); ln.Close() })
	return &heldSocket{ln: ln, file: f}
}

// launchActivated starts clipd serve with the held socket as fd 3 and
// LISTEN_PID naming it, which is what systemd does (the shell execs clipd,
// keeping its pid).
func launchActivated(t *testing.T, d *daemon, s *heldSocket) *daemon {
	t.Helper()
	cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" serve --config "$1"`, d.bin, d.config)
	cmd.ExtraFiles = []*os.File{s.file}
	return relaunchCmd(t, d, cmd)
}

// vmKiB reads a "Key:   N kB" line of /proc/pid/status or smaps_rollup.
func vmKiB(t *testing.T, file, key string) int64 {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("read %s: %v", file, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && k == key {
			var n int64
			fmt.Sscanf(strings.TrimSpace(v), "%d", &n)
			return n
		}
	}
	t.Fatalf("%s: no %s", file, key)
	return 0
}

// TestRestartUnderSocketActivation mounts debian-python 8 times, runs
// python3 in one mount, SIGKILLs the daemon and starts it again on the
// socket a service manager holds: an API call made while no daemon runs
// waits and succeeds, the new daemon adopts all 8 mounts, python3 still
// runs in them, and they unmount. It logs the memory of the serving
// processes and how long the restart kept API calls waiting.
func TestRestartUnderSocketActivation(t *testing.T) {
	requireE2ETools(t)
	defer timed(t, "TestRestartUnderSocketActivation")()
	layout := testenv.DebianPythonLayout(t)
	d := newDaemonConfig(t, "", "")
	held := holdSocket(t, d.socket)
	d1 := launchActivated(t, d, held)
	waitHealthy(t, d1, time.Now())
	archive := d1.index(t, "oci-layout:"+layout+":python", filepath.Join(t.TempDir(), "python.clip"))
	const n = 8
	ids, mps := make([]string, n), make([]string, n)
	for i := range n {
		ids[i], mps[i] = d1.mount(t, archive, fmt.Sprintf("py%d", i))
	}
	requirePython(t, mps[0])
	list := listMounts(t, d1)
	pid0 := list[ids[0]].PID
	rss0 := vmKiB(t, fmt.Sprintf("/proc/%d/status", pid0), "VmRSS")
	pss0 := vmKiB(t, fmt.Sprintf("/proc/%d/smaps_rollup", pid0), "Pss")
	idle := list[ids[n-1]].PID
	t.Logf("memory: serving process after python3: VmRSS %d KiB, Pss %d KiB; idle mount: VmRSS %d KiB, Pss %d KiB; daemon: VmRSS %d KiB",
		rss0, pss0, vmKiB(t, fmt.Sprintf("/proc/%d/status", idle), "VmRSS"), vmKiB(t, fmt.Sprintf("/proc/%d/smaps_rollup", idle), "Pss"),
		vmKiB(t, fmt.Sprintf("/proc/%d/status", d1.cmd.Process.Pid), "VmRSS"))

	if err := d1.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-d1.exited
	// A call while no daemon runs: it waits in the held socket's backlog.
	killed := time.Now()
	type answer struct {
		status int
		err    error
		at     time.Time
	}
	waiting := make(chan answer, 1)
	go func() {
		status, _, err := d.request(http.MethodGet, "/v1/mounts", nil)
		waiting <- answer{status, err, time.Now()}
	}()
	time.Sleep(50 * time.Millisecond) // the call is queued before the new daemon starts
	started := time.Now()
	d2 := launchActivated(t, d, held)
	a := <-waiting
	if a.err != nil || a.status != http.StatusOK {
		t.Fatalf("API call made while the daemon was down: %d %v", a.status, a.err)
	}
	t.Logf("timing: restart under socket activation: a call made during the gap waited %s, of which %s after the new daemon started",
		a.at.Sub(killed).Round(time.Microsecond), a.at.Sub(started).Round(time.Microsecond))
	after := listMounts(t, d2)
	for i, id := range ids {
		if m := after[id]; m.State != "active" || m.PID != list[id].PID {
			t.Errorf("mount %d after the restart: %+v", i, m)
		}
	}
	requirePython(t, mps[0])
	requirePython(t, mps[n-1])
	for i := range n {
		d2.umount(t, ids[i], mps[i])
	}
}

// TestUpgradeKeepsOldServingProcesses installs a new binary over the one
// the daemon runs and restarts the daemon: the old mount stays on its old
// serving process (old version), a new mount runs the new binary, and the
// listing says which version serves each.
func TestUpgradeKeepsOldServingProcesses(t *testing.T) {
	requireE2ETools(t)
	defer timed(t, "TestUpgradeKeepsOldServingProcesses")()
	dir, layout := fixtureLayout(t)
	// The "installed" binary: a copy of the test build, then a build
	// stamped with another version renamed over it, as a package upgrade
	// does.
	installed := filepath.Join(dir, "bin", "clipd")
	os.MkdirAll(filepath.Dir(installed), 0o755)
	run(t, "cp", clipdBin(t), installed)
	d := newDaemonConfig(t, "", "")
	d.bin = installed
	d1 := relaunch(t, d, nil)
	waitHealthy(t, d1, time.Now())
	archive := d1.index(t, "oci-layout:"+layout+":fixture", filepath.Join(dir, "fixture.clip"))
	oldID, oldMP := d1.mount(t, archive, "old")
	old := listMounts(t, d1)[oldID]

	const newVersion = "v-upgrade-test"
	next := installed + ".new"
	build := exec.Command("go", "build", "-ldflags", "-X main.version="+newVersion, "-o", next, "./cmd/clipd")
	build.Dir = testenv.ModuleRoot(t)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the new binary: %v\n%s", err, out)
	}
	if err := os.Rename(next, installed); err != nil {
		t.Fatal(err)
	}
	if err := d1.cmd.Process.Signal(syscall.SIGTERM); err != nil { // systemctl restart
		t.Fatal(err)
	}
	<-d1.exited
	d2 := relaunch(t, d, nil)
	waitHealthy(t, d2, time.Now())
	newID, newMP := d2.mount(t, archive, "new")
	list := listMounts(t, d2)
	if m := list[oldID]; m.State != "active" || m.PID != old.PID || m.Version != old.Version || m.Version == newVersion {
		t.Errorf("old mount after the upgrade: %+v, before: %+v", m, old)
	}
	if m := list[newID]; m.State != "active" || m.Version != newVersion {
		t.Errorf("new mount after the upgrade: %+v, want version %s", m, newVersion)
	}
	if out := d2.clipd(t, "ls"); !strings.Contains(out, newVersion) || !strings.Contains(out, old.Version) {
		t.Errorf("clipd ls does not show both versions:\n%s", out)
	}
	for _, mp := range []string{oldMP, newMP} {
		if got, err := os.ReadFile(filepath.Join(mp, "big", "blob")); err != nil || !bytes.Equal(got, fixture.Big()) {
			t.Errorf("read %s: %d bytes, %v", mp, len(got), err)
		}
	}
	d2.umount(t, oldID, oldMP)
	d2.umount(t, newID, newMP)
}

// TestShutdownUnmounts: without --keep-mounts, SIGTERM unmounts every mount
// (their serving processes exit) and removes the socket.
func TestShutdownUnmounts(t *testing.T) {
	requireE2ETools(t)
	d, archive := layoutFixture(t)
	var pids []int
	var mps []string
	for _, name := range []string{"a", "b"} {
		id, mp := d.mount(t, archive, name)
		pids = append(pids, listMounts(t, d)[id].PID)
		mps = append(mps, mp)
	}
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.exited:
	case <-time.After(20 * time.Second):
		t.Fatal("daemon did not exit on SIGTERM")
	}
	for _, mp := range mps {
		if mounted(t, mp) {
			t.Errorf("%s is still mounted after SIGTERM", mp)
		}
	}
	for _, pid := range pids {
		deadline := time.Now().Add(10 * time.Second)
		for syscall.Kill(pid, 0) == nil {
			if time.Now().After(deadline) {
				t.Errorf("serving process %d still runs after SIGTERM", pid)
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if _, err := os.Stat(d.socket); !os.IsNotExist(err) {
		t.Errorf("socket %s left behind: %v", d.socket, err)
	}
}
