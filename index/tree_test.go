package index

import (
	"archive/tar"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestWhiteoutFile(t *testing.T) {
	m := buildLayers(t,
		[]te{dirE("a/", 0o755), fileE("a/f", "x"), fileE("a/g", "y")},
		[]te{fileE("a/.wh.f", "")},
	)
	wantPaths(t, m, "/", "/a", "/a/g")
}

func TestWhiteoutDirRemovesSubtree(t *testing.T) {
	m := buildLayers(t,
		[]te{dirE("d/", 0o755), dirE("d/x/", 0o755), fileE("d/x/y", "y"), fileE("keep", "k")},
		[]te{fileE(".wh.d", ""), fileE(".wh.never-existed", "")},
	)
	wantPaths(t, m, "/", "/keep")
}

func TestWhiteoutSparesSameLayer(t *testing.T) {
	// A whiteout applies to lower layers only (image-spec), even when the
	// same layer lists the name before it.
	m := buildLayers(t,
		[]te{dirE("d/", 0o700), fileE("d/old", "o")},
		[]te{dirE("d/", 0o750), fileE("d/new", "n"), fileE(".wh.d", "")},
	)
	wantPaths(t, m, "/", "/d", "/d/new")
	if got := mustNode(t, m, "/d").Attr.Mode; got != unix.S_IFDIR|0o750 {
		t.Errorf("/d mode %o, want dir 0750", got)
	}
}

func TestOpaqueDir(t *testing.T) {
	m := buildLayers(t,
		[]te{dirE("o/", 0o700), fileE("o/old", "o"), dirE("o/sub/", 0o755), fileE("o/sub/x", "x"), fileE("o/re", "lower"), fileE("outside", "z")},
		[]te{fileE("o/before", "b"), fileE("o/re", "upper"), fileE("o/.wh..wh..opq", ""), fileE("o/after", "a")},
	)
	wantPaths(t, m, "/", "/o", "/o/before", "/o/re", "/o/after", "/outside")
	if got := m["/o/re"].Attr.Size; got != 5 {
		t.Errorf("/o/re size %d, want the upper file (5)", got)
	}
	// The marker hides the directory's lower content, not the directory's
	// own attributes.
	if got := m["/o"].Attr.Mode; got != unix.S_IFDIR|0o700 {
		t.Errorf("/o mode %o, want lower dir 0700", got)
	}
}

func TestOpaqueHidesLowerChildrenOfRedeclaredSubdir(t *testing.T) {
	m := buildLayers(t,
		[]te{dirE("o/", 0o755), dirE("o/s/", 0o755), fileE("o/s/old", "o")},
		[]te{dirE("o/s/", 0o711), fileE("o/s/new", "n"), fileE("o/.wh..wh..opq", "")},
	)
	wantPaths(t, m, "/", "/o", "/o/s", "/o/s/new")
}

func TestOpaqueRootAndMissingDir(t *testing.T) {
	m := buildLayers(t,
		[]te{fileE("a", "a"), dirE("b/", 0o755)},
		[]te{fileE("c", "c"), fileE(".wh..wh..opq", ""), fileE("new/.wh..wh..opq", "")},
	)
	wantPaths(t, m, "/", "/c", "/new")
}

func TestImplicitParents(t *testing.T) {
	low := dirE("keep/", 0o700)
	low.h.Uid = 5
	m := buildLayers(t,
		[]te{low},
		[]te{fileE("x/y/z", "z"), fileE("keep/sub/f", "f")},
	)
	wantPaths(t, m, "/", "/x", "/x/y", "/x/y/z", "/keep", "/keep/sub", "/keep/sub/f")
	for _, p := range []string{"/x", "/x/y", "/keep/sub"} {
		a := m[p].Attr
		if a.Mode != unix.S_IFDIR|0o755 || a.Uid != 0 || a.Gid != 0 || a.Mtime != 0 || a.Mtimensec != 0 || a.Ctime != 0 || a.Atime != 0 {
			t.Errorf("%s: implicit dir attrs %+v, want dir 0755 0:0 mtime 0", p, a)
		}
	}
	// Passing through an existing directory does not touch its attributes.
	if a := m["/keep"].Attr; a.Mode != unix.S_IFDIR|0o700 || a.Uid != 5 {
		t.Errorf("/keep attrs %+v, want lower dir 0700 uid 5", a)
	}
}

func TestRootDefaults(t *testing.T) {
	m := buildLayers(t, []te{fileE("f", "f")})
	a := mustNode(t, m, "/").Attr
	if a.Mode != unix.S_IFDIR|0o755 || a.Uid != 0 || a.Gid != 0 || a.Mtime != 0 || a.Ino != 1 || a.Nlink != 2 {
		t.Errorf("root attrs %+v, want dir 0755 0:0 mtime 0 ino 1 nlink 2", a)
	}
}

func TestRootEntry(t *testing.T) {
	for _, name := range []string{"./", "/", "."} {
		root := dirE(name, 0o700)
		root.h.Uid, root.h.Gid = 3, 4
		m := buildLayers(t, []te{root, fileE("./f", "f")})
		a := mustNode(t, m, "/").Attr
		if a.Mode != unix.S_IFDIR|0o700 || a.Uid != 3 || a.Gid != 4 || a.Mtime != uint64(tm.Unix()) || a.Mtimensec != uint32(tm.Nanosecond()) {
			t.Errorf("root entry %q: attrs %+v, want dir 0700 3:4 mtime %v", name, a, tm)
		}
	}
	if err := buildError(t, []te{fileE(".", "")}); !strings.Contains(err.Error(), "root is not a directory") {
		t.Errorf("file at root: %v", err)
	}
}

func TestDirReplacedByFile(t *testing.T) {
	m := buildLayers(t,
		[]te{dirE("d/", 0o755), dirE("d/s/", 0o755), fileE("d/s/f", "f")},
		[]te{fileE("d", "now a file")},
	)
	wantPaths(t, m, "/", "/d")
	if a := m["/d"].Attr; a.Mode != unix.S_IFREG|0o644 || a.Size != 10 || m["/d"].Layer != 1 {
		t.Errorf("/d attrs %+v layer %d, want regular file of layer 1", a, m["/d"].Layer)
	}
}

func TestFileReplacedByDir(t *testing.T) {
	m := buildLayers(t,
		[]te{fileE("f", "file")},
		[]te{dirE("f/", 0o711), fileE("f/in", "in")},
	)
	wantPaths(t, m, "/", "/f", "/f/in")
	if n := m["/f"]; n.Attr.Mode != unix.S_IFDIR|0o711 || n.Layer != -1 || n.Attr.Size != 0 {
		t.Errorf("/f %+v layer %d, want dir 0711 without content", n.Attr, n.Layer)
	}
}

func TestFileUnderLowerFileReplacesIt(t *testing.T) {
	// An implicit parent where a lower layer has a file: the file goes.
	m := buildLayers(t, []te{fileE("p", "file")}, []te{fileE("p/c", "c")})
	wantPaths(t, m, "/", "/p", "/p/c")
	if m["/p"].Attr.Mode != unix.S_IFDIR|0o755 {
		t.Errorf("/p mode %o, want implicit dir", m["/p"].Attr.Mode)
	}
}

func TestDirOverDirUpdatesAttrsKeepsChildren(t *testing.T) {
	up := dirE("d/", 0o750)
	up.h.Uid, up.h.Gid = 7, 8
	up.h.PAXRecords = map[string]string{"SCHILY.xattr.user.new": "v"}
	low := dirE("d/", 0o700)
	low.h.PAXRecords = map[string]string{"SCHILY.xattr.user.old": "v"}
	m := buildLayers(t,
		[]te{low, fileE("d/child", "c")},
		[]te{up},
	)
	wantPaths(t, m, "/", "/d", "/d/child")
	n := m["/d"]
	if n.Attr.Mode != unix.S_IFDIR|0o750 || n.Attr.Uid != 7 || n.Attr.Gid != 8 {
		t.Errorf("/d attrs %+v, want 0750 7:8", n.Attr)
	}
	if len(n.Xattrs) != 1 || n.Xattrs["user.new"] != "v" {
		t.Errorf("/d xattrs %q, want only the upper layer's", n.Xattrs)
	}
}

func TestHardLinkSameLayer(t *testing.T) {
	orig := fileE("orig", "content")
	orig.h.Mode, orig.h.Uid = 0o4750, 9
	m := buildLayers(t, []te{orig, linkE("link", "orig"), linkE("./dir/link2", "/orig")})
	o, l, l2 := m["/orig"], mustNode(t, m, "/link"), mustNode(t, m, "/dir/link2")
	for _, n := range []*Node{l, l2} {
		if n.Attr != o.Attr || n.Offset != o.Offset || n.Layer != o.Layer {
			t.Errorf("%s: %+v at %d/%d, want the same inode as /orig %+v at %d/%d", n.Path, n.Attr, n.Layer, n.Offset, o.Attr, o.Layer, o.Offset)
		}
	}
	if o.Attr.Nlink != 3 || o.Attr.Mode != unix.S_IFREG|0o4750 {
		t.Errorf("/orig nlink %d mode %o, want 3 and the target's mode", o.Attr.Nlink, o.Attr.Mode)
	}
}

func TestHardLinkToLowerLayer(t *testing.T) {
	m := buildLayers(t,
		[]te{fileE("orig", "content")},
		[]te{linkE("link", "orig")},
	)
	o, l := m["/orig"], m["/link"]
	if l.Attr.Ino != o.Attr.Ino || l.Layer != 0 || l.Offset != o.Offset || o.Attr.Nlink != 2 || l.Attr.Nlink != 2 {
		t.Errorf("link %+v layer %d, orig %+v: want one inode of layer 0 with nlink 2", l.Attr, l.Layer, o.Attr)
	}
}

func TestHardLinkNlinkCountsRemainingNames(t *testing.T) {
	m := buildLayers(t,
		[]te{fileE("a", "content"), linkE("b", "a"), linkE("c", "a")},
		[]te{fileE(".wh.a", ""), fileE("c", "new file")},
	)
	wantPaths(t, m, "/", "/b", "/c")
	if b, c := m["/b"], m["/c"]; b.Attr.Nlink != 1 || c.Attr.Nlink != 1 || b.Attr.Ino == c.Attr.Ino || b.Attr.Size != 7 || c.Attr.Size != 8 {
		t.Errorf("b %+v, c %+v: want two separate files with nlink 1", b.Attr, c.Attr)
	}
}

func TestHardLinkErrors(t *testing.T) {
	err := buildError(t, []te{linkE("l", "missing")})
	if !strings.Contains(err.Error(), "/l") || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("link to missing target: %v", err)
	}
	err = buildError(t, []te{dirE("d/", 0o755), linkE("l", "d")})
	if !strings.Contains(err.Error(), "is a directory") {
		t.Errorf("link to directory: %v", err)
	}
}

