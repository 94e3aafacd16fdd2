package main

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/clipd/clipd/api"
	"github.com/clipd/clipd/daemon"
	"github.com/clipd/clipd/fetcher"
	"github.com/clipd/clipd/index"
	"github.com/clipd/clipd/internal/testenv"
	"github.com/clipd/clipd/mounter"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// TestMain lets the test binary serve mounts: the daemon of
// TestIndexMountLsUmount starts it as `clipd serve-mount`, as clipd serve
// starts its own binary.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "serve-mount" {
		main()
	}
	os.Exit(m.Run())
}

// clipd runs one invocation and returns its exit status and output.
func clipd(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestVersionAndUsage(t *testing.T) {
	code, out, _ := clipd(t, "--socket", "/nonexistent/clipd.sock", "version")
	if code != 0 || !strings.HasPrefix(out, "clipd ") ||
		!strings.Contains(out, "\ndaemon: unreachable (connect to clipd at /nonexistent/clipd.sock") {
		t.Errorf("version: %d %q", code, out)
	}
	code, out2, _ := clipd(t, "--socket", "/nonexistent/clipd.sock", "--version")
	if code != 0 || out2 != out {
		t.Errorf("--version: %d %q, want %q", code, out2, out)
	}
	code, out, _ = clipd(t, "--help")
	if code != 0 || !strings.Contains(out, "umount  MOUNTPOINT|ID") || !strings.Contains(out, "Exit status:") {
		t.Errorf("help: %d %q", code, out)
	}
	code, out, _ = clipd(t, "help")
	for _, want := range []string{"  2  usage error", "  3  daemon unreachable", "  4  not found", "  5  conflict or busy", "  6  permission denied"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("help does not list exit status %q: %d %q", want, code, out)
		}
	}
	code, _, errs := clipd(t, "frobnicate")
	if code != exitUsage || !strings.HasPrefix(errs, `clipd: unknown command "frobnicate"`) {
		t.Errorf("unknown command: %d %q", code, errs)
	}
	code, _, errs = clipd(t)
	if code != exitUsage || !strings.Contains(errs, "usage:") {
		t.Errorf("no command: %d %q", code, errs)
	}
	code, _, errs = clipd(t, "mount", "only-one")
	if code != exitUsage || !strings.Contains(errs, "want 2 arguments") {
		t.Errorf("argument count: %d %q", code, errs)
	}
	code, _, errs = clipd(t, "cache")
	if code != exitUsage || !strings.Contains(errs, "want a subcommand") {
		t.Errorf("cache without subcommand: %d %q", code, errs)
	}
}

// TestFlagErrorsPrintOnce: a bad flag is one line on stderr, nothing on
// stdout, exit status 2; --help is the command's help on stdout, status 0.
func TestFlagErrorsPrintOnce(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"ls", "--bogus"}, "clipd: ls: flag provided but not defined: -bogus (see 'clipd ls --help')\n"},
		{[]string{"--bogus", "ls"}, "clipd: flag provided but not defined: -bogus (run 'clipd help')\n"},
		{[]string{"index", "x", "--span-size"}, "clipd: index: flag needs an argument: -span-size (see 'clipd index --help')\n"},
		{[]string{"mount", "a", "b", "--prefetch=maybe"}, "clipd: mount: invalid boolean value \"maybe\" for -prefetch: parse error (see 'clipd mount --help')\n"},
		{[]string{"cache", "ls", "--bogus"}, "clipd: cache ls: flag provided but not defined: -bogus (see 'clipd cache ls --help')\n"},
		{[]string{"serve-mount", "--bogus"}, "clipd: serve-mount: flag provided but not defined: -bogus\n"},
	}
	for _, c := range cases {
		code, out, errs := clipd(t, c.args...)
		if code != exitUsage || out != "" || errs != c.want {
			t.Errorf("%v: status %d, stdout %q, stderr %q; want 2, nothing, %q", c.args, code, out, errs, c.want)
		}
	}
	code, out, errs := clipd(t, "index", "--help")
	if code != 0 || errs != "" || !strings.HasPrefix(out, "usage: clipd index SOURCE") || !strings.Contains(out, "-span-size") {
		t.Errorf("index --help: %d %q %q", code, out, errs)
	}
}

