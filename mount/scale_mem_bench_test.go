package mount

import (
	"bytes"
	"io"
	"io/fs"
	"log/slog"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/clipd/clipd/internal/scaletree"
	"golang.org/x/sys/unix"
)

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
	a := scaletree.Archive(100_000, 1)
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