func TestSpecialPermissionBits(t *testing.T) {
	su, sg, st := fileE("su", "x"), fileE("sg", "x"), dirE("tmp/", 0o1777)
	su.h.Mode, sg.h.Mode = 0o4755, 0o2711
	m := buildLayers(t, []te{su, sg, st})
	for p, want := range map[string]uint32{"/su": unix.S_IFREG | 0o4755, "/sg": unix.S_IFREG | 0o2711, "/tmp": unix.S_IFDIR | 0o1777} {
		if got := m[p].Attr.Mode; got != want {
			t.Errorf("%s mode %o, want %o", p, got, want)
		}
	}
}

func TestXattrs(t *testing.T) {
	capv := string([]byte{1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f := fileE("f", "x")
	f.h.PAXRecords = map[string]string{"SCHILY.xattr.security.capability": capv, "SCHILY.xattr.user.a": "b", "comment": "not an xattr"}
	m := buildLayers(t, []te{f, fileE("plain", "p")})
	if x := m["/f"].Xattrs; len(x) != 2 || x["security.capability"] != capv || x["user.a"] != "b" {
		t.Errorf("xattrs %q", x)
	}
	if m["/plain"].Xattrs != nil {
		t.Errorf("plain file has xattrs %q", m["/plain"].Xattrs)
	}
}

func TestDevicesAndFifo(t *testing.T) {
	c := te{h: tar.Header{Name: "dev/null", Typeflag: tar.TypeChar, Mode: 0o666, Devmajor: 1, Devminor: 3, ModTime: tm, Format: tar.FormatPAX}}
	b := te{h: tar.Header{Name: "dev/big", Typeflag: tar.TypeBlock, Mode: 0o660, Devmajor: 259, Devminor: 300, ModTime: tm, Format: tar.FormatPAX}}
	p := te{h: tar.Header{Name: "fifo", Typeflag: tar.TypeFifo, Mode: 0o600, ModTime: tm, Format: tar.FormatPAX}}
	m := buildLayers(t, []te{c, b, p})
	for path, want := range map[string][2]uint64{
		"/dev/null": {unix.S_IFCHR | 0o666, unix.Mkdev(1, 3)},
		"/dev/big":  {unix.S_IFBLK | 0o660, unix.Mkdev(259, 300)},
		"/fifo":     {unix.S_IFIFO | 0o600, 0},
	} {
		n := m[path]
		if uint64(n.Attr.Mode) != want[0] || uint64(n.Attr.Rdev) != want[1] || n.Layer != -1 || n.Attr.Size != 0 {
			t.Errorf("%s: mode %o rdev %x layer %d, want %o %x -1", path, n.Attr.Mode, n.Attr.Rdev, n.Layer, want[0], want[1])
		}
	}
}

func TestLongNames(t *testing.T) {
	long := strings.Repeat("a", 120) + "/" + strings.Repeat("b", 120)
	target := strings.Repeat("t", 180)
	pax := fileE(long+"/pax", "p")
	gnu := fileE(long+"/gnu", "g")
	gnu.h.Format = tar.FormatGNU
	sym := symE("sym", target)
	gsym := symE("gsym", target)
	gsym.h.Format = tar.FormatGNU
	m := buildLayers(t, []te{pax, gnu, sym, gsym})
	mustNode(t, m, "/"+long+"/pax")
	mustNode(t, m, "/"+long+"/gnu")
	for _, p := range []string{"/sym", "/gsym"} {
		if n := m[p]; n.Target != target || n.Attr.Size != uint64(len(target)) || n.Attr.Mode != unix.S_IFLNK|0o777 {
			t.Errorf("%s: target %q size %d mode %o", p, n.Target, n.Attr.Size, n.Attr.Mode)
		}
	}
}

func TestOwnerAndTimes(t *testing.T) {
	f := fileE("f", "x")
	f.h.Uid, f.h.Gid = 100000, 65534
	m := buildLayers(t, []te{f})
	a := m["/f"].Attr
	if a.Uid != 100000 || a.Gid != 65534 {
		t.Errorf("owner %d:%d", a.Uid, a.Gid)
	}
	if a.Mtime != uint64(tm.Unix()) || a.Mtimensec != uint32(tm.Nanosecond()) ||
		a.Atime != a.Mtime || a.Ctime != a.Mtime || a.Atimensec != a.Mtimensec || a.Ctimensec != a.Mtimensec {
		t.Errorf("times %+v, want all %v", a, tm)
	}
	if a.Size != 1 || a.Blocks != 1 {
		t.Errorf("size %d blocks %d", a.Size, a.Blocks)
	}
}

func TestPathCleaning(t *testing.T) {
	m := buildLayers(t,
		[]te{fileE("./a", "1"), fileE("b", "2"), fileE("/c", "3"), fileE("../../d", "4"), fileE("x/../e", "5")},
		[]te{fileE("a", "new"), fileE("./.wh.b", "")},
	)
	wantPaths(t, m, "/", "/a", "/c", "/d", "/e")
	if m["/a"].Attr.Size != 3 {
		t.Errorf("/a was not replaced by the upper layer's a")
	}
}

func TestAuFSMetadataIgnored(t *testing.T) {
	m := buildLayers(t, []te{dirE(".wh..wh.plnk/", 0o700), fileE(".wh..wh.plnk/1.2", ""), fileE("f", "f")})
	wantPaths(t, m, "/", "/f")
}

func TestInodesAndLinkCounts(t *testing.T) {
	m := buildLayers(t, []te{
		dirE("b/", 0o755), dirE("b/x/", 0o755), dirE("b/y/", 0o755), fileE("b/f", "f"),
		fileE("a", "a"), linkE("z", "a"), linkE("b/a", "a"), symE("s", "a"),
	})
	// Path order: / /a /b /b/a /b/f /b/x /b/y /s /z; /b/a and /z share /a's ino.
	want := map[string][2]uint32{
		"/": {1, 3}, "/a": {2, 3}, "/b": {3, 4}, "/b/a": {2, 3}, "/b/f": {4, 1},
		"/b/x": {5, 2}, "/b/y": {6, 2}, "/s": {7, 1}, "/z": {2, 3},
	}
	for p, w := range want {
		if a := mustNode(t, m, p).Attr; a.Ino != uint64(w[0]) || a.Nlink != w[1] {
			t.Errorf("%s: ino %d nlink %d, want %d %d", p, a.Ino, a.Nlink, w[0], w[1])
		}
	}
	if s := m["/s"]; s.Layer != -1 || s.Attr.Size != 1 || s.Attr.Blocks != 1 {
		t.Errorf("symlink %+v layer %d", s.Attr, s.Layer)
	}
	if d := m["/b"]; d.Layer != -1 || d.Attr.Size != 0 {
		t.Errorf("dir %+v layer %d", d.Attr, d.Layer)
	}
}