func TestIndexFlagErrors(t *testing.T) {
	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"index", "oci-layout:/x"}, exitUsage, "-o OUT.clip is required"},
		{[]string{"index", "oci-layout:/x", "-o", "/tmp/x.clip", "--span-size", "4MB"}, exitUsage, `--span-size: invalid size "4MB"`},
		{[]string{"index", "oci-layout:/x", "-o", "/tmp/x.clip", "--span-size", "128KiB"}, exitUsage, "--span-size 128KiB: must be between 256KiB and 64MiB"},
		{[]string{"index", "oci-layout:/x", "-o", "/tmp/x.clip", "--span-size", "128MiB"}, exitUsage, "must be between"},
		{[]string{"index", "oci-layout:/x", "-o", "/tmp/x.clip", "--platform", "linux/amd64/v3/extra"}, exitUsage, "--platform"},
		{[]string{"index", "Not A//Reference", "-o", "/tmp/x.clip"}, exitUsage, `source "Not A//Reference"`},
		{[]string{"index", "oci-layout:/nonexistent/layout", "-o", "/tmp/x.clip"}, exitNotFound, "resolve oci-layout:/nonexistent/layout"},
		{[]string{"--config", "/nonexistent/c.toml", "index", "oci-layout:/x", "-o", "/tmp/x.clip"}, exitNotFound, "/nonexistent/c.toml"},
	}
	for _, c := range cases {
		code, _, errs := clipd(t, c.args...)
		if code != c.code || !strings.HasPrefix(errs, "clipd: ") || !strings.Contains(errs, c.want) {
			t.Errorf("%v: %d %q, want %d %q", c.args, code, errs, c.code, c.want)
		}
	}
}

// ociLayout writes a one-layer image tagged v1 and returns the layout dir.
func ociLayout(t *testing.T) string {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for name, data := range map[string]string{"etc/motd": "welcome\n", "bin/tool": "#!/bin/sh\necho tool\n"} {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o755, Size: int64(len(data)), Typeflag: tar.TypeReg, ModTime: time.Unix(1700000000, 0)}); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(data))
	}
	tw.Close()
	img, _ := oneLayerImage(t, buf.Bytes())
	dir := filepath.Join(t.TempDir(), "layout")
	lp, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := lp.AppendImage(img, layout.WithAnnotations(map[string]string{fetcher.RefNameAnnotation: "v1"})); err != nil {
		t.Fatal(err)
	}
	return dir
}

// oneLayerImage is an image for this machine's platform whose one layer is
// the uncompressed tar stream b.
func oneLayerImage(t *testing.T, b []byte) (v1.Image, v1.Layer) {
	t.Helper()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	d, err := l.DiffID()
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, l)
	if err != nil {
		t.Fatal(err)
	}
	img, err = mutate.ConfigFile(img, &v1.ConfigFile{OS: "linux", Architecture: fetcher.DefaultPlatform().Architecture,
		RootFS: v1.RootFS{Type: "layers", DiffIDs: []v1.Hash{d}}})
	if err != nil {
		t.Fatal(err)
	}
	return img, l
}

