package mount

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/clipd/clipd/index"
)

// plan is the validated shape of the tree, computed before mounting. Every
// check that could fail is made here, over the whole index, so that a bad
// index is refused at mount time; but no go-fuse inode is built up front:
// a mount request would pay for every inode of the image (and keep them in
// memory) while a container's first start looks up a few hundred. Inodes
// are made on LOOKUP, from the index node and the arrays below, and the
// kernel may forget them again.
type plan struct {
	// nodes are the index's nodes sorted by path (the order index.Open
	// already gives them), so that the children of a directory are, in
	// that order, sorted by name.
	nodes []*index.Node
	// The children of nodes[i] are kids[kidStart[i]:kidStart[i+1]].
	kidStart []int32
	kids     []int32
	// links maps a hard link's further names to the index of its first
	// name, whose node carries the inode; nil when the image has none.
	links map[int32]int32
	// inos holds the inode numbers assigned to nodes the index gave none.
	inos map[int32]uint64
	// nlink holds the link counts of inodes the index gave none.
	nlink map[int32]uint32
	// externalNodeID says whether FUSE node IDs may equal inode numbers: the
	// root always has node ID 1, so no other inode may use number 1.
	externalNodeID bool
	totalBytes     uint64
	sh             *shared
}

// knownType reports whether mode has a file type an image tree may contain.
func knownType(mode uint32) bool {
	switch mode & syscall.S_IFMT {
	case syscall.S_IFDIR, syscall.S_IFREG, syscall.S_IFLNK,
		syscall.S_IFCHR, syscall.S_IFBLK, syscall.S_IFIFO, syscall.S_IFSOCK:
		return true
	}
	return false
}

// dirOf and baseOf split a clean absolute path other than "/".
func dirOf(p string) string {
	i := strings.LastIndexByte(p, '/')
	if i == 0 {
		return "/"
	}
	return p[:i]
}

func baseOf(p string) string { return p[strings.LastIndexByte(p, '/')+1:] }

// newPlan checks a's tree and resolves parents, inode numbers and hard
// links. A tree that would make go-fuse panic or lie to the kernel is an
// error here rather than a crash later.
func newPlan(a *index.Archive, layers []io.ReaderAt, sh *shared, log *slog.Logger) (*plan, error) {
	nodes := a.Nodes
	if len(nodes) == 0 {
		return nil, fmt.Errorf("empty tree")
	}
	for i, n := range nodes {
		if n == nil {
			return nil, fmt.Errorf("node %d is nil", i)
		}
	}
	byPath := func(a, b *index.Node) int { return strings.Compare(a.Path, b.Path) }
	if !slices.IsSortedFunc(nodes, byPath) {
		// index.Open sorts; an archive put together otherwise is sorted
		// here, on a copy.
		nodes = slices.Clone(nodes)
		slices.SortStableFunc(nodes, byPath)
	}
	if nodes[0].Path != "/" {
		return nil, fmt.Errorf("first node is %q, want the root \"/\"", nodes[0].Path)
	}
	if len(nodes) > 1<<31-1 {
		return nil, fmt.Errorf("%d nodes: too many", len(nodes))
	}
	p := &plan{nodes: nodes, sh: sh, externalNodeID: true}
	parent := make([]int32, len(nodes))
	var maxIno uint64
	missingNlink := false
	for i, n := range nodes {
		if !index.IsCleanAbs(n.Path) {
			return nil, fmt.Errorf("node %q: path is not absolute and clean", n.Path)
		}
		if i > 0 && n.Path == nodes[i-1].Path {
			return nil, fmt.Errorf("node %q: listed twice", n.Path)
		}
		if !knownType(n.Attr.Mode) {
			return nil, fmt.Errorf("node %q: unknown file type in mode %#o", n.Path, n.Attr.Mode)
		}
		maxIno = max(maxIno, n.Attr.Ino)
		missingNlink = missingNlink || n.Attr.Nlink == 0
	}
	if nodes[0].Attr.Mode&syscall.S_IFMT != syscall.S_IFDIR {
		return nil, fmt.Errorf("root is not a directory (mode %#o)", nodes[0].Attr.Mode)
	}

	// Parents: nodes are sorted, so a parent is found by binary search
	// (a map of every path would cost more time and memory than the
	// search). Children are counted per directory, then listed in path
	// order, which among siblings is name order.
	p.kidStart = make([]int32, len(nodes)+1)
	parent[0] = -1
	for i := 1; i < len(nodes); i++ {
		n := nodes[i]
		dir := dirOf(n.Path)
		par, ok := slices.BinarySearchFunc(nodes[:i], dir, func(m *index.Node, d string) int { return cmp.Compare(m.Path, d) })
		if !ok {
			return nil, fmt.Errorf("node %q: parent directory is not in the tree", n.Path)
		}
		if nodes[par].Attr.Mode&syscall.S_IFMT != syscall.S_IFDIR {
			return nil, fmt.Errorf("node %q: parent is not a directory", n.Path)
		}
		parent[i] = int32(par)
		p.kidStart[par+1]++
	}
	for i := 1; i < len(p.kidStart); i++ {
		p.kidStart[i] += p.kidStart[i-1]
	}
	p.kids = make([]int32, len(nodes)-1)
	fill := slices.Clone(p.kidStart[:len(nodes)])
	for i := 1; i < len(nodes); i++ {
		par := parent[i]
		p.kids[fill[par]] = int32(i)
		fill[par]++
	}

	// Inode numbers: the index's, except that 0 (unset) gets a fresh number
	// above every used one, so numbers stay stable for a given file. Hard
	// links share their first name's node.
	firstByIno := make(map[uint64]int32, len(nodes))
	for i, n := range nodes {
		ino := n.Attr.Ino
		if ino == 0 {
			maxIno++
			ino = maxIno
			if p.inos == nil {
				p.inos = map[int32]uint64{}
			}
			p.inos[int32(i)] = ino
			log.Warn("index node has no inode number, assigned one", "path", n.Path, "ino", ino)
		}
		if ino == ^uint64(0) {
			return nil, fmt.Errorf("node %q: inode number %d is reserved by go-fuse", n.Path, ino)
		}
		if ino == 1 && i > 0 {
			p.externalNodeID = false
		}
		if first, seen := firstByIno[ino]; seen {
			// A hard link: same inode, so it must be the same kind of file.
			if n.Attr.Mode&syscall.S_IFMT == syscall.S_IFDIR || nodes[first].Attr.Mode&syscall.S_IFMT == syscall.S_IFDIR {
				return nil, fmt.Errorf("node %q: shares inode %d with %q, and directories cannot be hard links", n.Path, ino, nodes[first].Path)
			}
			if n.Attr.Mode&syscall.S_IFMT != nodes[first].Attr.Mode&syscall.S_IFMT {
				return nil, fmt.Errorf("node %q: shares inode %d with %q of another type", n.Path, ino, nodes[first].Path)
			}
			if p.links == nil {
				p.links = map[int32]int32{}
			}
			p.links[int32(i)] = first
			continue
		}
		firstByIno[ino] = int32(i)
		if n.Attr.Mode&syscall.S_IFMT == syscall.S_IFREG && n.Attr.Size > 0 {
			if n.Layer < 0 || n.Layer >= len(layers) || layers[n.Layer] == nil {
				return nil, fmt.Errorf("node %q: content in layer %d, but %d layer readers were given", n.Path, n.Layer, len(layers))
			}
			p.totalBytes += n.Attr.Size
		}
	}

	if missingNlink {
		// An index that does not record link counts gets the usual ones.
		p.nlink = map[int32]uint32{}
		for i, n := range nodes {
			if n.Attr.Nlink != 0 {
				continue
			}
			if n.Attr.Mode&syscall.S_IFMT == syscall.S_IFDIR {
				subdirs := uint32(0)
				for _, c := range p.children(int32(i)) {
					if nodes[c].Attr.Mode&syscall.S_IFMT == syscall.S_IFDIR {
						subdirs++
					}
				}
				p.nlink[int32(i)] = 2 + subdirs
			} else if _, isLink := p.links[int32(i)]; !isLink {
				p.nlink[int32(i)] = 1
			}
		}
		for _, first := range p.links {
			if _, ok := p.nlink[first]; ok {
				p.nlink[first]++
			}
		}
	}
	return p, nil
}

