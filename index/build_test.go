package index

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sys/unix"

	"github.com/clipd/clipd/internal/fixture"
)

// TestBuildFixture builds the fixture image (whose expected tree umoci
// confirms in package fixture) and compares every node with it.
func TestBuildFixture(t *testing.T) {
	for _, zstd := range []bool{false, true} {
		img, err := fixture.ImageWith(zstd)
		if err != nil {
			t.Fatal(err)
		}
		src := Source{Registry: "127.0.0.1:5000", Repository: "fixture", Reference: "latest"}
		a, err := Build(context.Background(), img, BuildOptions{Source: src})
		if err != nil {
			t.Fatalf("zstd=%v: Build: %v", zstd, err)
		}
		checkSorted(t, a)
		if a.Format != 2 || a.Extension != 1 || a.Source != src || a.Path != "" {
			t.Errorf("archive header: format %d extension %d source %+v path %q", a.Format, a.Extension, a.Source, a.Path)
		}
		checkLayers(t, img, a, zstd)
		checkImageInfo(t, img, a)
		checkExpectedTree(t, a)
		checkContents(t, a)
	}
}

func checkLayers(t *testing.T, img v1.Image, a *Archive, zstd bool) {
	t.Helper()
	ls, _ := img.Layers()
	cf, _ := img.ConfigFile()
	wantComp := []string{"gzip", "gzip", "none"}
	if zstd {
		wantComp[1] = "zstd"
	}
	if len(a.Layers) != len(ls) {
		t.Fatalf("%d layers, want %d", len(a.Layers), len(ls))
	}
	for i, l := range ls {
		d, _ := l.Digest()
		mt, _ := l.MediaType()
		size, _ := l.Size()
		want := Layer{Digest: d.String(), MediaType: string(mt), Size: size, Compression: wantComp[i], DiffID: cf.RootFS.DiffIDs[i].String()}
		got := a.Layers[i]
		x := got.Spans
		got.Spans = nil
		if got != want {
			t.Errorf("layer %d: %+v, want %+v", i, got, want)
		}
		// The decompression index covers the whole blob and stream.
		if x == nil || x.Compression != wantComp[i] || x.CSize != size || len(x.Spans) == 0 || x.SpanSize != DefaultSpanSize {
			t.Errorf("layer %d: decompression index %+v", i, x)
		}
	}
}

func checkImageInfo(t *testing.T, img v1.Image, a *Archive) {
	t.Helper()
	d, _ := img.Digest()
	want := &ImageInfo{Digest: d.String(), Architecture: "amd64", OS: "linux", Env: []string{"PATH=/usr/local/bin:/usr/bin:/bin"}, Cmd: []string{"/bin/sh"}, WorkingDir: "/"}
	if !reflect.DeepEqual(a.Image, want) {
		t.Errorf("image info %+v, want %+v", a.Image, want)
	}
}

func checkExpectedTree(t *testing.T, a *Archive) {
	t.Helper()
	m := byPath(a)
	exp := fixture.Expected()
	if len(a.Nodes) != len(exp) {
		t.Errorf("%d nodes, want %d: got %q", len(a.Nodes), len(exp), paths(m))
	}
	for _, g := range fixture.Gone() {
		if m[g] != nil {
			t.Errorf("%s should be gone", g)
		}
	}
	linkIno := map[string]uint64{}
	seenIno := map[uint64]string{}
	for _, e := range exp {
		n := m[e.Path]
		if n == nil {
			t.Errorf("%s missing", e.Path)
			continue
		}
		at := n.Attr
		mtime := time.Unix(int64(at.Mtime), int64(at.Mtimensec))
		if at.Mode != e.Mode || int(at.Uid) != e.Uid || int(at.Gid) != e.Gid || int(at.Nlink) != e.Nlink || uint64(at.Rdev) != e.Rdev || !mtime.Equal(e.Mtime) {
			t.Errorf("%s: mode %o %d:%d nlink %d rdev %x mtime %v; want %o %d:%d %d %x %v",
				e.Path, at.Mode, at.Uid, at.Gid, at.Nlink, at.Rdev, mtime, e.Mode, e.Uid, e.Gid, e.Nlink, e.Rdev, e.Mtime)
		}
		wantSize, wantLayer := uint64(0), false
		switch e.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			wantSize, wantLayer = uint64(len(e.Data)), true
		case unix.S_IFLNK:
			wantSize = uint64(len(e.Target))
		}
		if at.Size != wantSize || at.Blocks != (wantSize+511)/512 || n.Target != e.Target || (n.Layer >= 0) != wantLayer {
			t.Errorf("%s: size %d blocks %d target %q layer %d", e.Path, at.Size, at.Blocks, n.Target, n.Layer)
		}
		if !reflect.DeepEqual(n.Xattrs, e.Xattrs) {
			t.Errorf("%s: xattrs %q, want %q", e.Path, n.Xattrs, e.Xattrs)
		}
		if e.Link != "" {
			if ino, ok := linkIno[e.Link]; ok {
				if ino != at.Ino {
					t.Errorf("%s: ino %d, want %d like the other names of its file", e.Path, at.Ino, ino)
				}
				continue
			}
			linkIno[e.Link] = at.Ino
		}
		if other, dup := seenIno[at.Ino]; dup {
			t.Errorf("%s: ino %d already used by %s", e.Path, at.Ino, other)
		}
		seenIno[at.Ino] = e.Path
	}
}