// TestIndexMountLsUmount drives the whole CLI against a real daemon with
// real serving processes (this test binary): index an OCI layout, inspect it, mount it through the
// socket, read from it, list, unmount by id and by mountpoint.
func TestIndexMountLsUmount(t *testing.T) {
	work := t.TempDir()
	clip := filepath.Join(work, "img.clip")
	code, out, errs := clipd(t, "index", "oci-layout:"+ociLayout(t)+":v1", "-o", clip, "--span-size", "1MiB")
	if code != 0 {
		t.Fatalf("index: %d %s", code, errs)
	}
	if !strings.HasPrefix(out, "wrote "+clip+": 2 files, 1 layers, ") || !strings.Contains(errs, "layer 1/1 sha256:") {
		t.Errorf("index output %q, progress %q", out, errs)
	}
	if a, err := index.Open(clip); err != nil || len(a.Layers) != 1 {
		t.Fatalf("written archive: %v", err)
	}
	code, out, errs = clipd(t, "inspect", clip)
	if code != 0 || !strings.Contains(out, "sha256:") {
		t.Errorf("inspect: %d %q %q", code, out, errs)
	}

	dir, cfg := startCLIDaemon(t, "v9.9.9-test", nil)
	sock := "--socket=" + cfg.Daemon.Socket

	// Both versions: the CLI's and the daemon's, from its health answer.
	code, out, _ = clipd(t, sock, "version")
	if want := "clipd " + clipdVersion() + "\ndaemon: v9.9.9-test (" + cfg.Daemon.Socket + ")\n"; code != 0 || out != want {
		t.Errorf("version: %d %q, want %q", code, out, want)
	}
	if code, out2, _ := clipd(t, sock, "--version"); code != 0 || out2 != out {
		t.Errorf("--version: %d %q, want %q", code, out2, out)
	}

	// Relative paths are made absolute by the client.
	t.Chdir(dir)
	relClip, _ := filepath.Rel(dir, clip)
	code, out, errs = clipd(t, sock, "mount", relClip, "mnt/one")
	if code != 0 {
		t.Fatalf("mount: %s", errs)
	}
	id := strings.TrimSpace(out)
	mp := filepath.Join(dir, "mnt", "one")
	if got, err := os.ReadFile(filepath.Join(mp, "etc/motd")); err != nil || string(got) != "welcome\n" {
		t.Fatalf("read through the mount: %q %v", got, err)
	}
	code, out, _ = clipd(t, "mount", clip, filepath.Join(dir, "mnt", "two"), sock) // flags after arguments
	if code != 0 {
		t.Fatal("second mount failed")
	}
	id2 := strings.TrimSpace(out)

	code, out, _ = clipd(t, "ls", sock)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 3 || !strings.HasPrefix(lines[0], "ID") || !strings.Contains(lines[0], "FETCHED") ||
		!strings.HasPrefix(lines[1], id+" ") || !strings.Contains(lines[1], mp) || !strings.Contains(lines[1], clip) {
		t.Errorf("ls:\n%s", out)
	}
	code, out, _ = clipd(t, "ls", "--json", sock)
	var list []api.MountInfo
	if code != 0 || json.Unmarshal([]byte(out), &list) != nil || len(list) != 2 || list[0].ID != id || list[0].Stats.Reads == 0 {
		t.Errorf("ls --json: %s", out)
	}

	// API errors are shown as the daemon sent them.
	code, _, errs = clipd(t, sock, "mount", "/nonexistent/x.clip", "mnt/three")
	if code != exitNotFound || errs != "clipd: archive /nonexistent/x.clip not found\n" {
		t.Errorf("missing archive: %d %q", code, errs)
	}
	code, _, errs = clipd(t, sock, "mount", clip, "/etc/clipd-test")
	if code != exitForbidden || !strings.Contains(errs, "outside the mount roots") {
		t.Errorf("outside roots: %d %q", code, errs)
	}

	// An open file keeps the mount busy: a graceful unmount is refused.
	f, err := os.Open(filepath.Join(mp, "etc/motd"))
	if err != nil {
		t.Fatal(err)
	}
	code, _, errs = clipd(t, sock, "umount", mp)
	f.Close()
	if code != exitConflict || !strings.Contains(errs, "is busy (force=true detaches it lazily)") {
		t.Errorf("busy umount: %d %q", code, errs)
	}
	if code, _, errs = clipd(t, sock, "umount", id); code != 0 {
		t.Errorf("umount by id: %s", errs)
	}
	if code, _, errs = clipd(t, sock, "umount", "mnt/two", "--force"); code != 0 {
		t.Errorf("umount by relative mountpoint: %s", errs)
	}
	code, _, errs = clipd(t, sock, "umount", id2)
	if code != exitNotFound || !strings.Contains(errs, "no mount with id or mountpoint "+id2) {
		t.Errorf("umount twice: %d %q", code, errs)
	}
	if code, out, _ = clipd(t, "ls", sock); code != 0 || strings.Count(out, "\n") != 1 {
		t.Errorf("ls after umount:\n%s", out)
	}
}

