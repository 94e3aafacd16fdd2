package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/clipd/clipd/api"
	"github.com/clipd/clipd/internal/fixture"
	"github.com/clipd/clipd/internal/testenv"
	"golang.org/x/sys/unix"
)

// cmdTimeout bounds every clipd, skopeo and umoci invocation.
const cmdTimeout = 5 * time.Minute

// requireE2ETools fails t unless every tool the end-to-end tests use is
// present and FUSE works.
func requireE2ETools(t testing.TB) {
	t.Helper()
	testenv.RequireTools(t, "docker-registry", "skopeo", "umoci", "fusermount3", "chroot")
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Fatalf("FUSE is unavailable (%v): load the fuse module and install fuse3", err)
	}
	if os.Geteuid() != 0 {
		t.Fatalf("end-to-end tests need root (FUSE mounts, umoci unpack, chroot)")
	}
}

// timed logs how long a step took when the returned func is called.
func timed(t testing.TB, what string) func() {
	t.Helper()
	start := time.Now()
	return func() { t.Logf("timing: %s: %s", what, time.Since(start).Round(time.Millisecond)) }
}

// clipdBin is the binary TestMain built.
func clipdBin(t testing.TB) string {
	return filepath.Join(testenv.ModuleRoot(t), "tmp", "clipd")
}

// run runs a command and returns its stdout; a failure fails t with both
// streams.
func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	stdout, stderr, err := runErr(name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\nstdout:\n%s\nstderr:\n%s", name, strings.Join(args, " "), err, stdout, stderr)
	}
	return stdout
}

