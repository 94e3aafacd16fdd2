package e2e

import (
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clipddaemon "github.com/clipd/clipd/daemon"
	"github.com/clipd/clipd/internal/fixture"
	"github.com/clipd/clipd/internal/testenv"
	"golang.org/x/sys/unix"
)

// unitValue returns the value of key in a unit file ("" when absent).
func unitValue(t *testing.T, unit, key string) string {
	t.Helper()
	b, err := os.ReadFile(unit)
	if err != nil {
		t.Fatal(err)
	}
	val := ""
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), "="); ok && k == key {
			val = v
		}
	}
	return val
}

// TestSystemdUnitFiles checks the units with systemd's own parser
// (systemd-analyze verify: it warns, and exits 0, on unknown keys and bad
// values, so any output fails the test), checks the settings the restart
// behaviour depends on, and creates the tmpfiles.d directories in a scratch
// root.
func TestSystemdUnitFiles(t *testing.T) {
	testenv.RequireTools(t, "systemd-analyze", "systemd-tmpfiles")
	root := testenv.ModuleRoot(t)
	src := filepath.Join(root, "systemd")
	dir := t.TempDir()
	svc, sock := filepath.Join(dir, "clipd.service"), filepath.Join(dir, "clipd.socket")
	b, err := os.ReadFile(filepath.Join(src, "clipd.service"))
	if err != nil {
		t.Fatal(err)
	}
	// verify requires ExecStart's binary to exist: use the one just built.
	if !strings.Contains(string(b), "ExecStart=/usr/local/bin/clipd serve") {
		t.Fatalf("clipd.service: ExecStart is not /usr/local/bin/clipd serve (make install rewrites that path)")
	}
	b = []byte(strings.ReplaceAll(string(b), "/usr/local/bin/clipd", clipdBin(t)))
	if err := os.WriteFile(svc, b, 0o644); err != nil {
		t.Fatal(err)
	}
	sb, err := os.ReadFile(filepath.Join(src, "clipd.socket"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(sock, sb, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("systemd-analyze", "verify", sock, svc).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}

	def := clipddaemon.DefaultConfig()
	for _, c := range []struct{ unit, key, want string }{
		{svc, "Type", "notify"},
		{svc, "KillMode", "process"}, // the serving processes survive a restart
		{svc, "Restart", "on-failure"},
		{svc, "ExecReload", "/bin/kill -HUP $MAINPID"},
		{svc, "Requires", "clipd.socket"},
		{sock, "ListenStream", def.Daemon.Socket},
		{sock, "SocketMode", "0660"},
		{sock, "SocketGroup", "clipd"},
	} {
		if got := unitValue(t, c.unit, c.key); got != c.want {
			t.Errorf("%s: %s=%q, want %q", filepath.Base(c.unit), c.key, got, c.want)
		}
	}
	for _, key := range []string{"WatchdogSec", "LimitNOFILE", "OOMScoreAdjust", "NoNewPrivileges"} {
		if unitValue(t, svc, key) == "" {
			t.Errorf("clipd.service lacks %s", key)
		}
	}
	// Each of these would give the service its own mount namespace and
	// hide its FUSE mounts from the host.
	for _, key := range []string{"ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "PrivateMounts",
		"ProtectKernelTunables", "ProtectKernelModules", "ProtectControlGroups", "ReadWritePaths", "ProtectProc", "TemporaryFileSystem"} {
		if v := unitValue(t, svc, key); v != "" {
			t.Errorf("clipd.service sets %s=%s: FUSE mounts would be invisible outside the service", key, v)
		}
	}

	// tmpfiles.d creates the directories the default config uses.
	troot := t.TempDir()
	out, err = exec.Command("systemd-tmpfiles", "--create", "--root="+troot, filepath.Join(src, "clipd.tmpfiles.conf")).CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-tmpfiles --create: %v\n%s", err, out)
	}
	for p, mode := range map[string]os.FileMode{
		filepath.Dir(def.Daemon.Socket): 0o755, def.Daemon.MountRoots[0]: 0o700,
		def.Daemon.StateDir: 0o700, def.Cache.Dir: 0o700,
	} {
		fi, err := os.Stat(filepath.Join(troot, p))
		if err != nil || !fi.IsDir() || fi.Mode().Perm() != mode {
			t.Errorf("tmpfiles.d: %s: %v %v, want a directory of mode %o", p, fi, err, mode)
		}
	}
}

// TestMakeInstall installs into a scratch DESTDIR with PREFIX=/usr and
// uninstalls again.
func TestMakeInstall(t *testing.T) {
	testenv.RequireTools(t, "make", "install")
	root := testenv.ModuleRoot(t)
	dest := t.TempDir()
	// -o build: the binary TestMain built stands in for `make build`.
	vars := []string{"-C", root, "-o", "build", "DESTDIR=" + dest, "PREFIX=/usr", "BIN=" + clipdBin(t)}
	run(t, "make", append(vars, "install")...)
	files := []string{"usr/bin/clipd", "etc/clipd/config.toml.example", "usr/lib/systemd/system/clipd.service",
		"usr/lib/systemd/system/clipd.socket", "usr/lib/tmpfiles.d/clipd.conf", "usr/lib/sysusers.d/clipd.conf"}
	for _, f := range files {
		if _, err := os.Stat(filepath.Join(dest, f)); err != nil {
			t.Errorf("make install: %v", err)
		}
	}
	if got := unitValue(t, filepath.Join(dest, "usr/lib/systemd/system/clipd.service"), "ExecStart"); got != "/usr/bin/clipd serve --keep-mounts" {
		t.Errorf("installed ExecStart=%q, want the PREFIX's binary", got)
	}
	run(t, "make", append(vars, "uninstall")...)
	for _, f := range files {
		if _, err := os.Stat(filepath.Join(dest, f)); !os.IsNotExist(err) {
			t.Errorf("make uninstall left %s (%v)", f, err)
		}
	}
}

// notifyListener is a stand-in for systemd's notify socket.
type notifyListener struct {
	path string
	conn *net.UnixConn
	mu   sync.Mutex
	msgs []string
}

func listenNotify(t *testing.T) *notifyListener {
	t.Helper()
	n := &notifyListener{path: filepath.Join(t.TempDir(), "notify")}
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: n.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	n.conn = c
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 4096)
		for {
			k, err := c.Read(buf)
			if err != nil {
				return
			}
			n.mu.Lock()
			n.msgs = append(n.msgs, string(buf[:k]))
			n.mu.Unlock()
		}
	}()
	return n
}