// children lists the indexes of the entries of directory i, by name.
func (p *plan) children(i int32) []int32 { return p.kids[p.kidStart[i]:p.kidStart[i+1]] }

// canonical is the index of the node that carries i's inode: its first name.
func (p *plan) canonical(i int32) int32 {
	if first, ok := p.links[i]; ok {
		return first
	}
	return i
}

// ino is the inode number of canonical node i.
func (p *plan) ino(i int32) uint64 {
	if ino, ok := p.inos[i]; ok {
		return ino
	}
	return p.nodes[i].Attr.Ino
}

// node makes the go-fuse node of the inode named by nodes[i].
func (p *plan) node(i int32) *node {
	c := p.canonical(i)
	n := newNode(p.nodes[c], p.ino(c), p.sh)
	n.idx = c
	if nl, ok := p.nlink[c]; ok {
		n.attr.Nlink = nl
	}
	return n
}

// lookup finds name among the entries of directory i.
func (p *plan) lookup(i int32, name string) (int32, bool) {
	kids := p.children(i)
	j, ok := slices.BinarySearchFunc(kids, name, func(c int32, name string) int {
		return strings.Compare(baseOf(p.nodes[c].Path), name)
	})
	if !ok {
		return 0, false
	}
	return kids[j], true
}

// list is the readdir listing of directory i, sorted by name.
func (p *plan) list(i int32) []fuse.DirEntry {
	kids := p.children(i)
	entries := make([]fuse.DirEntry, 0, len(kids))
	for _, c := range kids {
		cc := p.canonical(c)
		entries = append(entries, fuse.DirEntry{Name: baseOf(p.nodes[c].Path), Mode: p.nodes[cc].Attr.Mode & syscall.S_IFMT, Ino: p.ino(cc)})
	}
	return entries
}

var _ fs.NodeLookuper = (*node)(nil)

// Lookup makes the inode of one entry, on the kernel's first use of it
// (go-fuse hands out the inode already live when the same inode number was
// looked up before, through this name or another hard link).
func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	p := n.sh.plan
	if n.attr.Mode&syscall.S_IFMT != syscall.S_IFDIR {
		return nil, syscall.ENOTDIR
	}
	i, ok := p.lookup(n.idx, name)
	if !ok {
		return nil, syscall.ENOENT
	}
	child := p.node(i)
	out.Attr = child.attr
	return n.NewInode(ctx, child, fs.StableAttr{Mode: child.attr.Mode & syscall.S_IFMT, Ino: child.attr.Ino}), 0
}