func runErr(name string, args ...string) (stdout, stderr string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	var o, e bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// daemon is a running `clipd serve` with its own socket, state, cache and
// mount root, all in temporary directories.
type daemon struct {
	bin, socket, config, mountRoot, cacheDir, log string
	cmd                                           *exec.Cmd
	exited                                        chan struct{}
}

// newDaemonConfig writes a fresh config (socket, state, mount root and log
// in a temp dir; the cache in cacheDir, or the temp dir when "") with
// cacheKeys added to its [cache] table, and returns the daemon-to-be.
func newDaemonConfig(t testing.TB, cacheDir, cacheKeys string) *daemon {
	t.Helper()
	dir := t.TempDir()
	if cacheDir == "" {
		cacheDir = filepath.Join(dir, "cache")
	}
	d := &daemon{
		bin:       clipdBin(t),
		socket:    filepath.Join(dir, "clipd.sock"),
		config:    filepath.Join(dir, "config.toml"),
		mountRoot: filepath.Join(dir, "mnt"),
		cacheDir:  cacheDir,
		log:       filepath.Join(dir, "clipd.log"),
	}
	for _, p := range []string{d.mountRoot, d.cacheDir, filepath.Join(dir, "state")} {
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cfg := fmt.Sprintf(`[daemon]
socket = %q
state_dir = %q
mount_roots = [%q]
log_level = "debug"

[cache]
dir = %q
%s
`, d.socket, filepath.Join(dir, "state"), d.mountRoot, d.cacheDir, cacheKeys)
	if err := os.WriteFile(d.config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return d
}

// startDaemon starts clipd serve on a fresh config (and cache); serveFlags
// are added to its command line.
func startDaemon(t testing.TB, serveFlags ...string) *daemon {
	t.Helper()
	defer timed(t, "start clipd serve")()
	return launch(t, newDaemonConfig(t, "", ""), serveFlags...)
}

// launch starts clipd serve on d's config and returns it once /v1/health
// answers.
func launch(t testing.TB, d *daemon, serveFlags ...string) *daemon {
	t.Helper()
	nd := relaunchCmd(t, d, exec.Command(d.bin, append([]string{"serve", "--config", d.config}, serveFlags...)...))
	waitHealthy(t, nd, time.Now())
	return nd
}

// relaunchCmd starts cmd as d's daemon, appending to d's log. The daemon
// gets its own process group, so that a test interrupted by Ctrl-C does not
// take it down before cleanup has unmounted.
func relaunchCmd(t testing.TB, d *daemon, cmd *exec.Cmd) *daemon {
	t.Helper()
	nd := *d
	nd.exited = make(chan struct{})
	logf, err := os.OpenFile(d.log, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	nd.cmd = cmd
	nd.cmd.Stdout, nd.cmd.Stderr = logf, logf
	nd.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := nd.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", cmd.Path, err)
	}
	go func() { _ = nd.cmd.Wait(); logf.Close(); close(nd.exited) }()
	// Cleanups run last-registered first: this one (registered after the
	// temp dir's) detaches mounts and stops the daemon before the temp dir
	// is removed, so RemoveAll never walks into a live mount.
	t.Cleanup(func() { nd.stop(t) })
	return &nd
}

// waitHealthy polls /v1/health every 2ms and returns how long it took
// since since.
func waitHealthy(t testing.TB, d *daemon, since time.Time) time.Duration {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; {
		status, _, err := d.request(http.MethodGet, "/v1/health", nil)
		if err == nil && status == http.StatusOK {
			return time.Since(since)
		}
		select {
		case <-d.exited:
			t.Fatalf("clipd serve exited before answering /v1/health:\n%s", d.logTail())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("clipd serve did not answer /v1/health within 30s (last: %d %v):\n%s", status, err, d.logTail())
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func (d *daemon) stop(t testing.TB) {
	for _, m := range clipdMounts(t, d.mountRoot) {
		t.Logf("cleanup: lazy detach of %s", m)
		if err := unix.Unmount(m, unix.MNT_DETACH); err != nil {
			t.Logf("cleanup: detach %s: %v", m, err)
		}
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(15 * time.Second):
		t.Errorf("clipd serve did not exit within 15s of SIGTERM; killing it")
		_ = d.cmd.Process.Kill()
		<-d.exited
	}
	if t.Failed() {
		t.Logf("clipd serve log (tail):\n%s", d.logTail())
	}
}

func (d *daemon) logTail() string {
	b, _ := os.ReadFile(d.log)
	return string(tail(b, 6000))
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// client speaks HTTP over the daemon's Unix socket.
func (d *daemon) client() *http.Client {
	return api.UnixHTTPClient(d.socket, 2*time.Minute)
}

// request sends body (raw bytes, or nil) and returns the status and body.
func (d *daemon) request(method, path string, body []byte) (int, []byte, error) {
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://clipd"+path, r)
	if err != nil {
		return 0, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := d.client().Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// clipd runs the CLI against this daemon. Flags come before the positional
// arguments, which every flag parser accepts.
func (d *daemon) clipd(t testing.TB, sub string, args ...string) string {
	t.Helper()
	return run(t, d.bin, append([]string{sub, "--socket", d.socket}, args...)...)
}

// mount mounts archive at <mount root>/name through `clipd mount` and
// returns the id it prints and the mountpoint.
func (d *daemon) mount(t testing.TB, archive, name string) (id, mp string) {
	t.Helper()
	defer timed(t, "clipd mount "+name)()
	mp = filepath.Join(d.mountRoot, name)
	if err := os.MkdirAll(mp, 0o755); err != nil {
		t.Fatal(err)
	}
	out := strings.TrimSpace(d.clipd(t, "mount", archive, mp))
	lines := strings.Split(out, "\n")
	id = strings.TrimSpace(lines[len(lines)-1])
	if id == "" || strings.ContainsAny(id, " \t") {
		t.Fatalf("clipd mount printed %q, want the mount id", out)
	}
	if !mounted(t, mp) {
		t.Fatalf("clipd mount %s %s returned id %s but nothing is mounted there", archive, mp, id)
	}
	return id, mp
}

// umount unmounts target (mountpoint or id) and checks that it is gone.
func (d *daemon) umount(t testing.TB, target, mp string) {
	t.Helper()
	d.clipd(t, "umount", target)
	if mounted(t, mp) {
		t.Fatalf("clipd umount %s: %s is still in /proc/self/mountinfo", target, mp)
	}
}

// ls returns the mounts `clipd ls --json` lists, as decoded JSON objects. It
// accepts a bare array or an object holding one under "mounts".
func (d *daemon) ls(t testing.TB) []map[string]any {
	t.Helper()
	out := d.clipd(t, "ls", "--json")
	var list []map[string]any
	if err := json.Unmarshal([]byte(out), &list); err == nil {
		return list
	}
	var wrapped struct {
		Mounts []map[string]any `json:"mounts"`
	}
	if err := json.Unmarshal([]byte(out), &wrapped); err != nil {
		t.Fatalf("clipd ls --json: not a JSON list of mounts: %v\n%s", err, out)
	}
	return wrapped.Mounts
}

// index runs `clipd index` and returns the output file.
func (d *daemon) index(t testing.TB, source, out string) string {
	t.Helper()
	defer timed(t, "clipd index "+source)()
	run(t, d.bin, "index", "-o", out, source)
	if st, err := os.Stat(out); err != nil || st.Size() == 0 {
		t.Fatalf("clipd index %s: no output file %s (%v)", source, out, err)
	}
	return out
}

// mountinfoEntry is one line of /proc/self/mountinfo.
type mountinfoEntry struct{ mountpoint, fstype, source string }

func readMountinfo(t testing.TB) []mountinfoEntry {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatalf("read mountinfo: %v", err)
	}
	defer f.Close()
	var out []mountinfoEntry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		// id parent major:minor root mountpoint options [optional...] - fstype source superopts
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, f := range fields {
			if f == "-" {
				sep = i
				break
			}
		}
		if len(fields) < 5 || sep < 0 || sep+2 >= len(fields) {
			continue
		}
		out = append(out, mountinfoEntry{
			mountpoint: unescapeMountinfo(fields[4]),
			fstype:     fields[sep+1],
			source:     unescapeMountinfo(fields[sep+2]),
		})
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("read mountinfo: %v", err)
	}
	return out
}

// unescapeMountinfo undoes the kernel's octal escapes (\040 for space...).
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func mounted(t testing.TB, mp string) bool {
	for _, m := range readMountinfo(t) {
		if m.mountpoint == mp {
			return true
		}
	}
	return false
}

// clipdMounts lists mountpoints under root, and clipd file systems anywhere
// under root's parent directory tree, deepest first.
func clipdMounts(t testing.TB, root string) []string {
	var out []string
	for _, m := range readMountinfo(t) {
		if m.mountpoint == root || strings.HasPrefix(m.mountpoint, root+"/") {
			out = append([]string{m.mountpoint}, out...)
		}
	}
	return out
}

// leftoverClipd returns every clipd FUSE file system still mounted under root.
func leftoverClipd(t testing.TB, root string) []string {
	var out []string
	for _, m := range readMountinfo(t) {
		under := m.mountpoint == root || strings.HasPrefix(m.mountpoint, root+"/")
		if under || (strings.Contains(m.fstype, "clipd") && strings.HasPrefix(m.mountpoint, filepath.Dir(root))) {
			out = append(out, fmt.Sprintf("%s (%s %s)", m.mountpoint, m.fstype, m.source))
		}
	}
	return out
}

// umociUnpack extracts layout:tag with umoci (the oracle) and returns the
// rootfs.
func umociUnpack(t testing.TB, layout, tag string) string {
	t.Helper()
	defer timed(t, "umoci unpack "+tag)()
	bundle := filepath.Join(t.TempDir(), "bundle")
	run(t, "umoci", "unpack", "--image", layout+":"+tag, bundle)
	return filepath.Join(bundle, "rootfs")
}

// snapshot wraps Snapshot with timing and failure.
func snapshot(t testing.TB, root string) *Tree {
	t.Helper()
	defer timed(t, "snapshot "+root)()
	tr, err := Snapshot(root)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// requireEqual compares and fails t with the first differences.
func requireEqual(t testing.TB, what string, want, got *Tree, ignores ...Ignore) {
	t.Helper()
	diffs, st := Compare(want, got, ignores...)
	t.Logf("%s: checked %s against the oracle; %d ignore rules; %d differences", what, st, len(ignores), len(diffs))
	if len(diffs) == 0 {
		return
	}
	const show = 40
	var b strings.Builder
	for i, d := range diffs {
		if i == show {
			fmt.Fprintf(&b, "... and %d more\n", len(diffs)-show)
			break
		}
		fmt.Fprintln(&b, d)
	}
	t.Errorf("%s: %d differences from the oracle:\n%s", what, len(diffs), b.String())
}

// errorMessage extracts error.message from an API error body.
func errorMessage(body []byte) (string, error) {
	var e struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.Unmarshal(body, &e); err != nil {
		return "", fmt.Errorf("error body is not JSON: %w: %q", err, body)
	}
	if e.Error.Message == "" {
		return "", errors.New("error body has no error.message: " + string(body))
	}
	return e.Error.Code + ": " + e.Error.Message, nil
}

// fixtureLayout writes the generated fixture image as an OCI layout (tag
// "fixture") in a fresh temp dir, and returns the dir and the layout.
func fixtureLayout(t testing.TB) (dir, layout string) {
	t.Helper()
	dir = t.TempDir()
	layout = filepath.Join(dir, "layout")
	if err := fixture.WriteLayout(layout, "fixture"); err != nil {
		t.Fatal(err)
	}
	return dir, layout
}

// indexedFixture pushes the fixture image to a fresh registry, starts a
// daemon whose mounts are detached when t ends, and indexes the image with
// it into a fresh temp dir. It returns the daemon and the .clip's path.
func indexedFixture(t testing.TB) (d *daemon, archive string) {
	t.Helper()
	dir, layout := fixtureLayout(t)
	host := testenv.StartRegistry(t)
	testenv.PushLayout(t, layout, "fixture", host+"/fixture:v1")
	d = startDaemon(t)
	cleanupMounts(t, d)
	return d, d.index(t, host+"/fixture:v1", filepath.Join(dir, "fixture.clip"))
}

// layoutFixture starts a daemon with serveFlags and indexes the fixture
// image with it straight from an OCI layout (no registry). It returns the
// daemon and the .clip's path.
func layoutFixture(t testing.TB, serveFlags ...string) (d *daemon, archive string) {
	t.Helper()
	dir, layout := fixtureLayout(t)
	d = startDaemon(t, serveFlags...)
	return d, d.index(t, "oci-layout:"+layout+":fixture", filepath.Join(dir, "fixture.clip"))
}

// pushedDebianPython pushes the debian-python image to a fresh registry as
// debian:python. It returns the image's OCI layout (tag "python") and the
// registry's host:port.
func pushedDebianPython(tb testing.TB) (layout, host string) {
	tb.Helper()
	layout = testenv.DebianPythonLayout(tb)
	host = testenv.StartRegistry(tb)
	skopeoPush(tb, layout, "python", host+"/debian:python")
	return layout, host
}