func (n *notifyListener) count(pred func(string) bool) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	c := 0
	for _, m := range n.msgs {
		if pred(m) {
			c++
		}
	}
	return c
}

func (n *notifyListener) waitFor(t *testing.T, what string, atLeast int, pred func(string) bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); n.count(pred) < atLeast; {
		if time.Now().After(deadline) {
			n.mu.Lock()
			defer n.mu.Unlock()
			t.Fatalf("sd_notify: no %s within 10s; got %q", what, n.msgs)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestSocketActivationAndNotify runs the daemon the way the units do:
// socket-activated by systemd-socket-activate (LISTEN_FDS), with a
// NOTIFY_SOCKET and a watchdog. READY comes once the socket serves, STATUS
// follows the mounts, WATCHDOG pings at half of WATCHDOG_USEC, STOPPING on
// SIGTERM; the mount outlives the daemon and the next one adopts it.
func TestSocketActivationAndNotify(t *testing.T) {
	requireE2ETools(t)
	testenv.RequireTools(t, "systemd-socket-activate")
	defer timed(t, "TestSocketActivationAndNotify")()
	dir, layout := fixtureLayout(t)
	d := newDaemonConfig(t, "", "")
	n := listenNotify(t)
	argv := []string{"systemd-socket-activate", "-l", d.socket, "-E", "PATH", "-E", "NOTIFY_SOCKET=" + n.path,
		"-E", "WATCHDOG_USEC=200000", d.bin, "serve", "--keep-mounts", "--config", d.config}
	sa := relaunch(t, d, argv)
	// The socket exists before the daemon runs; the first call starts it
	// and waits in the backlog meanwhile.
	for deadline := time.Now().Add(10 * time.Second); ; {
		if _, err := os.Stat(d.socket); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("systemd-socket-activate did not create %s", d.socket)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n.count(func(string) bool { return true }) != 0 {
		t.Fatalf("daemon notified before it was activated")
	}
	waitHealthy(t, sa, time.Now())
	n.waitFor(t, "READY", 1, func(m string) bool { return m == "READY=1\nSTATUS=serving 0 mounts" })
	n.waitFor(t, "2 watchdog pings", 2, func(m string) bool { return m == "WATCHDOG=1" })
	if !strings.Contains(sa.logTail(), "socket_activated=true") {
		t.Errorf("daemon did not use the passed socket:\n%s", sa.logTail())
	}

	archive := sa.index(t, "oci-layout:"+layout+":fixture", filepath.Join(dir, "fixture.clip"))
	id, mp := sa.mount(t, archive, "a")
	n.waitFor(t, "STATUS with the mount", 1, func(m string) bool { return m == "STATUS=serving 1 mounts" })

	if err := sa.cmd.Process.Signal(unix.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-sa.exited:
	case <-time.After(15 * time.Second):
		t.Fatal("daemon did not stop on SIGTERM")
	}
	n.waitFor(t, "STOPPING", 1, func(m string) bool { return strings.HasPrefix(m, "STOPPING=1") })
	if _, err := os.Lstat(d.socket); err != nil {
		t.Errorf("the daemon removed the socket it was passed: %v", err)
	}
	// Stopping the daemon left the mount serving.
	if got, err := os.ReadFile(filepath.Join(mp, "big", "blob")); err != nil || string(got) != string(fixture.Big()) {
		t.Fatalf("mount after the daemon stopped: %d bytes, %v", len(got), err)
	}
	d2 := relaunch(t, d, nil)
	waitHealthy(t, d2, time.Now())
	if m := listMounts(t, d2)[id]; m.State != "active" {
		t.Fatalf("mount not adopted: %+v", m)
	}
	d2.umount(t, id, mp)
}

// TestReloadOnSIGHUP changes the config and sends SIGHUP (systemctl
// reload): the log level applies at once, to the daemon and its serving
// processes, and a key that needs a restart is named in the log.
func TestReloadOnSIGHUP(t *testing.T) {
	requireE2ETools(t)
	defer timed(t, "TestReloadOnSIGHUP")()
	d, archive := layoutFixture(t)
	id, mp := d.mount(t, archive, "a")
	orig, err := os.ReadFile(d.config)
	if err != nil {
		t.Fatal(err)
	}
	logLen := func() int { b, _ := os.ReadFile(d.log); return len(b) }
	logSince := func(off int) string { b, _ := os.ReadFile(d.log); return string(b[off:]) }
	waitLog := func(off int, what string) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !strings.Contains(logSince(off), what); {
			if time.Now().After(deadline) {
				t.Fatalf("no %q in the log after SIGHUP:\n%s", what, logSince(off))
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	reload := func(cfg string) int {
		t.Helper()
		if err := os.WriteFile(d.config, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		off := logLen()
		if err := d.cmd.Process.Signal(unix.SIGHUP); err != nil {
			t.Fatal(err)
		}
		return off
	}

	// To warn, with a socket change that needs a restart.
	cfg := strings.Replace(string(orig), `log_level = "debug"`, `log_level = "warn"`, 1)
	cfg = strings.Replace(cfg, filepath.Base(d.socket), "elsewhere.sock", 1)
	off := reload(cfg)
	waitLog(off, `msg="configuration changes need a restart" keys=[daemon.socket]`)
	off = logLen()
	if status, _, err := d.request(http.MethodGet, "/v1/health", nil); err != nil || status != 200 {
		t.Fatalf("health after reload: %d %v (the socket must not move)", status, err)
	}
	// No wait needed: d.request read the whole answer, whose end the server
	// sends only once the handler chain, logging wrapper included, has
	// returned; an api line would be in the log file by now.
	if l := logSince(off); strings.Contains(l, "msg=api") {
		t.Errorf("INFO lines logged at level warn:\n%s", l)
	}

	// Back to debug: API calls are logged again, and the serving process
	// took the level too (no failure to set it).
	off = reload(string(orig))
	waitLog(off, `msg="configuration reloaded" applied="[daemon.log_level daemon.log_level (serving processes)]"`)
	// Only once the reload is applied is the call logged (asking before it
	// raced with the signal).
	if status, _, _ := d.request(http.MethodGet, "/v1/health", nil); status != 200 {
		t.Fatal("health")
	}
	waitLog(off, "msg=api method=GET path=/v1/health")
	if l := logSince(0); strings.Contains(l, "set log level of serving process") {
		t.Errorf("log level not pushed to the serving process:\n%s", l)
	}
	// A broken config changes nothing and keeps the daemon up.
	off = reload("[daemon]\nlog_level = \"loud\"\n")
	waitLog(off, "reload failed; configuration unchanged")
	if status, _, _ := d.request(http.MethodGet, "/v1/health", nil); status != 200 {
		t.Fatal("daemon down after a bad reload")
	}
	d.umount(t, id, mp)
}
