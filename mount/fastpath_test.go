package mount

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// An image without any xattr answers EOPNOTSUPP (the kernel's own answer
// once told ENOSYS), and repeated opens, reads and listings keep working
// with zero-message opens and cached directories.
func TestNoXattrsAndCachedOpens(t *testing.T) {
	f := newFixture(t)
	for _, n := range f.a.Nodes {
		n.Xattrs = nil
	}
	_, mp := mountFixture(t, f.a, f.layers, Options{})
	for i := 0; i < 3; i++ {
		if _, err := unix.Llistxattr(mp, make([]byte, 100)); !errors.Is(err, unix.ENOTSUP) {
			t.Fatalf("llistxattr on an image without xattrs: %v, want EOPNOTSUPP", err)
		}
		if _, err := unix.Lgetxattr(mp, "user.x", make([]byte, 100)); !errors.Is(err, unix.ENOTSUP) {
			t.Fatalf("lgetxattr on an image without xattrs: %v, want EOPNOTSUPP", err)
		}
	}
	for round := 0; round < 3; round++ {
		for p, want := range f.content {
			got, err := os.ReadFile(filepath.Join(mp, p))
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("round %d: %s: %v", round, p, err)
			}
		}
		first, err := os.ReadDir(mp)
		if err != nil || len(first) == 0 {
			t.Fatalf("readdir: %v", err)
		}
		again, _ := os.ReadDir(mp)
		if len(again) != len(first) {
			t.Fatalf("cached listing has %d entries, first had %d", len(again), len(first))
		}
	}
}
