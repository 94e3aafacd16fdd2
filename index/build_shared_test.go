package index

import (
	"archive/tar"
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/clipd/clipd/internal/testenv"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"
)

// TestBuildDebianPython indexes a real Debian image (the team's shared OCI
// layout, or one testenv builds when it is absent) and checks what its
// README documents.
func TestBuildDebianPython(t *testing.T) {
	img := imageFromLayout(t, testenv.DebianPythonLayout(t), "python")
	start := time.Now()
	a, err := Build(context.Background(), img, BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("indexed %d nodes of %d layers in %v", len(a.Nodes), len(a.Layers), time.Since(start))
	checkSorted(t, a)
	if len(a.Layers) != 2 {
		t.Fatalf("%d layers, want 2", len(a.Layers))
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range a.Layers {
		if l.Compression != "gzip" || l.DiffID != cf.RootFS.DiffIDs[i].String() {
			t.Errorf("layer %d: %+v, want gzip with diff id %s", i, l, cf.RootFS.DiffIDs[i])
		}
	}
	// The README's "11 setuid binaries" are 8 setuid and 3 setgid
	// (chage, expiry, unix_chkpwd).
	setuid, setgid := 0, 0
	byIno := map[uint64][]*Node{}
	for _, n := range a.Nodes {
		if n.Attr.Mode&unix.S_IFMT == unix.S_IFREG && n.Attr.Mode&unix.S_ISUID != 0 {
			setuid++
		}
		if n.Attr.Mode&unix.S_IFMT == unix.S_IFREG && n.Attr.Mode&unix.S_ISGID != 0 {
			setgid++
		}
		if n.Attr.Mode&unix.S_IFMT != unix.S_IFDIR {
			byIno[n.Attr.Ino] = append(byIno[n.Attr.Ino], n)
		}
	}
	if setuid != 8 || setgid != 3 {
		t.Errorf("%d setuid and %d setgid files, want 8 and 3", setuid, setgid)
	}
	// The base layer's 2 hard links: each names a file of the same layer.
	linked := 0
	for _, ns := range byIno {
		if len(ns) > 1 {
			linked++
		}
	}
	m := byPath(a)
	for _, pair := range [][2]string{{"/usr/bin/perl", "/usr/bin/perl5.36.0"}, {"/usr/bin/gunzip", "/usr/bin/uncompress"}} {
		x, y := m[pair[0]], m[pair[1]]
		if x == nil || y == nil || x.Attr.Ino != y.Attr.Ino || x.Attr.Nlink != 2 || y.Attr.Nlink != 2 || x.Offset != y.Offset || x.Attr.Size == 0 {
			t.Errorf("%s and %s: want one inode of nonzero size with nlink 2", pair[0], pair[1])
		}
	}
	if linked != 2 {
		t.Errorf("%d hard-linked files, want 2", linked)
	}
	if n := m["/usr/bin/su"]; n == nil || n.Attr.Mode != unix.S_IFREG|0o4755 {
		t.Errorf("/usr/bin/su: %+v, want setuid root binary", n)
	}
	if n := m["/usr/bin/python3"]; n == nil || n.Attr.Mode&unix.S_IFMT != unix.S_IFLNK {
		t.Errorf("/usr/bin/python3: %+v, want a symlink", n)
	}
	checkLayerContent(t, img, a, "/usr/lib/python3.11/json/decoder.py")
}

// checkLayerContent compares the bytes at a node's Offset in its
// uncompressed layer with what archive/tar extracts for that name.
func checkLayerContent(t *testing.T, img v1.Image, a *Archive, p string) {
	t.Helper()
	n := byPath(a)[p]
	if n == nil || n.Layer < 0 {
		t.Fatalf("%s: no regular file node", p)
	}
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	read := func() io.ReadCloser {
		rc, err := ls[n.Layer].Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		return rc
	}
	rc := read()
	defer rc.Close()
	if _, err := io.CopyN(io.Discard, rc, n.Offset); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, n.Attr.Size)
	if _, err := io.ReadFull(rc, got); err != nil {
		t.Fatal(err)
	}
	rc2 := read()
	defer rc2.Close()
	tr := tar.NewReader(rc2)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			t.Fatalf("%s not found in layer %d", p, n.Layer)
		}
		if err != nil {
			t.Fatal(err)
		}
		if cleanPath(h.Name) != p {
			continue
		}
		want, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(want) {
			t.Fatalf("%s: %d bytes at offset %d of layer %d differ from the tar entry", p, len(got), n.Offset, n.Layer)
		}
		return
	}
}
