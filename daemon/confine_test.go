package daemon

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/clipd/clipd/api"
	"golang.org/x/sys/unix"
)

// TestFailedMountRemovesWhatItCreated: a failed request removes the
// directories it made, and only those.
func TestFailedMountRemovesWhatItCreated(t *testing.T) {
	h := newHarness(t)
	if err := os.MkdirAll(h.mp("kept"), 0o755); err != nil {
		t.Fatal(err)
	}
	h.fm.fail = errors.New("open index: bad magic")
	h.start()
	for _, mp := range []string{h.mp("new/deeper/leaf"), h.mp("kept/leaf")} {
		status, ae := rawCreate(t, h.client, strings.NewReader(`{"archive":"`+h.archive+`","mountpoint":"`+mp+`"}`))
		if status != 500 || !strings.Contains(ae.Message, "bad magic") {
			t.Errorf("%s: got %d %+v", mp, status, ae)
		}
	}
	for _, gone := range []string{h.mp("new"), h.mp("kept/leaf")} {
		if _, err := os.Lstat(gone); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind by a failed request: %v", gone, err)
		}
	}
	if fi, err := os.Stat(h.mp("kept")); err != nil || !fi.IsDir() {
		t.Errorf("a directory the request did not create was removed: %v", err)
	}
}

// TestNestedMountRefused: a mountpoint below another mount (a tmpfs here,
// a clipd mount in production) is refused, and nothing is created in it.
func TestNestedMountRefused(t *testing.T) {
	h := newHarness(t)
	other := h.mp("other")
	if err := os.MkdirAll(other, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("clipdtest", other, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	defer unix.Unmount(other, unix.MNT_DETACH)
	h.start()
	status, ae := rawCreate(t, h.client, strings.NewReader(`{"archive":"`+h.archive+`","mountpoint":"`+filepath.Join(other, "x")+`"}`))
	if status != 409 || ae.Code != api.CodeConflict || !strings.Contains(ae.Message, "inside the tmpfs mount at "+other) {
		t.Errorf("got %d %+v", status, ae)
	}
	if _, err := os.Lstat(filepath.Join(other, "x")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("created inside the other mount: %v", err)
	}
}

// FuzzMountpointPath: any request path either is refused or opens a
// directory that really is strictly below the mount root, at that path.
func FuzzMountpointPath(f *testing.F) {
	base := f.TempDir()
	root := filepath.Join(base, "mnt")
	outside := filepath.Join(base, "outside")
	for _, d := range []string{filepath.Join(root, "dir", "sub"), outside} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			f.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "file"), nil, 0o644); err != nil {
		f.Fatal(err)
	}
	for name, target := range map[string]string{"escape": outside, "inner": filepath.Join(root, "dir"), "dangling": filepath.Join(outside, "x")} {
		if err := os.Symlink(target, filepath.Join(root, name)); err != nil {
			f.Fatal(err)
		}
	}
	for _, s := range []string{"a", "dir/sub", "dir/sub/new", "escape", "escape/x", "inner/x", "dangling/y", "file", "file/x",
		"../outside", "dir/../../outside", "", "/", "dir//sub", "dir/./sub", "a\x00b", "a\nb", strings.Repeat("d/", 300)} {
		f.Add(s)
	}
	roots := []string{root}
	f.Fuzz(func(t *testing.T, rel string) {
		p := root + "/" + rel
		real, err := checkMountpointPath(p, roots)
		if err != nil {
			return
		}
		c, err := openMountpoint(real, roots)
		if err != nil {
			return
		}
		defer c.cleanup()
		if !strings.HasPrefix(c.path, root+"/") {
			t.Fatalf("%q accepted as %s, not below %s", p, c.path, root)
		}
		at, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(int(c.dir.Fd())))
		if err != nil || at != c.path {
			t.Fatalf("%q opened %s (%v), reported %s", p, at, err, c.path)
		}
		if ents, _ := os.ReadDir(outside); len(ents) > 0 {
			t.Fatalf("%q created %s outside the root", p, ents[0].Name())
		}
	})
}
