package index

import (
	"archive/tar"
	"fmt"
	"path"
	"sort"
	"strings"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// OCI whiteout names (image-spec layer.md).
const (
	whiteoutPrefix = ".wh."
	whiteoutMeta   = ".wh..wh."
	opaqueMarker   = ".wh..wh..opq"
)

// inode is what all names of one file share: attributes and content. Ino and
// Nlink are filled in only when the final tree is known.
type inode struct {
	attr   fuse.Attr
	target string
	xattrs map[string]string
	layer  int
	offset int64
}

// entry is one name in the merged tree.
type entry struct {
	name     string
	path     string
	parent   *entry
	children map[string]*entry // non-nil exactly for directories
	ino      *inode
	// stamp is the layer that last declared this entry (explicitly or as an
	// implicit parent). Whiteouts and opaque markers hide only what lower
	// layers declared, so they spare entries stamped with their own layer.
	stamp int
}

func (e *entry) isDir() bool { return e.children != nil }

// tree is the merged tree while layers are applied: a path map for lookups
// plus per-directory child maps so that subtree deletion touches only the
// subtree.
type tree struct {
	root   *entry
	byPath map[string]*entry
}

func newTree() *tree {
	root := &entry{name: "/", path: "/", children: map[string]*entry{}, ino: implicitDir(), stamp: -1}
	return &tree{root: root, byPath: map[string]*entry{"/": root}}
}

// implicitDir is a directory no layer describes. Its attributes are fixed
// (0755, root-owned, mtime 0) so that an index never depends on when it
// was made.
func implicitDir() *inode {
	return &inode{attr: fuse.Attr{Mode: unix.S_IFDIR | 0o755}, layer: -1}
}

// cleanPath maps a tar name to an absolute clean path; "./a", "a" and "/a"
// agree and ".." cannot climb above the root.
func cleanPath(name string) string { return path.Clean("/" + name) }

// apply adds one tar entry of layer (index into the image's layers) whose data
// starts at offset in the uncompressed layer stream.
func (t *tree) apply(hdr *tar.Header, layer int, offset int64) error {
	p := cleanPath(hdr.Name)
	base := path.Base(p)
	if strings.HasPrefix(p, "/"+whiteoutMeta) && p != "/"+opaqueMarker {
		// aufs bookkeeping (/.wh..wh.plnk, /.wh..wh.orph and their
		// content) is not image content; Docker skips it the same way.
		return nil
	}
	if p != "/" && strings.HasPrefix(base, whiteoutPrefix) {
		return t.whiteout(p, base, layer)
	}
	if isSparse(hdr) {
		return fmt.Errorf("GNU sparse files are not supported")
	}
	ino, isDir, err := inodeOf(hdr, layer, offset)
	if err != nil {
		return err
	}
	if p == "/" {
		if !isDir {
			return fmt.Errorf("root is not a directory (type %q)", hdr.Typeflag)
		}
		t.root.ino, t.root.stamp = ino, layer
		return nil
	}
	parent := t.ensureDir(path.Dir(p), layer)
	old := parent.children[base]

	switch {
	case isDir && old != nil && old.isDir():
		// A directory over a directory updates attributes and keeps children.
		old.ino, old.stamp = ino, layer
		return nil
	case hdr.Typeflag == tar.TypeLink:
		target := t.byPath[cleanPath(hdr.Linkname)]
		if target == nil {
			return fmt.Errorf("hard link to %s: target does not exist", cleanPath(hdr.Linkname))
		}
		if target.isDir() {
			return fmt.Errorf("hard link to %s: target is a directory", target.path)
		}
		if target == old {
			old.stamp = layer
			return nil
		}
		ino = target.ino
	}
	if old != nil {
		t.remove(old)
	}
	e := &entry{name: base, path: p, parent: parent, ino: ino, stamp: layer}
	if isDir {
		e.children = map[string]*entry{}
	}
	parent.children[base] = e
	t.byPath[p] = e
	return nil
}

// whiteout applies a whiteout file or opaque marker at p of layer.
func (t *tree) whiteout(p, base string, layer int) error {
	dir := path.Dir(p)
	switch {
	case base == opaqueMarker:
		d := t.ensureDir(dir, layer)
		for _, c := range d.children {
			t.prune(c, layer)
		}
		return nil
	case strings.HasPrefix(base, whiteoutMeta):
		// Other .wh..wh. names are aufs bookkeeping (hard link dirs), not
		// content: ignored as Docker and containerd do.
		return nil
	}
	name := strings.TrimPrefix(base, whiteoutPrefix)
	if name == "" || name == "." || name == ".." {
		return fmt.Errorf("invalid whiteout name %q", base)
	}
	if e := t.byPath[path.Join(dir, name)]; e != nil {
		t.prune(e, layer)
	}
	return nil
}

// prune hides what lower layers declared at and below e, sparing what layer
// itself declared (a whiteout or opaque marker only applies to lower layers,
// even for entries listed before it). It reports whether e survives.
func (t *tree) prune(e *entry, layer int) bool {
	kept := e.stamp == layer
	if e.isDir() {
		for _, c := range e.children {
			if t.prune(c, layer) {
				kept = true
			}
		}
	}
	if !kept {
		t.remove(e)
		return false
	}
	if e.stamp != layer {
		// The lower directory is hidden; it survives only as the parent of
		// entries of this layer, so it becomes an implicit directory.
		e.ino, e.stamp = implicitDir(), layer
	}
	return true
}

// ensureDir returns the directory at p, creating implicit directories for
// missing path components and replacing non-directories in the way (as an
// extractor would have to for the entry to exist at all).
func (t *tree) ensureDir(p string, layer int) *entry {
	if e := t.byPath[p]; e != nil && e.isDir() {
		return e
	}
	parent := t.ensureDir(path.Dir(p), layer)
	name := path.Base(p)
	if old := parent.children[name]; old != nil {
		t.remove(old)
	}
	e := &entry{name: name, path: p, parent: parent, children: map[string]*entry{}, ino: implicitDir(), stamp: layer}
	parent.children[name] = e
	t.byPath[p] = e
	return e
}

// remove deletes e and its subtree.
func (t *tree) remove(e *entry) {
	delete(e.parent.children, e.name)
	t.forget(e)
}

func (t *tree) forget(e *entry) {
	delete(t.byPath, e.path)
	for _, c := range e.children {
		t.forget(c)
	}
}

// nodes returns the final tree sorted by path, with inode numbers assigned in
// path order (root 1; every name of a hard-linked file gets the number of its
// first name) and link counts computed from the names that remain.
func (t *tree) nodes() []*Node {
	entries := make([]*entry, 0, len(t.byPath))
	for _, e := range t.byPath {
		entries = append(entries, e)
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].path < entries[j].path })

	names := make(map[*inode]uint32, len(entries))
	for _, e := range entries {
		names[e.ino]++
	}
	inos := make(map[*inode]uint64, len(entries))
	next := uint64(1)
	out := make([]*Node, len(entries))
	for i, e := range entries {
		ino, ok := inos[e.ino]
		if !ok {
			ino = next
			next++
			inos[e.ino] = ino
		}
		n := &Node{Path: e.path, Attr: e.ino.attr, Target: e.ino.target, Xattrs: e.ino.xattrs, Layer: e.ino.layer, Offset: e.ino.offset}
		n.Attr.Ino = ino
		if e.isDir() {
			n.Attr.Nlink = 2
			for _, c := range e.children {
				if c.isDir() {
					n.Attr.Nlink++
				}
			}
		} else {
			n.Attr.Nlink = names[e.ino]
		}
		out[i] = n
	}
	return out
}
