package index

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// clipTestArchive is an in-memory OCI archive holding every node type clipd
// must carry through a .clip file.
func clipTestArchive() *Archive {
	mk := func(p string, mode uint32, ino uint64) *Node {
		return &Node{Path: p, Layer: -1, Attr: fuse.Attr{
			Ino: ino, Mode: mode, Nlink: 1, Mtime: 1700000000 + ino, Mtimensec: 7,
			Owner: fuse.Owner{Uid: uint32(ino), Gid: 1000},
		}}
	}
	root := mk("/", syscall.S_IFDIR|0o755, 1)
	root.Attr.Nlink = 4
	etc := mk("/etc", syscall.S_IFDIR|0o755, 2)
	tmp := mk("/tmp", syscall.S_IFDIR|0o1777, 3) // sticky
	passwd := mk("/etc/passwd", syscall.S_IFREG|0o644, 4)
	passwd.Attr.Size, passwd.Layer, passwd.Offset = 1234, 0, 512
	passwd.Xattrs = map[string]string{"user.text": "hello", "security.capability": "\x01\x00\x00\x02\x00\xff\x00"}
	su := mk("/etc/su", syscall.S_IFREG|0o4755, 5) // setuid
	su.Attr.Size, su.Layer, su.Offset = 99, 1, 4096
	sg := mk("/etc/sg", syscall.S_IFREG|0o2711, 6) // setgid
	sg.Attr.Size, sg.Layer, sg.Offset = 7, 1, 9000
	// Two names of one inode.
	h1 := mk("/etc/hard1", syscall.S_IFREG|0o600, 7)
	h1.Attr.Size, h1.Attr.Nlink, h1.Layer, h1.Offset = 50, 2, 1, 20000
	h2 := *h1
	h2.Path = "/etc/hard2"
	empty := mk("/etc/empty", syscall.S_IFREG|0o644, 8)
	link := mk("/etc/link", syscall.S_IFLNK|0o777, 9)
	link.Target, link.Attr.Size = "../tmp/x", 8
	dev := mk("/dev", syscall.S_IFDIR|0o755, 10)
	null := mk("/dev/null", syscall.S_IFCHR|0o666, 11)
	null.Attr.Rdev = 1<<8 | 3
	sda := mk("/dev/sda", syscall.S_IFBLK|0o660, 12)
	sda.Attr.Rdev = 8 << 8
	fifo := mk("/dev/fifo", syscall.S_IFIFO|0o644, 13)
	sock := mk("/dev/sock", syscall.S_IFSOCK|0o755, 14)
	long := "/" + strings.Repeat("d", 200) + "/" + strings.Repeat("f", 250)
	ld := mk(long[:201], syscall.S_IFDIR|0o700, 15)
	lf := mk(long, syscall.S_IFREG|0o400, 16)
	lf.Attr.Size, lf.Layer, lf.Offset = 3, 0, 0
	lf.Xattrs = map[string]string{"user.bin": "\x00\x00\xfe"}

	nodes := []*Node{root, etc, tmp, passwd, su, sg, h1, &h2, empty, link, dev, null, sda, fifo, sock, ld, lf}
	return &Archive{
		Format: FormatOCI,
		Source: Source{Registry: "127.0.0.1:5000", Repository: "test/img", Reference: "v1",
			Manifest: "sha256:" + strings.Repeat("a", 64)},
		Layers: []Layer{
			{Digest: "sha256:" + strings.Repeat("1", 64), MediaType: "application/vnd.oci.image.layer.v1.tar+gzip",
				Size: 100000, Compression: "gzip", DiffID: "sha256:" + strings.Repeat("2", 64)},
			{Digest: "sha256:" + strings.Repeat("3", 64), MediaType: "application/vnd.oci.image.layer.v1.tar+zstd",
				Size: 200000, Compression: "zstd", DiffID: "sha256:" + strings.Repeat("4", 64)},
		},
		Nodes: clipSortedCopy(nodes),
		Image: &ImageInfo{Digest: "sha256:" + strings.Repeat("a", 64), Architecture: "amd64", OS: "linux",
			Env: []string{"PATH=/usr/bin"}, Cmd: []string{"sh"}, WorkingDir: "/", User: "1000"},
	}
}

func clipSortedCopy(nodes []*Node) []*Node {
	out := append([]*Node(nil), nodes...)
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j].Path < out[j-1].Path; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

// clipWriteTestFile writes a to a fresh file and returns its path and bytes.
func clipWriteTestFile(t testing.TB, a *Archive) (string, []byte) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "test.clip")
	if err := WriteFile(p, a); err != nil {
		t.Fatalf("WriteFile: %v", err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return p, b
}

// clipOpenBytes writes b to a file and opens it.
func clipOpenBytes(t testing.TB, b []byte) (string, *Archive, error) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "input.clip")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	a, err := Open(p)
	return p, a, err
}

func clipNodeByPath(a *Archive, p string) *Node {
	for _, n := range a.Nodes {
		if n.Path == p {
			return n
		}
	}
	panic("no node " + p)
}

// clipNoContent keeps the nodes that reference no layer.
func clipNoContent(nodes []*Node) []*Node {
	var out []*Node
	for _, n := range nodes {
		if n.Layer < 0 {
			out = append(out, n)
		}
	}
	return out
}

func clipAttrMode(mode uint32) fuse.Attr { return fuse.Attr{Mode: mode} }

func clipAttrSize(mode uint32, size uint64) fuse.Attr { return fuse.Attr{Mode: mode, Size: size} }
