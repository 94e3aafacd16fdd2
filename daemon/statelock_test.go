package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/clipd/clipd/api"
)

// TestSecondDaemonRefusedOnSameStateDir: a second daemon on the state dir
// of a running one (on another socket, so only the lock can stop it)
// refuses to start, naming the owner's pid and the lock, and leaves the
// first daemon's mounts alone; once the first stops, a daemon starts there.
func TestSecondDaemonRefusedOnSameStateDir(t *testing.T) {
	h := newHarness(t).start()
	mp := h.mp("a")
	h.mount(mp)
	before, err := os.ReadFile(filepath.Join(h.cfg.Daemon.StateDir, StateFile))
	if err != nil {
		t.Fatal(err)
	}
	lockPath := filepath.Join(h.cfg.Daemon.StateDir, LockFile)
	if b, err := os.ReadFile(lockPath); err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(os.Getpid()) {
		t.Fatalf("lock file %s: %q %v, want this process's pid", lockPath, b, err)
	}

	cfg := h.cfg
	cfg.Daemon.Socket = filepath.Join(h.dir, "run", "second.sock")
	second := &fakeMounter{}
	srv, err := NewServer(Options{Config: cfg, Mounter: second, UnmountTimeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	err = srv.Serve(ctx)
	took := time.Since(start)
	var locked *StateDirLockedError
	if !errors.As(err, &locked) || locked.PID != os.Getpid() {
		t.Fatalf("second daemon: %v, want a StateDirLockedError naming pid %d", err, os.Getpid())
	}
	for _, want := range []string{fmt.Sprintf("pid %d", os.Getpid()), lockPath, h.cfg.Daemon.StateDir} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	if took > 2*time.Second {
		t.Errorf("second daemon took %s to refuse", took)
	}
	if _, err := os.Stat(cfg.Daemon.Socket); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("refused daemon left its socket: %v", err)
	}

	// The first daemon's mount is untouched: still listed, never
	// unmounted, the table unchanged.
	list, err := h.client.List(context.Background())
	if err != nil || len(list) != 1 || list[0].Mountpoint != mp || list[0].State != api.MountActive {
		t.Fatalf("first daemon lists %+v %v", list, err)
	}
	if calls := h.fm.get(mp).unmountCalls(); len(calls) != 0 {
		t.Errorf("first daemon's mount got unmount calls %v", calls)
	}
	if after, err := os.ReadFile(filepath.Join(h.cfg.Daemon.StateDir, StateFile)); err != nil || string(after) != string(before) {
		t.Errorf("mount table changed by the refused daemon:\n%s\nwas:\n%s", after, before)
	}

	// The lock goes with its owner: the next daemon starts.
	if err := h.stop(); err != nil {
		t.Fatal(err)
	}
	h2 := &harness{t: t, dir: h.dir, root: h.root, archive: h.archive, cfg: h.cfg, fm: &fakeMounter{}, logs: h.logs}
	h2.start()
}

// TestStateLockNotInherited: child processes (serving processes are
// children) do not get the lock's file descriptor.
func TestStateLockNotInherited(t *testing.T) {
	dir := t.TempDir()
	l, err := lockStateDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	out, err := exec.Command("/bin/sh", "-c", "ls -l /proc/$$/fd/").CombinedOutput()
	if err != nil {
		t.Fatalf("list a child's fds: %v\n%s", err, out)
	}
	if strings.Contains(string(out), filepath.Join(dir, LockFile)) {
		t.Errorf("a child process holds the state dir lock:\n%s", out)
	}
	if _, err := lockStateDir(dir); err == nil {
		t.Error("a second lock of the same dir succeeded")
	}
}
