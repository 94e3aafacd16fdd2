package index

import (
	"fmt"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
)

// scaleTree is the shape of the e2e scale image (e2e scaleArchive): files
// regular files of 20 KiB over layers layers, in directories of 10
// packages of 100 files, as a large Python or Node image lays them out.
func scaleTree(files, layers int) *Archive {
	a := &Archive{Format: FormatOCI, Source: Source{Registry: "127.0.0.1:9", Repository: "scale/gen", Reference: "v1"}}
	for l := range layers {
		a.Layers = append(a.Layers, Layer{Digest: fmt.Sprintf("sha256:%064x", l+1),
			MediaType: "application/vnd.oci.image.layer.v1.tar+gzip", Size: 200 << 20, Compression: "gzip"})
	}
	ino := uint64(0)
	add := func(p string, mode uint32, size uint64, layer int, off int64) {
		ino++
		n := &Node{Path: p, Layer: layer, Offset: off}
		n.Attr.Mode, n.Attr.Ino, n.Attr.Size, n.Attr.Nlink = mode, ino, size, 1
		n.Attr.Mtime = 1700000000
		if mode&syscall.S_IFMT == syscall.S_IFDIR {
			n.Attr.Nlink = 2
		}
		a.Nodes = append(a.Nodes, n)
	}
	add("/", syscall.S_IFDIR|0o755, 0, -1, 0)
	add("/usr", syscall.S_IFDIR|0o755, 0, -1, 0)
	offsets := make([]int64, layers)
	for dir := 0; dir*1000 < files; dir++ {
		top := fmt.Sprintf("/usr/lib%03d", dir)
		add(top, syscall.S_IFDIR|0o755, 0, -1, 0)
		for pkg := range 10 {
			sub := fmt.Sprintf("%s/pkg%02d", top, pkg)
			add(sub, syscall.S_IFDIR|0o755, 0, -1, 0)
			for f := range 100 {
				l := (dir*10 + pkg) % layers
				add(fmt.Sprintf("%s/module_%03d.py", sub, f), syscall.S_IFREG|0o644, 20<<10, l, offsets[l])
				offsets[l] += 20 << 10
			}
		}
	}
	return a
}

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
	if err := WriteFile(path, scaleTree(100_000, 10)); err != nil {
		b.Fatal(err)
	}
	var alloc, live uint64
	var nodes int
	var fileSize int64
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		a, err := Open(path)
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
