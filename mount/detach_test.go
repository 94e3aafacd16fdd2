package mount

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/hanwen/go-fuse/v2/fs"
	"golang.org/x/sys/unix"
)

// mountedAtPath reports whether a mount sits exactly at path.
func mountedAtPath(t *testing.T, path string) bool {
	t.Helper()
	var st, pst unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return false
	}
	if err := unix.Lstat(filepath.Dir(path), &pst); err != nil {
		t.Fatal(err)
	}
	return st.Dev != pst.Dev
}

func mountTmpfs(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatalf("mount tmpfs at %s: %v", dir, err)
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
}

// TestDetachDeadFollowsNoLink: a mountpoint path swapped for a symbolic
// link to another mount outside the roots (at the leaf or at a parent) is
// not unmounted through; a mount of another type at the path is left
// alone; a FUSE mount at the path is detached.
func TestDetachDeadFollowsNoLink(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root: it mounts")
	}
	base := t.TempDir()
	root, outside := filepath.Join(base, "root"), filepath.Join(base, "outside")
	roots := []string{root}
	victim := filepath.Join(outside, "victim")
	mountTmpfs(t, victim)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}

	// The leaf is a link to the victim mount.
	must(os.MkdirAll(filepath.Join(root, "a"), 0o755))
	must(os.Symlink(victim, filepath.Join(root, "a", "mp")))
	if detached, err := DetachDead(roots, filepath.Join(root, "a", "mp")); detached {
		t.Errorf("leaf link: detached (err %v)", err)
	}
	if !mountedAtPath(t, victim) {
		t.Fatal("leaf link: the mount outside the roots was unmounted through the link")
	}

	// A parent is a link to the directory holding the victim mount.
	must(os.Symlink(outside, filepath.Join(root, "p")))
	detached, err := DetachDead(roots, filepath.Join(root, "p", "victim"))
	if detached || !errors.Is(err, unix.ELOOP) {
		t.Errorf("parent link: detached %v, err %v; want ELOOP", detached, err)
	}
	if !mountedAtPath(t, victim) {
		t.Fatal("parent link: the mount outside the roots was unmounted through the link")
	}

	// Outside every root: refused whatever is there.
	if _, err := DetachDead(roots, victim); !errors.Is(err, ErrOutsideRoots) {
		t.Errorf("outside the roots: %v, want ErrOutsideRoots", err)
	}
	if _, err := DetachDead(roots, root); !errors.Is(err, ErrOutsideRoots) {
		t.Errorf("the root itself: %v, want ErrOutsideRoots", err)
	}

	// Another kind of mount inside the roots is not ours.
	other := filepath.Join(root, "b", "tmp")
	mountTmpfs(t, other)
	if _, err := DetachDead(roots, other); !errors.Is(err, ErrNotFUSE) {
		t.Errorf("tmpfs inside the roots: %v, want ErrNotFUSE", err)
	}
	if !mountedAtPath(t, other) {
		t.Fatal("tmpfs inside the roots was unmounted")
	}

	// Nothing mounted, or nothing there: nothing to do.
	must(os.MkdirAll(filepath.Join(root, "c", "empty"), 0o755))
	for _, p := range []string{filepath.Join(root, "c", "empty"), filepath.Join(root, "c", "missing"), filepath.Join(root, "gone", "x")} {
		if detached, err := DetachDead(roots, p); detached || err != nil {
			t.Errorf("%s: detached %v, err %v; want nothing done", p, detached, err)
		}
	}

	// A FUSE mount at the path is detached.
	fmp := filepath.Join(root, "d", "fuse")
	must(os.MkdirAll(fmp, 0o755))
	server, err := fs.Mount(fmp, &fs.Inode{}, &fs.Options{})
	if err != nil {
		t.Fatalf("FUSE mount: %v", err)
	}
	detached, err = DetachDead(roots, fmp)
	if !detached || err != nil {
		t.Fatalf("FUSE mount: detached %v, err %v", detached, err)
	}
	server.Wait()
	if mountedAtPath(t, fmp) {
		t.Error("FUSE mount still there after DetachDead")
	}
}
