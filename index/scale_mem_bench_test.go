package index_test

import (
	"path/filepath"
	"runtime"
	"testing"

	"github.com/clipd/clipd/index"
	"github.com/clipd/clipd/internal/scaletree"
)

// BenchmarkOpenScaleMemory opens the index of a 100,000-file image and
// reports what it costs per node: bytes allocated while opening
// (alloc-B/node: with the collector off during a serving process's
// start-up, this is what its peak grows by) and bytes still held by the
// opened Archive after a collection (live-B/node), beside the file's own
// size per node. A serving process holds live-B/node for the mount's life:
//
//	go test ./index -run XXX -bench OpenScaleMemory -benchtime 5x
func BenchmarkOpenScaleMemory(b *testing.B) {
	path := filepath.Join(b.TempDir(), "scale.clip")
	if err := index.WriteFile(path, scaletree.Archive(100_000, 10)); err != nil {
		b.Fatal(err)
	}
	var alloc, live uint64
	var nodes int
	var fileSize int64
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		a, err := index.Open(path)
		if err != nil {
			b.Fatal(err)
		}
		runtime.ReadMemStats(&after)
		alloc = after.TotalAlloc - before.TotalAlloc
		runtime.GC()
		runtime.ReadMemStats(&after)
		live = after.HeapAlloc - before.HeapAlloc
		nodes, fileSize = len(a.Nodes), a.FileSize
		runtime.KeepAlive(a)
	}
	b.ReportMetric(float64(alloc)/float64(nodes), "alloc-B/node")
	b.ReportMetric(float64(live)/float64(nodes), "live-B/node")
	b.ReportMetric(float64(fileSize)/float64(nodes), "file-B/node")
	b.Logf("%d nodes, %.1f MiB file: %.1f MiB allocated while opening, %.1f MiB live after", nodes, float64(fileSize)/(1<<20), float64(alloc)/(1<<20), float64(live)/(1<<20))
}
