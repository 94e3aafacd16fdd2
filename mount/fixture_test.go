package mount

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/clipd/clipd/index"
	"github.com/clipd/clipd/internal/testenv"
)

// fixture is an in-memory archive with every kind of node, and the layer
// readers that hold its contents.
type fixture struct {
	a       *index.Archive
	layers  []io.ReaderAt
	content map[string][]byte // regular file path -> bytes
	byPath  map[string]*index.Node
}

// failingReader is a layer whose every read fails, as a registry that
// went away would.
type failingReader struct{}

func (failingReader) ReadAt(p []byte, off int64) (int, error) {
	return 0, errors.New("registry unreachable")
}

const (
	mtimeSec  = 1700000000
	mtimeNsec = 123456789
)

// capBlob is a binary security.capability value (VFS_CAP_REVISION_2, cap_net_raw).
var capBlob = string([]byte{0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})

func newFixture(t *testing.T) *fixture {
	t.Helper()
	rng := rand.New(rand.NewPCG(1, 2))
	big := make([]byte, 3<<20)
	for i := range big {
		big[i] = byte(rng.Uint32())
	}
	f := &fixture{content: map[string][]byte{}, byPath: map[string]*index.Node{}}

	// Layer 0 holds the small files after some padding, layer 1 the big
	// one at an odd offset, layer 2 fails.
	var l0, l1 bytes.Buffer
	l0.WriteString("padding-before-content")
	l1.Write(make([]byte, 12345))

	var nodes []*index.Node
	add := func(p string, mode uint32, ino uint64, mod func(n *index.Node)) {
		n := &index.Node{Path: p, Layer: -1}
		n.Attr.Mode = mode
		n.Attr.Ino = ino
		n.Attr.Nlink = 0
		n.Attr.Mtime, n.Attr.Mtimensec = mtimeSec, mtimeNsec
		n.Attr.Ctime, n.Attr.Ctimensec = mtimeSec+1, 7
		n.Attr.Atime, n.Attr.Atimensec = mtimeSec+2, 9
		if mod != nil {
			mod(n)
		}
		nodes = append(nodes, n)
		f.byPath[p] = n
	}
	file := func(buf *bytes.Buffer, layer int, data []byte) func(n *index.Node) {
		return func(n *index.Node) {
			n.Layer = layer
			n.Offset = int64(buf.Len())
			n.Attr.Size = uint64(len(data))
			buf.Write(data)
			f.content[n.Path] = data
		}
	}
	small := []byte("hello, clipd\n")
	target := strings.Repeat("t", 190) + "/target.txt" // 201 bytes
	target = target[:200]

	add("/", syscall.S_IFDIR|0755, 1, nil)
	add("/bin", syscall.S_IFDIR|0755, 2, nil)
	add("/bin/su", syscall.S_IFREG|06755, 3, file(&l0, 0, []byte("#!/bin/sh\necho su\n")))
	add("/big", syscall.S_IFREG|0644, 4, file(&l1, 1, big))
	add("/broken", syscall.S_IFREG|0644, 5, func(n *index.Node) {
		n.Layer, n.Offset, n.Attr.Size = 2, 0, 100
	})
	add("/dev", syscall.S_IFDIR|0755, 6, nil)
	add("/dev/fifo", syscall.S_IFIFO|0644, 7, nil)
	add("/dev/null", syscall.S_IFCHR|0666, 8, func(n *index.Node) { n.Attr.Rdev = uint32(unix.Mkdev(1, 3)) })
	add("/dev/sda", syscall.S_IFBLK|0660, 9, func(n *index.Node) {
		n.Attr.Rdev = uint32(unix.Mkdev(8, 300))
		n.Attr.Gid = 6
	})
	add("/empty", syscall.S_IFREG|0644, 10, nil)
	hard := []byte("one inode, two names\n")
	add("/link1", syscall.S_IFREG|0644, 11, func(n *index.Node) {
		file(&l0, 0, hard)(n)
		n.Attr.Nlink = 2
	})
	add("/link2", syscall.S_IFREG|0644, 11, func(n *index.Node) {
		n.Layer, n.Offset, n.Attr.Size, n.Attr.Nlink = 0, f.byPath["/link1"].Offset, uint64(len(hard)), 2
		f.content[n.Path] = hard
	})
	add("/secret", syscall.S_IFREG|0600, 12, file(&l0, 0, []byte("root only\n")))
	add("/small", syscall.S_IFREG|0640, 13, func(n *index.Node) {
		file(&l0, 0, small)(n)
		n.Attr.Uid, n.Attr.Gid = 1000, 1001
		n.Xattrs = map[string]string{"user.foo": "bar", "security.capability": capBlob}
	})
	add("/sym", syscall.S_IFLNK|0777, 14, func(n *index.Node) {
		n.Target = target
		n.Attr.Size = uint64(len(target))
		n.Xattrs = map[string]string{"trusted.on-link": "yes"}
	})
	add("/tmp", syscall.S_IFDIR|01777, 15, nil)
	add("/zero", syscall.S_IFREG /* mode 0000 */, 16, file(&l0, 0, []byte("mode 0000\n")))

	slices.SortFunc(nodes, func(a, b *index.Node) int { return strings.Compare(a.Path, b.Path) })
	f.a = &index.Archive{
		Format: 2,
		Layers: []index.Layer{{Digest: "sha256:l0"}, {Digest: "sha256:l1"}, {Digest: "sha256:l2"}},
		Nodes:  nodes,
	}
	f.layers = []io.ReaderAt{bytes.NewReader(l0.Bytes()), bytes.NewReader(l1.Bytes()), failingReader{}}
	return f
}

// mountFixture mounts a on a fresh directory. The mount is detached lazily
// at cleanup even if the test failed half-way.
func mountFixture(t *testing.T, a *index.Archive, layers []io.ReaderAt, opts Options) (*Mount, string) {
	t.Helper()
	mp := t.TempDir()
	m, err := New(mp, a, layers, opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		_ = unix.Unmount(mp, unix.MNT_DETACH)
		done := make(chan error, 1)
		go func() { done <- m.Unmount(true) }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("cleanup unmount: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("cleanup: server of %s did not stop", mp)
		}
	})
	return m, mp
}

// mountInfo returns the /proc/self/mountinfo line of mountpoint mp, "" if
// nothing is mounted there.
func mountInfo(t *testing.T, mp string) string {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && unescapeMountinfo(fields[4]) == mp {
			return sc.Text()
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return ""
}

// unescapeMountinfo undoes the octal escapes (\040 for space, ...) of
// /proc/self/mountinfo.
func unescapeMountinfo(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var c byte
			if _, err := fmt.Sscanf(s[i+1:i+4], "%3o", &c); err == nil {
				b.WriteByte(c)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// captureLog returns a logger writing JSON lines into the returned buffer.
func captureLog() (*slog.Logger, *testenv.SyncBuffer) {
	buf := &testenv.SyncBuffer{}
	return slog.New(slog.NewJSONHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}
