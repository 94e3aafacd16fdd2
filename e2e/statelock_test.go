package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/clipd/clipd/internal/fixture"
)

// TestSecondDaemonOnSameStateDir starts a second clipd serve on the config
// of a running one (its own socket, so only the state dir lock can stop
// it): it exits non-zero within seconds naming the first daemon's pid and
// the lock, and the first daemon still lists and serves its mount. The
// serving process does not hold the lock.
func TestSecondDaemonOnSameStateDir(t *testing.T) {
	requireE2ETools(t)
	d, archive := layoutFixture(t)
	id, mp := d.mount(t, archive, "a")
	servingPID := listMounts(t, d)[id].PID
	lock := filepath.Join(filepath.Dir(d.config), "state", "lock")

	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", servingPID))
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		if target, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", servingPID, fd.Name())); target == lock {
			t.Errorf("serving process %d holds the state dir lock as fd %s", servingPID, fd.Name())
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var stderr bytes.Buffer
	second := exec.CommandContext(ctx, d.bin, "--socket", filepath.Join(t.TempDir(), "second.sock"),
		"serve", "--keep-mounts", "--config", d.config)
	second.Stderr = &stderr
	start := time.Now()
	err = second.Run()
	took := time.Since(start)
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() <= 0 {
		t.Fatalf("second daemon: %v (want a non-zero exit)\nstderr:\n%s", err, stderr.String())
	}
	if took > 5*time.Second {
		t.Errorf("second daemon took %s to give up", took)
	}
	msg := stderr.String()
	t.Logf("second daemon refused in %s:\n%s", took.Round(time.Millisecond), strings.TrimSpace(msg))
	for _, want := range []string{fmt.Sprintf("pid %d", d.cmd.Process.Pid), lock} {
		if !strings.Contains(msg, want) {
			t.Errorf("second daemon's error does not name %q:\n%s", want, msg)
		}
	}

	if m, ok := listMounts(t, d)[id]; !ok || m.State != "active" || m.PID != servingPID {
		t.Fatalf("first daemon after the refused start: %+v (listed %v)", m, ok)
	}
	if got, err := os.ReadFile(filepath.Join(mp, "big", "blob")); err != nil || !bytes.Equal(got, fixture.Big()) {
		t.Fatalf("mount after the refused start: %d bytes, %v", len(got), err)
	}
	d.umount(t, id, mp)
}
