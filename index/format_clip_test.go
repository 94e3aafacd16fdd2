package index

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"

	"github.com/beam-cloud/clip/pkg/clip"
	"github.com/beam-cloud/clip/pkg/common"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/tidwall/btree"
)

// clipExtract loads p with clip's own reader.
func clipExtract(t *testing.T, p string) (*common.ClipArchiveMetadata, error) {
	t.Helper()
	if err := clip.SetLogLevel("disabled"); err != nil {
		t.Fatal(err)
	}
	return clip.NewClipArchiver().ExtractMetadata(p)
}

func clipOCIInfo(t *testing.T, md *common.ClipArchiveMetadata) common.OCIStorageInfo {
	t.Helper()
	info, ok := md.StorageInfo.(common.OCIStorageInfo)
	if !ok {
		t.Fatalf("clip sees storage info %T, want common.OCIStorageInfo", md.StorageInfo)
	}
	return info
}

func clipPaths(md *common.ClipArchiveMetadata) []string {
	var paths []string
	md.Index.Ascend(md.Index.Min(), func(x any) bool {
		paths = append(paths, x.(*common.ClipNode).Path)
		return true
	})
	return paths
}

func TestClipReadsClipdFiles(t *testing.T) {
	for name, a := range map[string]*Archive{
		"full":      clipTestArchive(),
		"root only": {Format: FormatOCI, Nodes: clipTestArchive().Nodes[:1]},
		"no layers": {Format: FormatOCI, Source: Source{Registry: "r", Repository: "x", Reference: "sha256:" + strings.Repeat("c", 64)}, Nodes: clipNoContent(clipTestArchive().Nodes)},
		"no image":  func() *Archive { a := clipTestArchive(); a.Image = nil; return a }(),
		"no xattrs": func() *Archive {
			a := clipTestArchive()
			for _, n := range a.Nodes {
				n.Xattrs = nil
			}
			return a
		}(),
		"no manifest": func() *Archive { a := clipTestArchive(); a.Source.Manifest = ""; a.Image.Digest = ""; return a }(),
	} {
		t.Run(name, func(t *testing.T) {
			p, _ := clipWriteTestFile(t, a)
			md, err := clipExtract(t, p)
			if err != nil {
				t.Fatalf("clip ExtractMetadata: %v", err)
			}
			var want []string
			for _, n := range a.Nodes {
				want = append(want, n.Path)
			}
			if got := clipPaths(md); !reflect.DeepEqual(got, want) {
				t.Errorf("clip lists %q\nwant %q", got, want)
			}
			info := clipOCIInfo(t, md)
			if info.RegistryURL != a.Source.Registry || info.Repository != a.Source.Repository || info.Reference != a.Source.Reference {
				t.Errorf("clip sees source %q %q %q", info.RegistryURL, info.Repository, info.Reference)
			}
			if len(info.Layers) != len(a.Layers) {
				t.Errorf("clip sees %d layers, want %d", len(info.Layers), len(a.Layers))
			}
			// clip finds each regular file's bytes where clipd put them.
			for _, n := range a.Nodes {
				cn := md.Get(n.Path)
				if cn.Attr != n.Attr {
					t.Errorf("%s: clip attr %+v, want %+v", n.Path, cn.Attr, n.Attr)
				}
				if n.Layer >= 0 {
					if cn.Remote == nil || cn.Remote.LayerDigest != a.Layers[n.Layer].Digest ||
						cn.Remote.UOffset != n.Offset || cn.Remote.ULength != int64(n.Attr.Size) {
						t.Errorf("%s: clip remote %+v", n.Path, cn.Remote)
					}
				}
			}
		})
	}
}