func waitUp(t *testing.T, socket string) {
	t.Helper()
	c := api.NewClient(socket)
	for deadline := time.Now().Add(5 * time.Second); ; {
		if _, err := c.Health(context.Background()); err == nil {
			return
		} else if time.Now().After(deadline) {
			t.Fatalf("daemon not up: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// startCLIDaemon runs a daemon (version) whose serving processes are this
// test binary, on a short socket path with its mount roots, state and
// cache in a directory of its own, until the test ends; spawn may adjust
// the serving processes' configuration.
func startCLIDaemon(t *testing.T, version string, spawn func(*mounter.SpawnConfig)) (string, daemon.Config) {
	t.Helper()
	dir, err := os.MkdirTemp("", "clipd-cli-") // short: a socket path is at most 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cfg := daemon.DefaultConfig()
	cfg.Daemon.Socket = filepath.Join(dir, "clipd.sock")
	cfg.Daemon.StateDir = filepath.Join(dir, "state")
	cfg.Daemon.MountRoots = []string{filepath.Join(dir, "mnt")}
	cfg.Cache.Dir = filepath.Join(dir, "cache")
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	serveLog, err := os.Create(filepath.Join(dir, "serve-mount.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { serveLog.Close() })
	sc := mounter.SpawnConfig{Executable: exe, StateDir: cfg.Daemon.StateDir, CacheDir: cfg.Cache.Dir,
		MaxFetches: cfg.Registry.MaxFetches, LogLevel: cfg.Daemon.LogLevel, Logger: log, Stderr: serveLog}
	if spawn != nil {
		spawn(&sc)
	}
	m, err := mounter.NewSpawner(sc)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := daemon.NewServer(daemon.Options{Config: cfg, Mounter: m, Logger: log, Version: version})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	waitUp(t, cfg.Daemon.Socket)
	return dir, cfg
}

func TestClientCommandsWithoutDaemon(t *testing.T) {
	code, _, errs := clipd(t, "--socket", "/nonexistent/clipd.sock", "ls")
	if code != exitUnreachable || !strings.HasPrefix(errs, "clipd: connect to clipd at /nonexistent/clipd.sock") {
		t.Errorf("ls without daemon: %d %q", code, errs)
	}
	cfgFile := filepath.Join(t.TempDir(), "c.toml")
	os.WriteFile(cfgFile, []byte("[daemon]\nsocket = \"/nonexistent/from-config.sock\"\n"), 0o644)
	code, _, errs = clipd(t, "--config", cfgFile, "ls")
	if code != exitUnreachable || !strings.Contains(errs, "/nonexistent/from-config.sock") {
		t.Errorf("socket from config: %d %q", code, errs)
	}
}

func TestServeStopsOnCancel(t *testing.T) {
	dir, err := os.MkdirTemp("", "clipd-serve-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	cfgFile := filepath.Join(dir, "config.toml")
	os.WriteFile(cfgFile, []byte(`[daemon]
socket = "`+dir+`/s.sock"
state_dir = "`+dir+`/state"
mount_roots = ["`+dir+`/mnt"]
[cache]
dir = "`+dir+`/cache"
`), 0o644)
	ctx, cancel := context.WithCancel(context.Background())
	var errb testenv.SyncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--config", cfgFile, "--log-level", "debug"}, io.Discard, &errb)
	}()
	waitUp(t, dir+"/s.sock")
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("serve exit %d: %s", code, errb.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not stop")
	}
	if _, err := os.Stat(dir + "/s.sock"); !os.IsNotExist(err) {
		t.Errorf("socket left: %v", err)
	}
	if !strings.Contains(errb.String(), "level=DEBUG") {
		t.Errorf("--log-level debug not applied:\n%s", errb.String())
	}
	code, _, errs := clipd(t, "serve", "--config", cfgFile, "--log-level", "loud")
	if code != 1 || !strings.Contains(errs, `invalid log level "loud"`) {
		t.Errorf("bad log level: %d %q", code, errs)
	}
}

// TestLsEscapesOddCharacters: `clipd ls` prints one table line per mount
// whatever its paths hold: a newline, a tab, a terminal escape, a space or
// an invisible character are quoted Go-style, plain paths are not.
func TestLsEscapesOddCharacters(t *testing.T) {
	dir := t.TempDir()
	odd := []api.MountInfo{
		{ID: "aaaaaaaaaaaa", Mountpoint: "/mnt/x\nbbbbbbbbbbbb  /mnt/fake", Archive: "/img/a.clip", State: "active", PID: 10, Version: "v1"},
		{ID: "cccccccccccc", Mountpoint: "/mnt/tab\there", Archive: "/img/with space.clip", State: "active", PID: 11, Version: "v1"},
		{ID: "dddddddddddd", Mountpoint: "/mnt/\x1b[2Jclear", Archive: "/img/\u200b.clip", State: "failed", PID: 12, Version: "v1"},
		{ID: "eeeeeeeeeeee", Mountpoint: "/mnt/plain-é", Archive: `"quoted".clip`, State: "active", PID: 13, Version: "v1"},
	}
	sock := filepath.Join(dir, "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.Path != "/v1/mounts" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(odd)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	code, out, errs := clipd(t, "--socket", sock, "ls")
	if code != 0 {
		t.Fatalf("ls: %d %s", code, errs)
	}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 1+len(odd) {
		t.Fatalf("ls printed %d lines for %d mounts:\n%s", len(lines), len(odd), out)
	}
	for i, m := range odd {
		line := lines[i+1]
		if !strings.HasPrefix(line, m.ID+" ") {
			t.Errorf("line %d does not start with its mount's id %s: %q", i+1, m.ID, line)
		}
		if strings.ContainsAny(line, "\t\x1b\r") || !utf8.ValidString(line) {
			t.Errorf("line %d holds a raw control character or invalid UTF-8: %q", i+1, line)
		}
	}
	for _, want := range []string{
		`"/mnt/x\nbbbbbbbbbbbb  /mnt/fake"`, `"/mnt/tab\there"`, `"/img/with space.clip"`,
		`"/mnt/\x1b[2Jclear"`, `"/img/\u200b.clip"`, `"\"quoted\".clip"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("ls output lacks %s:\n%s", want, out)
		}
	}
	if !strings.Contains(lines[4], " /mnt/plain-é ") || !strings.Contains(lines[1], " /img/a.clip ") {
		t.Errorf("plain paths were quoted:\n%s", out)
	}
}
