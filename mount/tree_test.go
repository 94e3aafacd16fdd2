package mount

import (
	"bytes"
	"io"
	"os"
	"path"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/clipd/clipd/index"
)

func mk(p string, mode uint32, ino uint64) *index.Node {
	n := &index.Node{Path: p, Layer: -1}
	n.Attr.Mode, n.Attr.Ino = mode, ino
	return n
}

func TestInvalidTrees(t *testing.T) {
	dir := syscall.S_IFDIR | 0755
	reg := syscall.S_IFREG | 0644
	withContent := func(n *index.Node, layer int) *index.Node {
		n.Layer, n.Attr.Size = layer, 10
		return n
	}
	cases := map[string]struct {
		nodes []*index.Node
		want  string
	}{
		"empty":          {nil, "empty tree"},
		"no root":        {[]*index.Node{mk("/a", uint32(dir), 2)}, "want the root"},
		"root not dir":   {[]*index.Node{mk("/", uint32(reg), 1)}, "root is not a directory"},
		"missing parent": {[]*index.Node{mk("/", uint32(dir), 1), mk("/a/b", uint32(reg), 2)}, "parent directory is not in the tree"},
		"parent is file": {[]*index.Node{mk("/", uint32(dir), 1), mk("/a", uint32(reg), 2), mk("/a/b", uint32(reg), 3)}, "parent is not a directory"},
		"unclean path":   {[]*index.Node{mk("/", uint32(dir), 1), mk("/a/", uint32(dir), 2)}, "not absolute and clean"},
		"duplicate":      {[]*index.Node{mk("/", uint32(dir), 1), mk("/a", uint32(reg), 2), mk("/a", uint32(reg), 3)}, "listed twice"},
		"dir hard link":  {[]*index.Node{mk("/", uint32(dir), 1), mk("/a", uint32(dir), 2), mk("/b", uint32(dir), 2)}, "directories cannot be hard links"},
		"mixed link":     {[]*index.Node{mk("/", uint32(dir), 1), mk("/a", uint32(reg), 2), mk("/b", syscall.S_IFLNK|0777, 2)}, "another type"},
		"bad type":       {[]*index.Node{mk("/", uint32(dir), 1), mk("/a", 0644, 2)}, "unknown file type"},
		"no layer":       {[]*index.Node{mk("/", uint32(dir), 1), withContent(mk("/a", uint32(reg), 2), 1)}, "layer 1"},
		"reserved ino":   {[]*index.Node{mk("/", uint32(dir), 1), mk("/a", uint32(reg), ^uint64(0))}, "reserved"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			mp := t.TempDir()
			layers := []io.ReaderAt{bytes.NewReader(make([]byte, 100))}
			m, err := New(mp, &index.Archive{Nodes: c.nodes}, layers, Options{})
			if err == nil {
				m.Unmount(true)
				t.Fatal("New accepted an invalid tree")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not say %q", err, c.want)
			}
			if mountInfo(t, mp) != "" {
				t.Errorf("a failed New left a mount")
			}
		})
	}
	if _, err := New(t.TempDir(), nil, nil, Options{}); err == nil {
		t.Error("New accepted a nil archive")
	}
	if _, err := New("/nonexistent/mountpoint", &index.Archive{Nodes: []*index.Node{mk("/", uint32(dir), 1)}}, nil, Options{}); err == nil {
		t.Error("New mounted on a missing directory")
	}
}

// An index whose root is not inode 1 while another node is: FUSE node IDs
// (the root's is always 1) are not inode numbers, and stat must still show
// the index's numbers. Nodes without a number get fresh ones above the
// largest.
func TestInodeNumbersNotNodeIDs(t *testing.T) {
	content := []byte("data")
	f := mk("/f", syscall.S_IFREG|0644, 1)
	f.Layer, f.Attr.Size = 0, uint64(len(content))
	a := &index.Archive{Nodes: []*index.Node{
		mk("/", syscall.S_IFDIR|0755, 500),
		mk("/d", syscall.S_IFDIR|0700, 0),
		f,
		mk("/g", syscall.S_IFREG|0644, 0),
	}}
	_, mp := mountFixture(t, a, []io.ReaderAt{bytes.NewReader(content)}, Options{})
	want := map[string]uint64{"/": 500, "/d": 501, "/f": 1, "/g": 502}
	for p, ino := range want {
		var st unix.Stat_t
		if err := unix.Lstat(mp+p, &st); err != nil {
			t.Fatal(err)
		}
		if st.Ino != ino {
			t.Errorf("%s: ino %d, want %d", p, st.Ino, ino)
		}
	}
	if got, err := os.ReadFile(mp + "/f"); err != nil || string(got) != "data" {
		t.Errorf("read /f: %q, %v", got, err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(mp+"/d", &st); err != nil || st.Mode != syscall.S_IFDIR|0700 || st.Nlink != 2 {
		t.Errorf("/d: mode %#o nlink %d, %v", st.Mode, st.Nlink, err)
	}
}

// index.IsCleanAbs must agree with path.Clean on every kind of path an
// index may hold, since it replaces it on the mount path.
func TestCleanAbs(t *testing.T) {
	for _, p := range []string{"/", "/a", "/a/b", "/a.b/c..d", "/.a", "/..a", "/a..", "", "a", "a/b", "//", "/a/", "/a//b",
		"/./a", "/a/.", "/a/..", "/../a", "/a/./b", "/a/../b", "/...", "/a/...", "/.", "/.."} {
		if got, want := index.IsCleanAbs(p), strings.HasPrefix(p, "/") && path.Clean(p) == p; got != want {
			t.Errorf("IsCleanAbs(%q) = %v, want %v", p, got, want)
		}
	}
}

// An archive whose nodes are not sorted by path (index.Open sorts; a
// hand-built one need not) mounts with the same tree.
func TestUnsortedNodes(t *testing.T) {
	content := []byte("data")
	f := mk("/d/f", syscall.S_IFREG|0644, 4)
	f.Layer, f.Attr.Size = 0, uint64(len(content))
	a := &index.Archive{Nodes: []*index.Node{
		mk("/d-x", syscall.S_IFDIR|0755, 3), f, mk("/d", syscall.S_IFDIR|0755, 2), mk("/", syscall.S_IFDIR|0755, 1),
	}}
	mp := t.TempDir()
	m, err := New(mp, a, []io.ReaderAt{bytes.NewReader(content)}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Unmount(true)
	ents, err := os.ReadDir(mp)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if strings.Join(names, ",") != "d,d-x" {
		t.Errorf("root lists %v, want [d d-x]", names)
	}
	if b, err := os.ReadFile(mp + "/d/f"); err != nil || string(b) != "data" {
		t.Errorf("read /d/f: %q, %v", b, err)
	}
	var st unix.Stat_t
	if err := unix.Stat(mp+"/d", &st); err != nil || st.Nlink != 2 || st.Ino != 2 {
		t.Errorf("stat /d: ino %d nlink %d, %v; want ino 2 nlink 2", st.Ino, st.Nlink, err)
	}
}