// checkContents reads each regular file back from its layer's uncompressed
// stream at Offset.
func checkContents(t *testing.T, a *Archive) {
	t.Helper()
	tars, err := fixture.LayerTars()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]byte{}
	for _, e := range fixture.Expected() {
		want[e.Path] = e.Data
	}
	for _, n := range a.Nodes {
		if n.Attr.Mode&unix.S_IFMT != unix.S_IFREG {
			continue
		}
		b := tars[n.Layer]
		if n.Offset < 0 || n.Offset+int64(n.Attr.Size) > int64(len(b)) {
			t.Errorf("%s: range %d+%d outside layer %d", n.Path, n.Offset, n.Attr.Size, n.Layer)
			continue
		}
		if got := b[n.Offset : n.Offset+int64(n.Attr.Size)]; !bytes.Equal(got, want[n.Path]) {
			t.Errorf("%s: content at layer %d offset %d differs", n.Path, n.Layer, n.Offset)
		}
	}
}

// TestBuildFromLayout builds the fixture through a real on-disk OCI layout.
func TestBuildFromLayout(t *testing.T) {
	dir := t.TempDir()
	if err := fixture.WriteLayout(dir, "fx"); err != nil {
		t.Fatal(err)
	}
	img := imageFromLayout(t, dir, "fx")
	a, err := Build(context.Background(), img, BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	checkLayers(t, img, a, false)
	checkExpectedTree(t, a)
	checkContents(t, a)
}

func imageFromLayout(t testing.TB, dir, tag string) v1.Image {
	t.Helper()
	p, err := layout.FromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	ii, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	im, err := ii.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range im.Manifests {
		if d.Annotations["org.opencontainers.image.ref.name"] == tag {
			img, err := ii.Image(d.Digest)
			if err != nil {
				t.Fatal(err)
			}
			return img
		}
	}
	t.Fatalf("no image tagged %s in %s", tag, dir)
	return nil
}

func TestBuildDeterministic(t *testing.T) {
	img, err := fixture.ImageWith(true)
	if err != nil {
		t.Fatal(err)
	}
	a1, err := Build(context.Background(), img, BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	a2, err := Build(context.Background(), img, BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(a1, a2) {
		t.Fatal("two builds of one image differ")
	}
}

func TestBuildProgress(t *testing.T) {
	img, err := fixture.Image()
	if err != nil {
		t.Fatal(err)
	}
	var got []Progress
	a, err := Build(context.Background(), img, BuildOptions{Progress: func(p Progress) { got = append(got, p) }})
	if err != nil {
		t.Fatal(err)
	}
	tars, _ := fixture.LayerTars()
	var want []Progress
	for i, l := range a.Layers {
		n := 0
		tr := tar.NewReader(bytes.NewReader(tars[i]))
		for {
			if _, err := tr.Next(); err != nil {
				break
			}
			n++
		}
		want = append(want, Progress{Layer: i + 1, Layers: 3, Digest: l.Digest}, Progress{Layer: i + 1, Layers: 3, Digest: l.Digest, Done: true, Entries: n})
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("progress %+v, want %+v", got, want)
	}
}

// cancelLayer cancels its context as soon as its blob is first read.
type cancelLayer struct {
	v1.Layer
	cancel context.CancelFunc
}

func (l *cancelLayer) Compressed() (io.ReadCloser, error) {
	rc, err := l.Layer.Compressed()
	return &cancelOnRead{rc, l.cancel}, err
}

type cancelOnRead struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (r *cancelOnRead) Read(p []byte) (int, error) {
	r.cancel()
	if len(p) > 512 {
		p = p[:512]
	}
	return r.ReadCloser.Read(p)
}

func TestBuildCancel(t *testing.T) {
	blob := tarBytes(t, []te{fileE("a", strings.Repeat("x", 1<<20)), fileE("b", "b")})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	l := &cancelLayer{Layer: static.NewLayer(blob, types.OCIUncompressedLayer), cancel: cancel}
	img, err := mutate.AppendLayers(empty.Image, l)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Build(ctx, img, BuildOptions{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("Build with a context cancelled mid-layer: %v, want context.Canceled", err)
	}
}

// patchTypeflag rewrites the type flag of the first header in a tar stream
// and fixes its checksum (archive/tar will write but never produce some
// types, such as old GNU sparse).
func patchTypeflag(b []byte, flag byte) []byte {
	b = bytes.Clone(b)
	b[156] = flag
	copy(b[148:156], "        ")
	sum := 0
	for _, c := range b[:512] {
		sum += int(c)
	}
	copy(b[148:156], octal6(sum)+"\x00 ")
	return b
}

// paxRecord encodes one PAX record: its length counts itself.
func paxRecord(k, v string) string {
	body := " " + k + "=" + v + "\n"
	n := len(body) + 1
	for len(strconv.Itoa(n))+len(body) != n {
		n++
	}
	return strconv.Itoa(n) + body
}

func octal6(n int) string {
	s := ""
	for i := 0; i < 6; i++ {
		s = string(rune('0'+n%8)) + s
		n /= 8
	}
	return s
}

func TestUnsupportedEntries(t *testing.T) {
	gnu := tarBytes(t, []te{{h: tar.Header{Name: "dir/old-sparse", Typeflag: tar.TypeReg, Mode: 0o644, Format: tar.FormatGNU}}})
	// archive/tar's writer drops GNU.sparse records, so the PAX header is
	// written as a plain file whose type flag is then patched to 'x'.
	recs := paxRecord("GNU.sparse.numblocks", "1") + paxRecord("GNU.sparse.map", "0,1") + paxRecord("GNU.sparse.size", "10")
	paxHdr := te{h: tar.Header{Name: "pax", Typeflag: tar.TypeReg, Size: int64(len(recs)), Format: tar.FormatUSTAR}, data: recs}
	paxSparse := append(patchTypeflag(tarBytes(t, []te{paxHdr}), tar.TypeXHeader)[:512+512],
		tarBytes(t, []te{{h: tar.Header{Name: "dir/pax-sparse", Typeflag: tar.TypeReg, Size: 1, Format: tar.FormatUSTAR}, data: "x"}})...)
	unknown := te{h: tar.Header{Name: "dir/odd", Typeflag: 'Z', Mode: 0o644, Format: tar.FormatPAX}}
	cases := []struct {
		name string
		blob []byte
		want string
	}{
		{"old GNU sparse", patchTypeflag(gnu, tar.TypeGNUSparse), "/dir/old-sparse: GNU sparse"},
		{"PAX GNU sparse", paxSparse, "/dir/pax-sparse: GNU sparse"},
		{"unknown type", tarBytes(t, []te{unknown}), `/dir/odd: unsupported tar entry type 'Z'`},
	}
	for _, c := range cases {
		lower := tarBytes(t, []te{fileE("f", "f")})
		_, err := Build(context.Background(), imageOf(t, lower, c.blob), BuildOptions{})
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "layer 2 (sha256:") {
			t.Errorf("%s: error %v, want one naming layer 2 and %q", c.name, err, c.want)
		}
	}
}
