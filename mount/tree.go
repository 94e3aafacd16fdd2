package mount

import (
	"cmp"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"syscall"

	"github.com/clipd/clipd/index"
)

// plan is the validated shape of the tree, computed before mounting. Every
// check that could fail is made here, over the whole index, so that a bad
// index is refused at mount time. It is also all the filesystem keeps:
// requests are answered from the index node and the arrays below (node.go),
// and nothing is built per inode, at mount or on LOOKUP.
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
	nlink      map[int32]uint32
	totalBytes uint64
	sh         *shared
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
	p := &plan{nodes: nodes, sh: sh}
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
	firstByIno := newInoTable(maxIno, len(nodes))
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
			// go-fuse's own epoll work-around node has this number; no
			// image needs it, so it stays out of the tree's numbers.
			return nil, fmt.Errorf("node %q: inode number %d is reserved by go-fuse", n.Path, ino)
		}
		if first, seen := firstByIno.get(ino); seen {
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
		firstByIno.set(ino, int32(i))
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

// inoTable maps inode numbers to the first node carrying them, while the
// plan is made. Indexes number inodes densely (1 to n in path order), so a
// slice indexed by number serves them at 4 bytes a node, where a map of
// every node costs about 30 (garbage at a serving process's start-up
// peak); numbers beyond the slice go to a map.
type inoTable struct {
	dense  []int32 // node index + 1; 0: not seen
	sparse map[uint64]int32
}

func newInoTable(maxIno uint64, nodes int) *inoTable {
	t := &inoTable{}
	if maxIno <= 4*uint64(nodes) {
		t.dense = make([]int32, maxIno+1)
	}
	return t
}

func (t *inoTable) get(ino uint64) (int32, bool) {
	if ino < uint64(len(t.dense)) {
		return t.dense[ino] - 1, t.dense[ino] != 0
	}
	i, ok := t.sparse[ino]
	return i, ok
}

func (t *inoTable) set(ino uint64, i int32) {
	if ino < uint64(len(t.dense)) {
		t.dense[ino] = i + 1
		return
	}
	if t.sparse == nil {
		t.sparse = map[uint64]int32{}
	}
	t.sparse[ino] = i
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

// parent returns the directory holding directory i; the root is its own
// parent, as in any file system. Only directories have one parent (hard
// links cannot name them), so this is defined for them alone.
func (p *plan) parent(i int32) (int32, bool) {
	if i == 0 {
		return 0, true
	}
	dir := dirOf(p.nodes[i].Path)
	j, ok := slices.BinarySearchFunc(p.nodes[:i], dir, func(m *index.Node, d string) int { return cmp.Compare(m.Path, d) })
	return int32(j), ok
}
