package mounter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/clipd/clipd/daemon"
	"golang.org/x/sys/unix"
)

// TestDeadProcessUnmountFollowsNoLink: the mount of a serving process that
// died is detached through its parent opened beneath the mount roots. A
// parent swapped for a symbolic link to a directory outside the roots,
// where another mount (a tmpfs here) sits under the same name, must not
// get that mount unmounted.
func TestDeadProcessUnmountFollowsNoLink(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root: it mounts")
	}
	base := t.TempDir()
	root, outside := filepath.Join(base, "root"), filepath.Join(base, "outside")
	victim := filepath.Join(outside, "mp")
	if err := os.MkdirAll(victim, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", victim, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(victim, unix.MNT_DETACH) })
	if err := os.MkdirAll(root, 0o700); err != nil {
		t.Fatal(err)
	}
	// The mount was made at root/p/mp; root/p is now a link to outside.
	if err := os.Symlink(outside, filepath.Join(root, "p")); err != nil {
		t.Fatal(err)
	}

	// A serving process that is gone: an exited (and reaped) child.
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	p := &procMount{
		id: "dead", mountpoint: filepath.Join(root, "p", "mp"), pid: cmd.Process.Pid,
		control: filepath.Join(base, "gone.sock"), client: newControlClient(filepath.Join(base, "gone.sock")),
		log: slog.New(slog.DiscardHandler), roots: func() []string { return []string{root} },
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := p.Unmount(ctx, true)
	t.Logf("unmount of the dead process's mount: %v", err)
	if err == nil {
		t.Errorf("unmount through a swapped parent reported success")
	}
	var st, pst unix.Stat_t
	if err := unix.Stat(victim, &st); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(outside, &pst); err != nil {
		t.Fatal(err)
	}
	if st.Dev == pst.Dev {
		t.Fatal("the tmpfs outside the roots was unmounted through the link")
	}
}

// TestFailureReport: the sentinel of a serving process's mount error
// crosses the report pipe, so that the daemon answers 422, 404, 409 or 401.
func TestFailureReport(t *testing.T) {
	for _, sentinel := range []error{daemon.ErrInvalidArchive, daemon.ErrArchiveUnavailable, daemon.ErrMountpointMoved, daemon.ErrRegistryUnauthorized} {
		sent := failure(42, "v", fmt.Errorf("%w: what happened", sentinel))
		b, err := json.Marshal(sent)
		if err != nil {
			t.Fatal(err)
		}
		var got readyMsg
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatal(err)
		}
		if e := got.err(); !errors.Is(e, sentinel) || e.Error() != sentinel.Error()+": what happened" {
			t.Errorf("%v: report %s gives %v", sentinel, b, e)
		}
	}
	plain := failure(42, "v", errors.New("boom")).err()
	for _, sentinel := range []error{daemon.ErrInvalidArchive, daemon.ErrArchiveUnavailable, daemon.ErrMountpointMoved, daemon.ErrRegistryUnauthorized} {
		if errors.Is(plain, sentinel) {
			t.Errorf("a plain error came back as %v", sentinel)
		}
	}
}
