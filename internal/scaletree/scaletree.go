// Package scaletree builds, in memory, the index of a large image for the
// benchmarks of memory and mount latency at scale (index, mount, e2e): a
// tree with only the index, no layer bytes behind it. bench/scalegen.go
// makes the real image of `make bench`; this is its quick stand-in.
package scaletree

import (
	"fmt"
	"syscall"

	"github.com/clipd/clipd/index"
)

// Archive returns the index of files regular files of 20 KiB spread over
// layers gzip layers, in directories of 10 packages of 100 files under
// /usr/libNNN, as a large Python or Node image lays them out. Inode
// numbers are dense, from 1 at the root; file offsets are consecutive in
// each layer.
func Archive(files, layers int) *index.Archive {
	a := &index.Archive{Format: index.FormatOCI, Source: index.Source{Registry: "127.0.0.1:9", Repository: "scale/gen", Reference: "v1"}}
	for l := range layers {
		a.Layers = append(a.Layers, index.Layer{Digest: fmt.Sprintf("sha256:%064x", l+1),
			MediaType: "application/vnd.oci.image.layer.v1.tar+gzip", Size: 200 << 20, Compression: "gzip"})
	}
	ino := uint64(0)
	add := func(p string, mode uint32, size uint64, layer int, off int64) {
		ino++
		n := &index.Node{Path: p, Layer: layer, Offset: off}
		n.Attr.Mode, n.Attr.Ino, n.Attr.Size, n.Attr.Nlink = mode, ino, size, 1
		n.Attr.Mtime = 1700000000
		if mode&syscall.S_IFMT == syscall.S_IFDIR {
			n.Attr.Nlink = 2
		}
		a.Nodes = append(a.Nodes, n)
	}
	const dir = syscall.S_IFDIR | 0o755
	add("/", dir, 0, -1, 0)
	add("/usr", dir, 0, -1, 0)
	const perPackage, packages, size = 100, 10, 20 << 10
	offsets := make([]int64, layers)
	for d := 0; d*perPackage*packages < files; d++ {
		top := fmt.Sprintf("/usr/lib%03d", d)
		add(top, dir, 0, -1, 0)
		for pkg := range packages {
			sub := fmt.Sprintf("%s/pkg%02d", top, pkg)
			add(sub, dir, 0, -1, 0)
			for f := range perPackage {
				l := (d*packages + pkg) % layers
				add(fmt.Sprintf("%s/module_%03d.py", sub, f), syscall.S_IFREG|0o644, size, l, offsets[l])
				offsets[l] += size
			}
		}
	}
	// Each layer at least as long as the files it holds.
	for l, end := range offsets {
		a.Layers[l].Size = max(a.Layers[l].Size, end)
	}
	return a
}
