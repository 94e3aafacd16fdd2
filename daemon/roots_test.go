package daemon

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/clipd/clipd/api"
)

// openTempDir returns a temp dir that every user can traverse up to /
// (t.TempDir's own directories are 0700, which would close every root
// below them).
func openTempDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for p := dir; p != os.TempDir() && p != "/"; p = filepath.Dir(p) {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestPrepareRootsCreates0700(t *testing.T) {
	dir := openTempDir(t)
	root := filepath.Join(dir, "run", "mnt")
	var logs bytes.Buffer
	if err := prepareRoots([]string{root}, slog.New(slog.NewTextHandler(&logs, nil))); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(root)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("created mount root %s has mode %04o, want 0700", root, fi.Mode().Perm())
	}
	// The parent holds the socket in the default layout: it stays open.
	if pi, err := os.Stat(filepath.Dir(root)); err != nil || pi.Mode().Perm() != 0o755 {
		t.Errorf("parent of the root: %v %v, want mode 0755", pi, err)
	}
	if strings.Contains(logs.String(), "WARN") {
		t.Errorf("a fresh 0700 root was warned about:\n%s", logs.String())
	}
}

func TestPrepareRootsWarnsWhenTraversable(t *testing.T) {
	dir := openTempDir(t)
	open := filepath.Join(dir, "open")
	closedParent := filepath.Join(dir, "closed")
	behindClosed := filepath.Join(closedParent, "mnt")
	for _, p := range []string{open, behindClosed} {
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// 0755 below a root-only 0700 directory: nobody but root gets there.
	if err := os.Chmod(closedParent, 0o700); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	if err := prepareRoots([]string{open, behindClosed}, slog.New(slog.NewTextHandler(&logs, nil))); err != nil {
		t.Fatal(err)
	}
	out := logs.String()
	if !strings.Contains(out, "level=WARN") || !strings.Contains(out, "mount root "+open+" (mode 0755") ||
		!strings.Contains(out, "can be traversed by users other than root") {
		t.Errorf("no warning naming %s and its mode:\n%s", open, out)
	}
	if strings.Contains(out, behindClosed) {
		t.Errorf("warned about %s, which only root can reach:\n%s", behindClosed, out)
	}
	// An existing root keeps the mode its operator gave it.
	if fi, _ := os.Stat(open); fi.Mode().Perm() != 0o755 {
		t.Errorf("existing root changed to %04o", fi.Mode().Perm())
	}
}

func TestClosedToOthers(t *testing.T) {
	for _, c := range []struct {
		perm     os.FileMode
		uid, gid uint32
		closed   bool
	}{
		{0o700, 0, 0, true},
		{0o750, 0, 0, true},    // group root only
		{0o750, 0, 100, false}, // group 100 may pass
		{0o755, 0, 0, false},
		{0o701, 0, 0, false},
		{0o700, 1000, 0, false}, // its owner may pass (and chmod it)
		{0o1777, 0, 0, false},
	} {
		if got := closedToOthers(c.perm&0o777, c.uid, c.gid); got != c.closed {
			t.Errorf("closedToOthers(%04o, %d:%d) = %v, want %v", c.perm, c.uid, c.gid, got, c.closed)
		}
	}
}

func TestCheckRootRefusesSetuidUnderOpenRoot(t *testing.T) {
	dir := openTempDir(t)
	root := filepath.Join(dir, "mnt")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	roots := []string{root}
	mp := filepath.Join(root, "img")
	if err := checkRoot(false, mp, roots); err != nil {
		t.Errorf("nosuid mount under an open root: %v", err)
	}
	err := checkRoot(true, mp, roots)
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Status != http.StatusForbidden || !strings.Contains(ae.Message, root) ||
		!strings.Contains(ae.Message, "0755") {
		t.Fatalf("setuid mount under a 0755 root: %v, want 403 naming %s and its mode", err, root)
	}
	if err := os.Chmod(root, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := checkRoot(true, mp, roots); err != nil {
		t.Errorf("setuid mount under a 0700 root: %v", err)
	}
	// A root removed while serving comes back 0700, not 0755.
	if err := os.Remove(root); err != nil {
		t.Fatal(err)
	}
	if err := checkRoot(false, mp, roots); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(root); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("recreated root: %v %v, want mode 0700", fi, err)
	}
}

// The setuid choice goes from the request to the Mounter, the mount table
// and the API answers; under a root others can traverse it is refused
// before anything is created.
func TestSetuidMountRequest(t *testing.T) {
	h := newHarness(t).start()
	ctx := context.Background()
	plain := h.mount(h.mp("plain"))
	suid, err := h.client.Mount(ctx, api.CreateMount{Archive: h.archive, Mountpoint: h.mp("suid"), Setuid: true})
	if err != nil {
		t.Fatalf("setuid mount under a 0700 root: %v", err)
	}
	if plain.Setuid || !suid.Setuid {
		t.Errorf("answers: plain setuid=%v, suid setuid=%v", plain.Setuid, suid.Setuid)
	}
	if m := h.fm.get(h.mp("suid")); m == nil || !m.req.Setuid || h.fm.get(h.mp("plain")).req.Setuid {
		t.Errorf("the Mounter was not asked for setuid on %s only", h.mp("suid"))
	}
	list, err := h.client.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, m := range list {
		got[m.Mountpoint] = m.Setuid
	}
	if len(got) != 2 || got[h.mp("plain")] || !got[h.mp("suid")] {
		t.Errorf("GET /v1/mounts setuid: %v", got)
	}
	for _, e := range h.state() {
		if e.Setuid != (e.Mountpoint == h.mp("suid")) {
			t.Errorf("mount table: %s setuid=%v", e.Mountpoint, e.Setuid)
		}
	}

	for _, p := range []string{h.dir, h.root} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	_, err = h.client.Mount(ctx, api.CreateMount{Archive: h.archive, Mountpoint: h.mp("open"), Setuid: true})
	wantAPIError(t, err, http.StatusForbidden, "", "mount root "+h.root+" (mode 0755")
	if _, err := os.Lstat(h.mp("open")); err == nil {
		t.Errorf("the refused request created %s", h.mp("open"))
	}
	if _, err := h.client.Mount(ctx, api.CreateMount{Archive: h.archive, Mountpoint: h.mp("open")}); err != nil {
		t.Errorf("nosuid mount under an open root: %v", err)
	}
}
