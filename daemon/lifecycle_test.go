package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/clipd/clipd/api"
	"golang.org/x/sys/unix"
)

// deadFUSEMount leaves what a crashed serving process leaves: a FUSE mount
// whose connection is gone (opened on /dev/fuse, fd closed before INIT).
func deadFUSEMount(t *testing.T, mp string) {
	t.Helper()
	if err := os.MkdirAll(mp, 0o755); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open /dev/fuse: %v", err)
	}
	opts := fmt.Sprintf("fd=%d,rootmode=40000,user_id=0,group_id=0", fd)
	if err := unix.Mount("clipdtest", mp, "fuse.clipdtest", unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
		unix.Close(fd)
		t.Fatalf("mount fuse at %s: %v", mp, err)
	}
	unix.Close(fd)
	t.Cleanup(func() { unix.Unmount(mp, unix.MNT_DETACH) })
	if _, err := os.Stat(mp); !errors.Is(err, unix.ENOTCONN) {
		t.Fatalf("stat of a dead FUSE mount: %v, want ENOTCONN", err)
	}
}

// TestStaleStateReportedFailed: mounts an in-process daemon left behind died
// with it; the next daemon reports them failed (not silently dropped),
// detaches the dead FUSE mount, and frees the mountpoint on delete.
func TestStaleStateReportedFailed(t *testing.T) {
	h := newHarness(t)
	dead, plain := h.mp("dead"), h.mp("plain")
	deadFUSEMount(t, dead)
	if err := os.MkdirAll(h.cfg.Daemon.StateDir, 0o755); err != nil {
		t.Fatal(err)
	}
	old := []StateEntry{
		{ID: "aaaaaaaaaaaa", Archive: h.archive, Mountpoint: dead, Created: time.Now().UTC().Add(-2 * time.Second), PID: 999999},
		{ID: "bbbbbbbbbbbb", Archive: h.archive, Mountpoint: plain, Created: time.Now().UTC().Add(-time.Second), PID: 999999},
	}
	if err := writeState(h.cfg.Daemon.StateDir, old); err != nil {
		t.Fatal(err)
	}
	h.start()
	ctx := context.Background()

	if _, mounted, err := findMount(dead); err != nil || mounted {
		t.Errorf("dead FUSE mount still there: %v %v", mounted, err)
	}
	list, err := h.client.List(ctx)
	if err != nil || len(list) != 2 || list[0].State != api.MountFailed || list[1].State != api.MountFailed ||
		!strings.Contains(list[0].Error, "previous daemon") {
		t.Fatalf("list: %+v %v", list, err)
	}
	if st := h.state(); len(st) != 2 || st[0].State != api.MountFailed {
		t.Errorf("state: %+v", st)
	}
	if hl, _ := h.client.Health(ctx); hl == nil || hl.Mounts != 2 || hl.Failed != 2 {
		t.Errorf("health: %+v", hl)
	}
	logs := h.logs.String()
	if !strings.Contains(logs, "dead mount detached") || !strings.Contains(logs, "id=aaaaaaaaaaaa") ||
		!strings.Contains(logs, "mount failed") || !strings.Contains(logs, "id=bbbbbbbbbbbb") {
		t.Errorf("failures not logged:\n%s", logs)
	}
	// The failed mount holds its mountpoint until it is deleted.
	_, err = h.client.Mount(ctx, api.CreateMount{Archive: h.archive, Mountpoint: dead})
	wantAPIError(t, err, 409, api.CodeConflict, "failed mount aaaaaaaaaaaa")
	if _, err := h.client.Unmount(ctx, "aaaaaaaaaaaa", false); err != nil {
		t.Fatal(err)
	}
	h.mount(dead)
	if st := h.state(); len(st) != 2 || st[0].ID != "bbbbbbbbbbbb" || st[1].Mountpoint != dead || st[1].State != api.MountActive {
		t.Errorf("state: %+v", st)
	}
}

func TestStateFileIsAtomicJSON(t *testing.T) {
	dir := t.TempDir()
	want := []StateEntry{{ID: "x", Archive: "/a.clip", Mountpoint: "/m", Created: time.Unix(1700000000, 0).UTC(), PID: 42}}
	if err := writeState(dir, want); err != nil {
		t.Fatal(err)
	}
	got, err := ReadState(dir)
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	left, _ := filepath.Glob(filepath.Join(dir, ".mounts-*"))
	if len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}
	b, _ := os.ReadFile(filepath.Join(dir, StateFile))
	for _, k := range []string{`"id"`, `"archive"`, `"mountpoint"`, `"created"`, `"pid"`} {
		if !strings.Contains(string(b), k) {
			t.Errorf("state file lacks %s:\n%s", k, b)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, StateFile), []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadState(dir); err == nil || !strings.Contains(err.Error(), StateFile) {
		t.Errorf("corrupt table: %v", err)
	}
}

func TestShutdownUnmountsAllAndRemovesSocket(t *testing.T) {
	h := newHarness(t).start()
	a := h.mount(h.mp("a"))
	h.fm.mu.Lock()
	h.fm.busy = true // the second refuses a graceful unmount: forced
	h.fm.mu.Unlock()
	b := h.mount(h.mp("b"))

	if err := h.stop(); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if calls := h.fm.get(a.Mountpoint).unmountCalls(); !slices.Equal(calls, []bool{false}) {
		t.Errorf("a unmount calls %v", calls)
	}
	if calls := h.fm.get(b.Mountpoint).unmountCalls(); !slices.Equal(calls, []bool{false, true}) {
		t.Errorf("b unmount calls %v, want graceful then forced", calls)
	}
	if _, err := os.Lstat(h.cfg.Daemon.Socket); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left: %v", err)
	}
	if st := h.state(); len(st) != 0 {
		t.Errorf("state after shutdown: %+v", st)
	}
}

func TestSocketHandling(t *testing.T) {
	h := newHarness(t)
	// What a killed daemon leaves: a socket file nobody listens on.
	if err := os.MkdirAll(filepath.Dir(h.cfg.Daemon.Socket), 0o755); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", h.cfg.Daemon.Socket)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	h.start()

	// A second daemon on the same socket must refuse, not steal it (its
	// own state dir: the state dir lock is not what refuses it here).
	cfg := h.cfg
	cfg.Daemon.StateDir = filepath.Join(h.dir, "state2")
	srv, err := NewServer(Options{Config: cfg, Mounter: h.fm})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Serve(ctx); err == nil || !strings.Contains(err.Error(), "another clipd") {
		t.Errorf("second daemon: %v", err)
	}
	if _, err := h.client.Health(context.Background()); err != nil {
		t.Errorf("first daemon lost its socket: %v", err)
	}

	// A file that is not a socket is not deleted.
	h2 := newHarness(t)
	if err := os.MkdirAll(filepath.Dir(h2.cfg.Daemon.Socket), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(h2.cfg.Daemon.Socket, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	srv2, _ := NewServer(Options{Config: h2.cfg, Mounter: h2.fm})
	if err := srv2.Serve(ctx); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("non-socket file: %v", err)
	}
}

func TestClientConnectError(t *testing.T) {
	_, err := api.NewClient("/nonexistent/clipd.sock").Health(context.Background())
	if err == nil || !strings.Contains(err.Error(), "connect to clipd at /nonexistent/clipd.sock") {
		t.Errorf("got %v", err)
	}
}
