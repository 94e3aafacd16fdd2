package mount

import (
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/clipd/clipd/index"
)

// scaleTree is the shape of the e2e scale image (e2e scaleArchive): files
// regular files of 20 KiB in one layer, in directories of 10 packages of
// 100 files.
func scaleTree(files int) *index.Archive {
	a := &index.Archive{Format: index.FormatOCI, Layers: []index.Layer{{Digest: "sha256:" + fmt.Sprintf("%064x", 1)}}}
	ino := uint64(0)
	add := func(p string, mode uint32, size uint64) {
		ino++
		n := &index.Node{Path: p, Layer: -1}
		n.Attr.Mode, n.Attr.Ino, n.Attr.Size, n.Attr.Nlink = mode, ino, size, 1
		if mode&syscall.S_IFMT == syscall.S_IFDIR {
			n.Attr.Nlink = 2
		} else {
			n.Layer = 0
		}
		a.Nodes = append(a.Nodes, n)
	}
	add("/", syscall.S_IFDIR|0o755, 0)
	add("/usr", syscall.S_IFDIR|0o755, 0)
	for dir := 0; dir*1000 < files; dir++ {
		top := fmt.Sprintf("/usr/lib%03d", dir)
		add(top, syscall.S_IFDIR|0o755, 0)
		for pkg := range 10 {
			sub := fmt.Sprintf("%s/pkg%02d", top, pkg)
			add(sub, syscall.S_IFDIR|0o755, 0)
			for f := range 100 {
				add(fmt.Sprintf("%s/module_%03d.py", sub, f), syscall.S_IFREG|0o644, 20<<10)
			}
		}
	}
	return a
}

// heapNow is the live heap after a full collection.
func heapNow() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// BenchmarkScaleMemory reports what the mount itself costs per node of a
// 100,000-file tree, beyond the index.Archive it is given (index's
// BenchmarkOpenScaleMemory reports that): the plan (plan-alloc-B/node
// allocated while checking the tree, plan-live-B/node kept for the
// mount's life), and the heap a mount gains per entry the kernel has
// looked up after a walk that lstats every entry (walk-live-B/entry; a
// node-based go-fuse tree keeps an inode per entry, about 530 bytes; what
// remains is go-fuse's request buffers, not a per-entry cost):
//
//	go test ./mount -run XXX -bench ScaleMemory -benchtime 1x
func BenchmarkScaleMemory(b *testing.B) {
	a := scaleTree(100_000)
	nodes := float64(len(a.Nodes))
	layers := []io.ReaderAt{bytes.NewReader(make([]byte, 20<<10))}
	// The plan first, in a heap no earlier mount is still letting go of.
	var before, after runtime.MemStats
	start := heapNow()
	runtime.ReadMemStats(&before)
	p, err := newPlan(a, layers, &shared{}, slog.Default())
	if err != nil {
		b.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	planAlloc := float64(after.TotalAlloc - before.TotalAlloc)
	planLive := float64(heapNow()) - float64(start)
	runtime.KeepAlive(p)

	var walkLive float64
	entries, first := 0, true
	for b.Loop() {
		mp := b.TempDir()
		m, err := New(mp, a, layers, Options{})
		if err != nil {
			b.Fatal(err)
		}
		mounted := heapNow()
		entries = 0
		err = filepath.WalkDir(mp, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			var st unix.Stat_t
			entries++
			return unix.Lstat(path, &st)
		})
		walked := heapNow()
		if uerr := m.Unmount(true); uerr != nil {
			b.Fatal(uerr)
		}
		if err != nil {
			b.Fatalf("walk %s: %v", mp, err)
		}
		if entries != len(a.Nodes) {
			b.Fatalf("walk saw %d entries, the tree has %d", entries, len(a.Nodes))
		}
		// Only the first walk counts: a later one starts while the
		// previous mount's server is still letting go of its buffers.
		if first {
			walkLive = (float64(walked) - float64(mounted)) / float64(entries)
			first = false
		}
	}
	b.ReportMetric(planAlloc/nodes, "plan-alloc-B/node")
	b.ReportMetric(planLive/nodes, "plan-live-B/node")
	b.ReportMetric(walkLive, "walk-live-B/entry")
}