func TestClipV1ArchiveOpens(t *testing.T) {
	src := t.TempDir()
	files := map[string]string{
		"a.txt":             "hello world\n",
		"dir/b.bin":         strings.Repeat("\x00\x01binary", 5000),
		"dir/sub/empty":     "",
		"dir/sub/deep/c.sh": "#!/bin/sh\necho hi\n",
	}
	for name, content := range files {
		p := filepath.Join(src, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("../a.txt", filepath.Join(src, "dir/link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(src, "dir/sub/deep/c.sh"), 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "v1.clip")
	if err := clip.SetLogLevel("disabled"); err != nil {
		t.Fatal(err)
	}
	if err := clip.CreateArchive(clip.CreateOptions{InputPath: src, OutputPath: out}); err != nil {
		t.Fatalf("clip.CreateArchive: %v", err)
	}
	a, err := Open(out)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if a.Format != FormatEmbedded || a.Extension != 0 || len(a.Layers) != 1 || !a.Layers[0].Embedded {
		t.Fatalf("Format %d Extension %d Layers %+v", a.Format, a.Extension, a.Layers)
	}
	raw, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	byPath := map[string]*Node{}
	for _, n := range a.Nodes {
		byPath[n.Path] = n
	}
	if a.Nodes[0].Path != "/" {
		t.Errorf("first node %q", a.Nodes[0].Path)
	}
	for name, content := range files {
		n := byPath["/"+name]
		if n == nil {
			t.Errorf("%s missing", name)
			continue
		}
		if n.Layer != 0 || n.Attr.Mode&syscall.S_IFMT != syscall.S_IFREG || n.Attr.Size != uint64(len(content)) {
			t.Errorf("%s: layer %d mode %o size %d", name, n.Layer, n.Attr.Mode, n.Attr.Size)
			continue
		}
		if got := raw[n.Offset : n.Offset+int64(n.Attr.Size)]; !bytes.Equal(got, []byte(content)) {
			t.Errorf("%s: bytes at offset %d differ from the source", name, n.Offset)
		}
	}
	if n := byPath["/dir/sub/deep/c.sh"]; n != nil && n.Attr.Mode&0o7777 != 0o755 {
		t.Errorf("c.sh mode %o", n.Attr.Mode)
	}
	if n := byPath["/dir/link"]; n == nil || n.Target != "../a.txt" || n.Attr.Mode&syscall.S_IFMT != syscall.S_IFLNK || n.Layer != -1 {
		t.Errorf("symlink: %+v", n)
	}
	for _, d := range []string{"/dir", "/dir/sub", "/dir/sub/deep"} {
		if n := byPath[d]; n == nil || n.Attr.Mode&syscall.S_IFMT != syscall.S_IFDIR {
			t.Errorf("dir %s: %+v", d, n)
		}
	}
}

// clipRemoteArchive writes a v2 file with clip's own CreateRemoteArchive.
func clipRemoteArchive(t *testing.T, info common.ClipStorageInfo, nodes []*common.ClipNode) string {
	t.Helper()
	idx := btree.New(func(a, b any) bool { return a.(*common.ClipNode).Path < b.(*common.ClipNode).Path })
	for _, n := range nodes {
		idx.Set(n)
	}
	out := filepath.Join(t.TempDir(), "remote.clip")
	if err := clip.NewClipArchiver().CreateRemoteArchive(info, &common.ClipArchiveMetadata{Index: idx, StorageInfo: info}, out); err != nil {
		t.Fatalf("clip CreateRemoteArchive: %v", err)
	}
	return out
}

func clipV2Nodes(layer string) []*common.ClipNode {
	attr := func(mode uint32, size uint64) fuse.Attr {
		return fuse.Attr{Ino: 7, Mode: mode, Size: size, Nlink: 1, Mtime: 1600000000}
	}
	return []*common.ClipNode{
		{Path: "/", NodeType: common.DirNode, Attr: attr(syscall.S_IFDIR|0o755, 0)},
		{Path: "/bin", NodeType: common.DirNode, Attr: attr(syscall.S_IFDIR|0o755, 0)},
		{Path: "/bin/sh", NodeType: common.FileNode, Attr: attr(syscall.S_IFREG|0o755, 1000),
			Remote: &common.RemoteRef{LayerDigest: layer, UOffset: 1536, ULength: 1000}},
		{Path: "/bin/bash", NodeType: common.SymLinkNode, Target: "sh", Attr: attr(syscall.S_IFLNK|0o777, 2)},
		// Old clip writers left the type bits out; NodeType still says it.
		{Path: "/bin/notype", NodeType: common.FileNode, Attr: attr(0o644, 5),
			Remote: &common.RemoteRef{LayerDigest: layer, UOffset: 3072, ULength: 5}},
		{Path: "/etc", NodeType: common.DirNode, Attr: attr(0o700, 0)},
	}
}

func TestClipV2TagAndDigest(t *testing.T) {
	l1 := "sha256:" + strings.Repeat("1", 64)
	l2 := "sha256:" + strings.Repeat("2", 64)
	manifest := "sha256:" + strings.Repeat("9", 64)
	for _, ref := range []string{"3.19", manifest} {
		t.Run(ref, func(t *testing.T) {
			info := common.OCIStorageInfo{
				RegistryURL: "registry.example:5000", Repository: "library/alpine", Reference: ref,
				Layers:                  []string{l1, l2},
				GzipIdxByLayer:          map[string]*common.GzipIndex{l2: {LayerDigest: l2, Checkpoints: []common.GzipCheckpoint{{COff: 10, UOff: 20}}}},
				DecompressedHashByLayer: map[string]string{l1: "x", l2: "y"},
				ImageMetadata: &common.ImageMetadata{
					Name: "alpine", Digest: manifest, Architecture: "arm64", Os: "linux",
					Env: []string{"A=1"}, Cmd: []string{"/bin/sh"}, Labels: map[string]string{"k": "v"},
					LayersData: []common.LayerMetadata{
						{MIMEType: "application/vnd.docker.image.rootfs.diff.tar.gzip", Digest: l1, Size: 111, Annotations: map[string]string{"a": "b"}},
						{MIMEType: "application/vnd.oci.image.layer.v1.tar+zstd", Digest: l2, Size: 222},
					},
				},
			}
			p := clipRemoteArchive(t, info, clipV2Nodes(l2))
			a, err := Open(p)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			wantSrc := Source{Registry: "registry.example:5000", Repository: "library/alpine", Reference: ref, Manifest: manifest}
			if a.Format != FormatOCI || a.Extension != 0 || a.Source != wantSrc {
				t.Errorf("Format %d Extension %d Source %+v", a.Format, a.Extension, a.Source)
			}
			wantLayers := []Layer{
				{Digest: l1, MediaType: "application/vnd.docker.image.rootfs.diff.tar.gzip", Size: 111, Compression: "gzip"},
				{Digest: l2, MediaType: "application/vnd.oci.image.layer.v1.tar+zstd", Size: 222, Compression: "zstd"},
			}
			if !reflect.DeepEqual(a.Layers, wantLayers) {
				t.Errorf("Layers %+v", a.Layers)
			}
			if im := a.Image; im == nil || im.Digest != manifest || im.Architecture != "arm64" || im.OS != "linux" || im.Cmd[0] != "/bin/sh" {
				t.Errorf("Image %+v", a.Image)
			}
			got := map[string]*Node{}
			for _, n := range a.Nodes {
				got[n.Path] = n
			}
			if sh := got["/bin/sh"]; sh.Layer != 1 || sh.Offset != 1536 || sh.Attr.Size != 1000 {
				t.Errorf("/bin/sh %+v", sh)
			}
			if nt := got["/bin/notype"]; nt.Attr.Mode != syscall.S_IFREG|0o644 || nt.Layer != 1 {
				t.Errorf("/bin/notype mode %o layer %d", nt.Attr.Mode, nt.Layer)
			}
			if e := got["/etc"]; e.Attr.Mode != syscall.S_IFDIR|0o700 || e.Layer != -1 {
				t.Errorf("/etc %+v", e)
			}
			if l := got["/bin/bash"]; l.Target != "sh" || l.Layer != -1 {
				t.Errorf("/bin/bash %+v", l)
			}
		})
	}
}

func TestClipV2WithoutMetadataOrRoot(t *testing.T) {
	l1 := "sha256:" + strings.Repeat("1", 64)
	nodes := clipV2Nodes(l1)[1:] // no "/"
	p := clipRemoteArchive(t, common.OCIStorageInfo{RegistryURL: "r", Repository: "x", Reference: "latest", Layers: []string{l1}}, nodes)
	a, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	root := a.Nodes[0]
	if root.Path != "/" || root.Attr.Mode != syscall.S_IFDIR|0o755 || root.Attr.Uid != 0 || root.Attr.Mtime != 0 || root.Layer != -1 {
		t.Errorf("synthesized root %+v", root)
	}
	if a.Image != nil || a.Source.Manifest != "" {
		t.Errorf("Image %+v Manifest %q", a.Image, a.Source.Manifest)
	}
	if a.Layers[0] != (Layer{Digest: l1, Compression: "none"}) {
		t.Errorf("layer %+v", a.Layers[0])
	}
}

func TestClipV2UnknownLayer(t *testing.T) {
	l1 := "sha256:" + strings.Repeat("1", 64)
	p := clipRemoteArchive(t, common.OCIStorageInfo{Layers: []string{l1}}, clipV2Nodes("sha256:"+strings.Repeat("f", 64)))
	_, err := Open(p)
	if err == nil || !strings.Contains(err.Error(), "unknown layer") || !strings.Contains(err.Error(), p) {
		t.Errorf("err = %v", err)
	}
}

func TestClipS3Unsupported(t *testing.T) {
	p := clipRemoteArchive(t, common.S3StorageInfo{Bucket: "b", Key: "k"}, clipV2Nodes("x")[:2])
	_, err := Open(p)
	if err == nil || !strings.Contains(err.Error(), "unsupported storage s3") || !strings.Contains(err.Error(), p) {
		t.Errorf("err = %v", err)
	}
}
